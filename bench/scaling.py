"""Shard count on one machine: vsearch in process with 1, 2, 4 and 8 shards of GloVe.

    python -m bench.scaling [--quick]

Each index is the automatic choice, tuned; queries use ``target_recall`` 0.95. Batches of 256
and single queries from 8 callers, as in ``bench.compare``. On one machine more shards only
add work (each shard searches its part, then the merge); the point of sharding is the memory
and the machines, which this shows the cost of.
"""

from __future__ import annotations

import os
import sys

from bench.compare import measure
from bench.core import build
from bench.glove import QUICK, load
from bench.results import line_plot, parser, write
from bench.systems import System
from shards import ShardedIndex
from shards._faiss import faiss

SHARDS = (1, 2, 4, 8)


class Sharded(System):
    def __init__(self, index: ShardedIndex, shards: int) -> None:
        self.index, self.name = index, f"vsearch {shards} shard(s)"

    def search(self, xq, k, setting):
        return self.index.search(xq, k, target_recall=setting["target_recall"])[1]


def run(args) -> dict:
    ds = load(**QUICK) if args.quick else load()
    xq, gt = ds.xq[: args.queries], ds.gt[: args.queries]
    rows = []
    for s in SHARDS:
        path = os.path.join(args.workdir, f"{ds.name}-auto-{s}")
        if not os.path.exists(os.path.join(path, "CURRENT")):
            build(ds, path, "auto", s)
        index = ShardedIndex.open(path)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        stats = measure(Sharded(index, s), xq, gt, {"target_recall": 0.95}, 500)
        rows.append({"shards": s, "factory": index.manifest.factory, **stats})
        print(rows[-1], file=sys.stderr, flush=True)
    return {
        "command": "python -m bench.scaling " + " ".join(sys.argv[1:]),
        "dataset": ds.name,
        "queries": len(xq),
        "cpus": os.cpu_count(),
        "rows": rows,
    }


def markdown(r: dict) -> str:
    base = r["rows"][0]
    lines = [
        f"# Shard scaling in process: `{r['command']}`",
        "",
        f"{r['dataset']}, {r['queries']:,} queries at target_recall 0.95, {r['cpus']} CPUs.",
        "",
        "| shards | index | recall@10 | batched QPS | vs 1 shard | single-query QPS (c8) | "
        "vs 1 shard | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['shards']} | `{x['factory']}` | {x['recall']:.3f} | {x['qps_batch']:,.0f} | "
            f"{x['qps_batch'] / base['qps_batch']:.2f}x | {x['qps_single_c8']:,.0f} | "
            f"{x['qps_single_c8'] / base['qps_single_c8']:.2f}x | {x['p99_ms']:.2f} |"
        )
    lines += ["", "![QPS by shard count](scaling.png)", ""]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: str) -> None:
    series = {
        "batches of 256": [x["qps_batch"] for x in r["rows"]],
        "single queries, 8 callers": [x["qps_single_c8"] for x in r["rows"]],
    }
    s = [x["shards"] for x in r["rows"]]
    line_plot(path, s, series, "shards (one process)", "queries per second at recall@10 0.95")


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--queries", type=int, default=2_000)
    args = ap.parse_args()
    result = run(args)
    print(write(args.out, "scaling", result, markdown))
    plot(result, os.path.join(args.out, "scaling.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
