"""Which index wins where: the CPU candidates faiss offers, over datasets, sizes and query shapes.

    python -m bench.choice_sweep [--quick] [--datasets glove,minilm,synth96,synth768]
                                 [--sizes 20000,100000] [--docs]

For each dataset and size (one shard; 1,000 held-out queries; exact ground truth) every
candidate is built and tuned by `shards` (recall@10 on held-out input rows), then searched
through `ShardedIndex.search` at its tuned ``target_recall`` 0.95 and 0.975: recall@10 on the
queries, batched QPS (batches of 256, all cores) and single-query QPS from 8 concurrent callers
(one OpenMP thread each) with p50/p99; plus build seconds and bytes. A candidate's figure for
a shape is its best setting with recall@10 >= 0.95.

Candidates: Flat; IVF-Flat; IVF 4-bit fast-scan PQ + exact refine at nlist /2, x1, x2 the
automatic one; IVF RaBitQ fast-scan + refine; HNSW-Flat at M 16/32/48 with efConstruction 200
(and M 32 at faiss's default 40); HNSW with 8-bit scalar quantisation + exact refine; from
128 dimensions, HNSW32 over PCA to half the dimensions + exact refine.
Datasets: GloVe 50-d (bench/glove.py), MiniLM 384-d sentences (bench/minilm.py), synthetic
clustered 96-d and 768-d (bench/synthetic.py). Rows merge into choice_sweep.json by (dataset,
n, candidate), so a run of one dataset keeps the others; ``--docs`` rewrites the thresholds
table of docs/INDEX_CHOICE.md from the results (the winners per dataset, size and shape).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench.glove import Dataset, recall_at
from bench.results import RESULTS, parser, write
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards._faiss import faiss
from shards.choice import estimate_bytes, nlist_for, pq_m_for

K = 10
BATCH = 256
CALLERS = 8
QUERIES = 1_000
SINGLES_S = 3.0  # the single-query phase of one setting stops after this long
TARGETS = (0.95, 0.975)
FLOOR = 0.95
SIZES = {
    "glove": (20_000, 100_000, 390_000),
    "minilm": (20_000, 100_000),
    "synth96": (20_000, 100_000, 1_000_000),
    "synth768": (20_000, 100_000),
}
SHAPES = ("batch", "single", "mixed")
DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "INDEX_CHOICE.md")
BEGIN, END = "<!-- sweep: begin -->", "<!-- sweep: end -->"


def dataset(name: str, n: int) -> Dataset:
    """The first ``n`` rows of ``name``'s database, its queries and exact ground truth."""
    if name == "glove":
        from bench.glove import load

        full = load()
    elif name == "minilm":
        from bench import minilm

        full = minilm.load(100_000)
    else:
        from bench import synthetic

        d = int(name.removeprefix("synth"))
        full = synthetic.load(max(SIZES[name]), d)
    xb = np.ascontiguousarray(full.xb[:n])
    xq = full.xq[:QUERIES]
    gt = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)[1]  # normalised: cosine
    return Dataset(f"{name}-{n}", xb, xq, gt, "")


def candidates(n: int, d: int) -> dict[str, tuple[str, int | None]]:
    """Candidate name -> (factory, efConstruction) for ``n`` vectors of dimension ``d``.

    The build parameters (nlist, M, efConstruction) are swept up to 100,000 vectors; above,
    the sweep keeps the automatic ones (a 1M-vector HNSW graph takes minutes per build here).
    RaBitQ (one bit per dimension) only from 128 dimensions: at 50-d (GloVe 100k, IVF512,
    nprobe 32, k_factor 4) it found recall 0.62 where 4-bit PQ found 0.92, at half the speed.
    """
    nlist, m = nlist_for(n), pq_m_for(d)
    params = n <= 100_000
    out: dict[str, tuple[str, int | None]] = {}
    if n <= 200_000:  # beyond, a scan per query is far behind every other candidate
        out["Flat"] = ("Flat", None)
    out["IVF-Flat"] = (f"IVF{nlist},Flat", None)
    for scale, label in ((0.5, "/2"), (1, ""), (2, "x2")) if params else ((1, ""),):
        out[f"IVF-PQfs+R{label}"] = (f"IVF{int(nlist * scale)},PQ{m}x4fs,RFlat", None)
    if d >= 128:
        out["IVF-RaBitQfs+R"] = (f"IVF{nlist},RaBitQfs,RFlat", None)
    for hm in (16, 32, 48) if params else (32,):
        out[f"HNSW{hm}"] = (f"HNSW{hm},Flat", 200)
    if params:
        out["HNSW32 efC40"] = ("HNSW32,Flat", 40)
    out["HNSW32-SQ8+R"] = ("HNSW32,SQ8,RFlat", 200)
    if d >= 128:  # the graph over the vectors projected to half their dimensions
        out["PCA/2-HNSW32+R"] = (f"PCA{d // 2},HNSW32,Flat,RFlat", 200)
    return out


