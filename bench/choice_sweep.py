"""Where each index type pays off: Flat, IVF-Flat, IVF-PQ(fast-scan)+refine and HNSW by size.

    python -m bench.choice_sweep [--quick]

For each database size (GloVe subsets, one shard, 2,000 held-out queries) every index type is
built and tuned for recall@10 >= 0.95 the way `shards` does it; we then measure recall at the
tuned defaults on the held-out queries, batched and single-query QPS, build time and bytes.
The thresholds in shards/choice.py come from this table (docs/INDEX_CHOICE.md).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from bench.core import single_query
from bench.glove import load, recall_at
from bench.results import parser, write
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.choice import estimate_bytes, nlist_for, pq_m_for

SIZES = (5_000, 20_000, 50_000, 100_000, 200_000, 390_000)


def kinds(n: int, d: int) -> dict[str, str]:
    nlist = nlist_for(n)
    return {
        "Flat": "Flat",
        "IVF-Flat": f"IVF{nlist},Flat",
        "IVF-PQfs+refine": f"IVF{nlist},PQ{pq_m_for(d)}x4fs,RFlat",
        "HNSW32": "HNSW32,Flat",
    }


def run(quick: bool, workdir: str) -> dict:
    full = load()
    sizes = (5_000, 20_000) if quick else SIZES
    xq, n_q = full.xq[:2000], 2000
    rows = []
    for n in sizes:
        xb = full.xb[:n]
        src = os.path.join(workdir, f"sweep-{n}.npy")
        os.makedirs(workdir, exist_ok=True)
        np.save(src, xb)
        from shards._faiss import faiss

        gt = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
        for kind, factory in kinds(n, xb.shape[1]).items():
            out = os.path.join(workdir, f"sweep-{n}-{kind}")
            t0 = time.perf_counter()
            build_index(
                VectorSource(src), out, BuildOptions(index=factory, metric="cosine", progress=False)
            )
            build_s = time.perf_counter() - t0
            index = ShardedIndex.open(out)
            index.search(xq, 10)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                _, I = index.search(xq, 10)
                best = min(best, time.perf_counter() - t0)
            row = {
                "n": n,
                "kind": kind,
                "factory": factory,
                "params": index.manifest.default_params,
                "recall_at_10": recall_at(I, gt),
                "batched_qps": n_q / best,
                "bytes": estimate_bytes(factory, n, xb.shape[1]),
                "build_s": build_s,
                **single_query(index, xq[:300]),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return {
        "command": "python -m bench.choice_sweep" + (" --quick" if quick else ""),
        "queries": n_q,
        "rows": rows,
    }


def markdown(r: dict) -> str:
    lines = [
        f"# Index choice sweep: `{r['command']}`",
        "",
        f"GloVe 50-d cosine subsets, one shard, {r['queries']:,} held-out queries; "
        "each index built and tuned by `shards` for recall@10 >= 0.95 (2,000 input rows held "
        "out while tuning), then measured at its tuned defaults on these queries.",
        "",
        "| n | index | tuned params | recall@10 | batched QPS | single QPS | p99 ms | "
        "MiB | build s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['n']:,} | {x['kind']} | {x['params'] or '-'} | "
            f"{x['recall_at_10']:.3f} | {x['batched_qps']:,.0f} | "
            f"{x['single_qps']:,.0f} | {x['single_p99_ms']:.2f} | "
            f"{x['bytes'] / 2**20:.1f} | {x['build_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parser(__doc__, "sweep").parse_args()
    print(write(args.out, "choice_sweep", run(args.quick, args.workdir), markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
