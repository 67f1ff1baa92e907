"""What a lone query costs faiss against its share of a batch, by IVF fast-scan variant.

    python -m bench.lone_cost [--dataset minilm] [--factories F1;F2...] [--target 0.95]

One thread, faiss alone (no vsearch layer), 1,000 held-out queries. For each factory string,
each k_factor's first nprobe whose recall@10 (on those queries) reaches ``--target``: the
mean time of a lone query, of a query's share of one batch of all of them, and of the
coarse quantizer alone for a lone query. Writes bench/results/lone_cost.md and .json.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bench.results import parser, write
from shards._faiss import faiss

FACTORIES = (
    "IVF512,PQ192x4fs,RFlat",  # the automatic choice at 100k x 384
    "IVF512,PQ96x4fs,RFlat",
    "IVF512,PQ48x4fs,RFlat",
    "IVF256,PQ96x4fs,RFlat",
    "IVF1024,PQ96x4fs,RFlat",
)
K_FACTORS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
NPROBES = (8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256)
N = 1000


def recall(I: np.ndarray, gt: np.ndarray) -> float:
    return float((I[:, :10, None] == gt[: len(I), None, :10]).any(axis=2).mean())


def lone_us(index, xq: np.ndarray, params, k: int = 10) -> tuple[float, np.ndarray]:
    out = np.empty((len(xq), k), np.int64)
    t0 = time.perf_counter()
    for i in range(len(xq)):
        out[i] = index.search(xq[i : i + 1], k, params=params)[1][0]
    return 1e6 * (time.perf_counter() - t0) / len(xq), out


def measure(factory: str, xb, xq, gt, target: float) -> list[dict]:
    index = faiss.index_factory(xb.shape[1], factory)
    faiss.omp_set_num_threads(2)
    index.train(xb)
    index.add(xb)
    faiss.omp_set_num_threads(1)
    ivf = faiss.extract_index_ivf(index)
    rows = []
    for kf in K_FACTORS:
        for nprobe in (n for n in NPROBES if n <= ivf.nlist):
            p = faiss.IVFSearchParameters()
            p.nprobe = nprobe
            rp = faiss.IndexRefineSearchParameters()
            rp.k_factor, rp.base_index_params = kf, p
            lone, I = lone_us(index, xq, rp)
            if recall(I, gt) < target:
                continue
            t0 = time.perf_counter()
            index.search(xq, 10, params=rp)
            batch = 1e6 * (time.perf_counter() - t0) / len(xq)
            coarse, _ = lone_us(ivf.quantizer, xq, None, k=nprobe)
            row = {"factory": factory, "k_factor": kf, "nprobe": nprobe}
            row |= {"recall": recall(I, gt), "lone_us": lone, "batch_share_us": batch}
            row |= {"coarse_us": coarse}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
            break
    return rows


def markdown(r: dict) -> str:
    lines = [
        f"# A lone query against its share of a batch, faiss alone: `{r['command']}`",
        "",
        f"{r['dataset']}, {N:,} held-out queries, one thread; per k_factor its first nprobe "
        f"at recall@10 >= {r['target']}; the cheapest lone point of each factory in bold.",
        "",
        "| factory | k_factor | nprobe | recall | lone us | batch share us | lone / share "
        "| coarse quantizer us (lone) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for factory in dict.fromkeys(x["factory"] for x in r["rows"]):
        mine = [x for x in r["rows"] if x["factory"] == factory]
        best = min(mine, key=lambda x: x["lone_us"])
        for x in mine:
            b = "**" if x is best else ""
            lines.append(
                f"| {factory} | {x['k_factor']} | {x['nprobe']} | {x['recall']:.4f} | "
                f"{b}{x['lone_us']:.0f}{b} | {x['batch_share_us']:.0f} | "
                f"{x['lone_us'] / x['batch_share_us']:.2f}x | {x['coarse_us']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--dataset", default="minilm", choices=("minilm", "glove"))
    ap.add_argument("--factories", default=";".join(FACTORIES), help="';'-separated")
    ap.add_argument("--target", type=float, default=0.95)
    args = ap.parse_args()
    if args.dataset == "minilm":
        from bench import minilm

        ds = minilm.load()
    else:
        from bench.glove import load

        ds = load()
    xq, gt = ds.xq[:N], ds.gt[:N]
    rows = []
    for factory in args.factories.split(";"):
        rows += measure(factory, ds.xb, xq, gt, args.target)
    result = {
        "command": "python -m bench.lone_cost " + " ".join(sys.argv[1:]),
        "dataset": ds.name,
        "target": args.target,
        "rows": rows,
    }
    write(args.out, "lone_cost", result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