def measure(index: ShardedIndex, ds: Dataset, target: float) -> dict[str, Any]:
    """Recall, batched QPS and 8-caller single-query QPS at ``target_recall``."""
    xq = ds.xq
    index.search(xq[:BATCH], K, target_recall=target)  # warm-up
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        parts = [
            index.search(xq[i : i + BATCH], K, target_recall=target)[1]
            for i in range(0, len(xq), BATCH)
        ]
        best = min(best, time.perf_counter() - t0)
    I = np.vstack(parts)
    lat: list[float] = []
    lock = threading.Lock()
    turn = iter(range(10**9))
    t0 = time.perf_counter()

    def caller() -> None:
        faiss.omp_set_num_threads(1)
        while time.perf_counter() - t0 < SINGLES_S:
            with lock:
                i = next(turn) % len(xq)
            t = time.perf_counter()
            index.search(xq[i : i + 1], K, target_recall=target)
            lat.append(time.perf_counter() - t)

    with ThreadPoolExecutor(CALLERS) as pool:
        for f in [pool.submit(caller) for _ in range(CALLERS)]:
            f.result()
    wall = time.perf_counter() - t0
    return {
        "target": target,
        "recall": recall_at(I, ds.gt),
        "batch_qps": len(xq) / best,
        "single_qps": len(lat) / wall,
        "single_p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "single_p99_ms": 1e3 * float(np.percentile(lat, 99)),
    }


def run_one(name: str, ds: Dataset, kind: str, factory: str, efc, workdir: str) -> dict:
    src = os.path.join(workdir, "db.npy")
    out = os.path.join(workdir, "index")
    shutil.rmtree(out, ignore_errors=True)
    row: dict[str, Any] = {"dataset": name, "n": len(ds.xb), "d": ds.xb.shape[1], "kind": kind}
    row |= {"factory": factory, "ef_construction": efc}
    opts = BuildOptions(index=factory, metric="l2", progress=False, ef_construction=efc)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    try:
        build_index(VectorSource(src), out, opts)
    except Exception as exc:  # a candidate that cannot reach the targets: say why, go on
        return row | {"error": f"build failed: {exc!r}"[:300]}
    row["build_s"] = time.perf_counter() - t0
    row["bytes"] = estimate_bytes(factory, len(ds.xb), ds.xb.shape[1])
    index = ShardedIndex.open(out)
    row["tuned"] = index.manifest.default_params
    row["settings"] = []
    for target in TARGETS:
        try:
            row["settings"].append(measure(index, ds, target))
        except Exception as exc:
            row["settings"].append({"target": target, "error": repr(exc)[:300]})
    return row


def best(row: dict, key: str) -> dict | None:
    ok = [s for s in row.get("settings", []) if s.get("recall", 0) >= FLOOR]
    return max(ok, key=lambda s: s[key]) if ok else None


