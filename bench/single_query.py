"""What a lone query costs next to its share of a batch, and where the difference goes.

    python -m bench.single_query [--quick] [--label NAME] [--profile]

In one process, one OpenMP thread, the automatic index (GloVe 390k cosine, 1 and 4 shards;
MiniLM 100k, 1 shard, when its cache exists), 2,000 held-out queries at the tuned defaults:

- ``batch share``: batches of 256 through ``ShardedIndex.search``, per query;
- ``faiss alone``: each query searched straight on the shard's faiss index(es), parameter
  object made once: what faiss itself costs for a lone query;
- ``library``: each query through ``ShardedIndex.search`` (checks, overrides, fan-out over the
  shards, merge);
- ``8 callers``: lone queries from 8 threads through ``ShardedIndex.search``, queries/s.

``--profile`` adds the library path's top functions by own time (cProfile). ``--label`` names
the code measured (rows merge into single_query.json by label, so two trees can be measured
one after the other and compared in one file).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bench.glove import Dataset, load
from bench.results import parser, write
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards._faiss import faiss
from shards.params import make_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 10
BATCH = 256
CALLERS = 8


def datasets(quick: bool) -> list[tuple[Dataset, int]]:
    if quick:
        return [(load(n_db=20_000, n_queries=2_000), 1)]
    out = [(load(), 1), (load(), 4)]
    from bench import minilm
    from bench.glove import CACHE

    if os.path.exists(os.path.join(CACHE, "minilm-100000-xb.npy")):
        out.append((minilm.load(), 1))
    return out


def index_for(ds: Dataset, shards: int, workdir: str) -> ShardedIndex:
    root = os.path.join(workdir, f"{ds.name}-auto-{shards}")
    if not os.path.exists(os.path.join(root, "CURRENT")):
        metric = "cosine" if ds.name.startswith("glove") else "l2"
        opts = BuildOptions(num_shards=shards, metric=metric, progress=False)
        build_index(VectorSource(ds.db_path), root, opts)
    return ShardedIndex.open(root)


def per_query(fn, xq: np.ndarray) -> float:
    t0 = time.perf_counter()
    for i in range(len(xq)):
        fn(xq[i : i + 1])
    return (time.perf_counter() - t0) / len(xq)


def measure(index: ShardedIndex, xq: np.ndarray) -> dict:
    ov = index.resolve(None, None, K)
    prepared = index.planner.prepare(xq)
    made = [(shard.index, make_params(shard.index, ov, None, K)) for shard in index.shards.values()]

    def faiss_alone(q):
        for fi, (params, _) in made:
            fi.search(q, K, params=params)

    def library(q):
        index.search(q, K)

    library(xq[:1])
    t0 = time.perf_counter()
    for i in range(0, len(xq), BATCH):
        index.search(xq[i : i + BATCH], K)
    batch = (time.perf_counter() - t0) / len(xq)
    alone = per_query(faiss_alone, prepared)
    lib = per_query(library, xq)
    turn, lock, done = iter(range(len(xq))), threading.Lock(), [0]

    def caller():
        faiss.omp_set_num_threads(1)
        while True:
            with lock:
                i = next(turn, None)
            if i is None:
                return
            index.search(xq[i : i + 1], K)
            done[0] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CALLERS) as pool:
        for f in [pool.submit(caller) for _ in range(CALLERS)]:
            f.result()
    c8 = done[0] / (time.perf_counter() - t0)
    return {
        "params": ov.to_dict(),
        "batch_share_us": 1e6 * batch,
        "faiss_alone_us": 1e6 * alone,
        "library_us": 1e6 * lib,
        "c8_qps": c8,
    }


def profile(index: ShardedIndex, xq: np.ndarray, top: int = 15) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for i in range(len(xq)):
        index.search(xq[i : i + 1], K)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return relative_paths(out.getvalue())


def relative_paths(text: str) -> str:
    """File names as the project and its packages name them, not where a machine keeps them."""
    return re.sub(r"\S*/site-packages/", "", text.replace(ROOT + os.sep, ""))


def run(args) -> dict:
    faiss.omp_set_num_threads(1)
    rows = []
    for ds, shards in datasets(args.quick):
        index = index_for(ds, shards, args.workdir)
        xq = ds.xq[: 500 if args.quick else 2_000]
        row = {
            "label": args.label,
            "dataset": ds.name,
            "shards": shards,
            "factory": index.manifest.factory,
            **measure(index, xq),
        }
        if args.profile:
            row["profile"] = profile(index, xq)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), file=sys.stderr)
    path = os.path.join(args.out, "single_query.json")
    old = []
    if os.path.exists(path) and not args.quick:
        with open(path) as f:
            old = [r for r in json.load(f)["rows"] if r["label"] != args.label]
        for r in old:
            if "profile" in r:
                r["profile"] = relative_paths(r["profile"])
    return {"commands": [*_commands(path), command_line()], "rows": old + rows}


def _commands(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f).get("commands", [])


def command_line() -> str:
    return "python -m bench.single_query " + " ".join(sys.argv[1:])


def markdown(r: dict) -> str:
    lines = [
        "# A lone query against its share of a batch",
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in dict.fromkeys(r["commands"])],
        "",
        "One process, one OpenMP thread, tuned defaults, microseconds per query "
        "(8 callers: queries/s through `ShardedIndex.search` from 8 threads).",
        "",
        "| code | dataset | shards | index | defaults | batch share us | faiss alone us | "
        "library us | library / batch share | 8 callers QPS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['label']} | {x['dataset']} | {x['shards']} | {x['factory']} | {x['params']} | "
            f"{x['batch_share_us']:.0f} | {x['faiss_alone_us']:.0f} | {x['library_us']:.0f} | "
            f"{x['library_us'] / x['batch_share_us']:.2f}x | {x['c8_qps']:,.0f} |"
        )
    for x in r["rows"]:
        if "profile" in x:
            lines += [
                "",
                f"## Profile: {x['label']}, {x['dataset']}, {x['shards']} shard(s)",
                "",
                "```",
                x["profile"].strip(),
                "```",
            ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__, "single")
    ap.add_argument("--label", default="this tree", help="what code this run measures")
    ap.add_argument("--profile", action="store_true", help="add a cProfile of the library path")
    args = ap.parse_args()
    if args.quick:
        args.out = os.path.join(args.workdir, "results")
    print(write(args.out, "single_query", run(args), markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