def winners(rows: list[dict]) -> list[dict]:
    """Per (dataset, n): the fastest candidate at recall >= 0.95 for each shape. "mixed" is
    the best geometric mean of a candidate's batched and single QPS, each as a fraction of
    the best candidate's for that shape."""
    out = []
    for ds, n in dict.fromkeys((r["dataset"], r["n"]) for r in rows):
        group = [r for r in rows if r["dataset"] == ds and r["n"] == n]
        top = {
            key: max((s[key] for r in group if (s := best(r, key))), default=0.0)
            for key in ("batch_qps", "single_qps")
        }
        entry: dict[str, Any] = {"dataset": ds, "n": n, "d": group[0]["d"]}
        for shape, key in (("batch", "batch_qps"), ("single", "single_qps")):
            scored = [(s[key], r["kind"]) for r in group if (s := best(r, key))]
            entry[shape] = max(scored)[1] if scored else None
            entry[f"{shape}_qps"] = max(scored)[0] if scored else None
        mixed = []
        for r in group:
            b, s = best(r, "batch_qps"), best(r, "single_qps")
            if b and s and top["batch_qps"] and top["single_qps"]:
                frac = b["batch_qps"] / top["batch_qps"] * s["single_qps"] / top["single_qps"]
                mixed.append((frac**0.5, r["kind"]))
        entry["mixed"] = max(mixed)[1] if mixed else None
        entry["mixed_share"] = max(mixed)[0] if mixed else None
        out.append(entry)
    return out


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows with ``new`` ones replacing those of the same (dataset, n, kind)."""
    key = lambda r: (r["dataset"], r["n"], r["kind"])  # noqa: E731
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def run(args) -> dict:
    path = os.path.join(args.out, "choice_sweep.json")
    previous: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
    previous["rows"] = [r for r in previous.get("rows", []) if "dataset" in r]  # not the
    # first sweep's rows (GloVe only, measured otherwise)
    rows: list[dict] = []
    names = args.datasets.split(",")
    for name in names:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SIZES[name]
        if args.quick:
            sizes = [20_000]
        for n in sizes:
            ds = dataset(name, n)
            workdir = os.path.join(args.workdir, f"{name}-{n}")
            os.makedirs(workdir, exist_ok=True)
            np.save(os.path.join(workdir, "db.npy"), ds.xb)
            kinds = candidates(n, ds.xb.shape[1])
            if args.kinds:
                kinds = {k: v for k, v in kinds.items() if k in args.kinds.split(",")}
            for kind, (factory, efc) in kinds.items():
                row = run_one(name, ds, kind, factory, efc, workdir)
                rows.append(row)
                print(json.dumps(row, default=float), file=sys.stderr, flush=True)
            shutil.rmtree(workdir, ignore_errors=True)
    merged = merge(previous.get("rows", []), rows)
    commands = list(dict.fromkeys([*previous.get("commands", []), command_line()]))
    return {
        "command": commands[-1],
        "commands": commands,
        "queries": QUERIES,
        "cpus": os.cpu_count(),
        "rows": merged,
        "winners": winners(merged),
    }


def command_line() -> str:
    return "python -m bench.choice_sweep " + " ".join(sys.argv[1:])


def cell(row: dict, key: str) -> str:
    s = best(row, key)
    return "-" if s is None else f"{s[key]:,.0f} ({s['recall']:.3f})"


def markdown(r: dict) -> str:
    lines = [
        "# Index choice sweep",
        "",
        "Commands (each run merges its rows into the results):",
        "",
        *[f"    {c}" for c in r["commands"]],
        "",
        f"One shard, {r['queries']:,} held-out queries, {r['cpus']} CPUs; every candidate built "
        "and tuned by `shards`, searched through `ShardedIndex.search` at its tuned "
        f"target_recall {' and '.join(map(str, TARGETS))}; each cell is the best setting "
        f"with recall@10 >= {FLOOR} (its recall in brackets). Single: {CALLERS} concurrent "
        "callers, one OpenMP thread each.",
        "",
        "## Winners",
        "",
        winners_table(r["winners"]),
        "",
        "## Every candidate",
        "",
    ]
    for ds in dict.fromkeys(x["dataset"] for x in r["rows"]):
        lines += [
            f"### {ds}",
            "",
            "| n | candidate | tuned (0.95) | batched QPS | single QPS (c8) | p99 ms | MiB | "
            "build s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for x in sorted((x for x in r["rows"] if x["dataset"] == ds), key=lambda x: x["n"]):
            if "error" in x:
                lines.append(f"| {x['n']:,} | {x['kind']} | {x['error']} | | | | | |")
                continue
            s = best(x, "single_qps")
            p99 = "-" if s is None else f"{s['single_p99_ms']:.2f}"
            lines.append(
                f"| {x['n']:,} | {x['kind']} | {x['tuned'] or '-'} | {cell(x, 'batch_qps')} | "
                f"{cell(x, 'single_qps')} | {p99} | {x['bytes'] / 2**20:,.1f} | "
                f"{x['build_s']:.1f} |"
            )
        lines.append("")
    lines += ["![QPS by size, per dataset and shape](choice_sweep.png)", ""]
    return "\n".join(lines) + "\n"


def winners_table(ws: list[dict]) -> str:
    lines = [
        "| dataset | n | d | large batches | single queries (8 callers) | mixed (share of best) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for w in ws:
        lines.append(
            f"| {w['dataset']} | {w['n']:,} | {w['d']} | {w['batch']} ({w['batch_qps']:,.0f}) | "
            f"{w['single']} ({w['single_qps']:,.0f}) | {w['mixed']} ({w['mixed_share']:.2f}) |"
        )
    return "\n".join(lines)


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(x["dataset"] for x in r["rows"]))
    kinds = list(dict.fromkeys(x["kind"] for x in r["rows"]))
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.5), squeeze=False)
    for j, ds in enumerate(names):
        for i, (key, title) in enumerate(
            (("batch_qps", "batches of 256"), ("single_qps", "single, 8 callers"))
        ):
            ax = axes[i][j]
            for c, kind in enumerate(kinds):
                pts = sorted(
                    (x["n"], s[key])
                    for x in r["rows"]
                    if x["dataset"] == ds and x["kind"] == kind and (s := best(x, key))
                )
                if pts:
                    style = "-o" if kind.startswith(("IVF", "Flat")) else "--s"
                    ax.plot(
                        *zip(*pts, strict=True),
                        style,
                        ms=3,
                        label=kind,
                        color=plt.cm.tab20(c / max(1, len(kinds) - 1)),
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{ds}: {title}", fontsize=9)
            ax.set_xlabel("vectors per shard")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][j].set_ylabel("QPS at recall@10 >= 0.95")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_docs(r: dict, doc: str = DOC) -> None:
    """Replace the table between the sweep markers of docs/INDEX_CHOICE.md."""
    with open(doc) as f:
        text = f.read()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = f"{BEGIN}\n{winners_table(r['winners'])}\n{END}"
    with open(doc, "w") as f:
        f.write(head + body + tail)


def main() -> int:
    ap = parser(__doc__, "sweep")
    ap.add_argument("--datasets", default="glove,minilm,synth96,synth768")
    ap.add_argument("--sizes", help="comma-separated sizes (default: each dataset's)")
    ap.add_argument("--kinds", help="only these candidates (comma-separated names)")
    ap.add_argument("--docs", action="store_true", help="rewrite docs/INDEX_CHOICE.md's table")
    ap.add_argument(
        "--redraw", action="store_true", help="no measurement: the .md, plot and docs from .json"
    )
    args = ap.parse_args()
    if args.redraw:
        with open(os.path.join(args.out, "choice_sweep.json")) as f:
            result = json.load(f)
        result["winners"] = winners(result["rows"])
        print(write(args.out, "choice_sweep", result, markdown))
        plot(result, os.path.join(args.out, "choice_sweep.png"))
        write_docs(result)
        return 0
    if args.out == RESULTS and args.quick:
        args.out = os.path.join(args.workdir, "results")  # a smoke run keeps the results
    result = run(args)
    print(write(args.out, "choice_sweep", result, markdown))
    plot(result, os.path.join(args.out, "choice_sweep.png"))
    if args.docs:
        write_docs(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
