"""Filtered search on GloVe: recall@10 and QPS per selectivity, and the plan each took.

    python -m bench.filters            # 390,000 vectors, 1,000 queries, 4 shards
    python -m bench.filters --quick    # 20,000 vectors, 200 queries
    python -m bench.filters --peers    # the same filtered queries in Qdrant local, LanceDB and
                                       # Milvus Lite (make bench-peers installs them)
    python -m bench.filters --minilm N # on N MiniLM sentence embeddings (384-d, bench.minilm)

Seeded synthetic attributes on every vector: ``category`` (10 values), ``year`` (1950-2049),
``tags`` (1 to 3 of 2,000) and ``band`` (0-999,999, for the threshold sweep). Selectivities
50% (``year >= 2000``), 10% (one category), 1% (one year) and 0.1% (one tag). The oracle is
brute force over the matching subset, computed from the attribute arrays here, not through
vsearch's filter code. Baselines in the same run: the unfiltered search, and a post-filter
(100 unfiltered results, then the filter: what a store without filter planning returns).

The exact plan's threshold: for 1k to 64k matching rows per shard (``band`` ranges), the
time of the exact plan and of the ANN plan, each forced, on the same queries.

Writes bench/results/filters.json, filters.md and filters.png (filters-minilm.* with
--minilm; or --out DIR).
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import numpy as np

import shards.filtered as filtered
from bench.glove import load, recall_at
from bench.results import parser, write
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards._faiss import faiss

TAGS = 2000
SELECTIVITIES = {
    "50%": ({"year": {"$gte": 2000}}, lambda a: a["year"] >= 2000),
    "10%": ({"category": "c3"}, lambda a: a["category"] == 3),
    "1%": ({"year": 1977}, lambda a: a["year"] == 1977),
    "0.1%": ({"tags": "t7"}, lambda a: a["has_t7"]),
}
SWEEP_ROWS = (1_000, 4_000, 16_000, 32_000, 64_000)  # matching rows per shard


def attributes(n: int, seed: int = 7) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 4, n)
    tags = [rng.choice(TAGS, c, replace=False) for c in counts]
    return {
        "category": rng.integers(0, 10, n),
        "year": rng.integers(1950, 2050, n),
        "band": rng.integers(0, 1_000_000, n),
        "tags": tags,
        "has_t7": np.array([7 in t for t in tags]),
    }


def build(ds, attrs: dict, out: str, shards: int) -> tuple[ShardedIndex, float]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(out, "CURRENT")):
        d = ds.xb.shape[1]
        table = pa.table(
            {
                "id": np.arange(len(ds.xb), dtype=np.int64),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(ds.xb.ravel()), d),
                "category": [f"c{c}" for c in attrs["category"]],
                "year": pa.array(attrs["year"], pa.int32()),
                "band": pa.array(attrs["band"], pa.int32()),
                "tags": pa.array([[f"t{t}" for t in ts] for ts in attrs["tags"]]),
            }
        )
        src_path = f"{out}.parquet"
        pq.write_table(table, src_path)
        src = VectorSource(
            src_path, id_column="id", metadata_columns=["category", "year", "band", "tags"]
        )
        opts = BuildOptions(num_shards=shards, index="auto", metric="cosine", progress=False)
        build_index(src, out, opts)
    return ShardedIndex.open(out), time.perf_counter() - t0


def truth(ds, mask: np.ndarray, xq: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask)
    _, R = faiss.knn(xq, ds.xb[rows], 10, metric=faiss.METRIC_INNER_PRODUCT)
    return np.where(R >= 0, rows[np.maximum(R, 0)], -1)


def timed(fn, reps: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(index: ShardedIndex, xq: np.ndarray, expr, gt, n_single: int) -> dict:
    seconds, (_, I) = timed(lambda: index.search(xq, 10, filter=expr))
    singles, _ = timed(
        lambda: [index.search(xq[i : i + 1], 10, filter=expr) for i in range(n_single)], 1
    )
    filt = index.parse_filter(expr)
    plans = index.search_planned(xq[:1], 10, index.resolve(), filt)[2] if filt else {}
    return {
        "recall_at_10": recall_at(I, gt),
        "batched_qps": len(xq) / seconds,
        "single_qps": n_single / singles,
        "plans": sorted(set(plans.values())),
        "short_rows": int((I < 0).any(axis=1).sum()),  # queries given fewer than k results
    }


def post_filter(index: ShardedIndex, xq: np.ndarray, mask: np.ndarray, gt) -> float:
    _, I = index.search(xq, 100)
    kept = np.full((len(xq), 10), -1, np.int64)
    for q in range(len(xq)):
        hits = I[q][(I[q] >= 0) & mask[np.maximum(I[q], 0)]][:10]
        kept[q, : len(hits)] = hits
    return recall_at(kept, gt)


def sweep(index: ShardedIndex, ds, attrs: dict, xq: np.ndarray, shards: int) -> list[dict]:
    """Exact plan vs ANN plan, each forced, for a number of matching rows per shard."""
    rows = []
    n = len(ds.xb)
    saved = filtered.EXACT_MAX_FLOATS
    try:
        for per_shard in SWEEP_ROWS:
            upper = int(1_000_000 * per_shard * shards / n)
            if upper >= 1_000_000:
                break
            expr = {"band": {"$lt": upper}}
            gt = truth(ds, attrs["band"] < upper, xq)
            row: dict[str, Any] = {"rows_per_shard": per_shard}
            for plan, limit in (("exact", 1 << 62), ("ann", 0)):
                filtered.EXACT_MAX_FLOATS = limit
                index.search(xq[:8], 10, filter=expr)  # warm: masks and vectors cached
                seconds, (_, I) = timed(lambda e=expr: index.search(xq, 10, filter=e))
                row[f"{plan}_qps"] = len(xq) / seconds
                row[f"{plan}_recall"] = recall_at(I, gt)
            rows.append(row)
    finally:
        filtered.EXACT_MAX_FLOATS = saved
    return rows


def run(quick: bool, out_dir: str, workdir: str, peers: bool = False, minilm: int = 0) -> dict:
    if minilm:
        from bench.minilm import load as load_minilm

        ds = load_minilm(minilm)
    else:
        ds = load(n_db=20_000, n_queries=500) if quick else load()
    # MiniLM: 2 shards, so that the threshold sweep reaches 16,000 matching rows per shard
    nq, n_single, shards = (200, 50, 2) if quick else (1000, 200, 2 if minilm else 4)
    xq = ds.xq[:nq]
    attrs = attributes(len(ds.xb))
    os.makedirs(workdir, exist_ok=True)
    index, build_s = build(ds, attrs, os.path.join(workdir, f"{ds.name}-filters-{shards}"), shards)
    plain = measure(index, xq, None, ds.gt[:nq, :10], n_single)
    rows = []
    for label, (expr, select) in SELECTIVITIES.items():
        mask = select(attrs)
        gt = truth(ds, mask, xq)
        row = {"selectivity": label, "matching": float(mask.mean()), "filter": expr}
        row |= measure(index, xq, expr, gt, n_single)
        row["post_filter_recall"] = post_filter(index, xq, mask, gt)
        rows.append(row)
        print(label, row)
    result = {
        "dataset": ds.name,
        "queries": nq,
        "shards": shards,
        "factory": index.manifest.factory,
        "build_s": build_s,
        "exact_max_rows": filtered.exact_max_rows(ds.xb.shape[1]),
        "unfiltered": plain,
        "rows": rows,
        "sweep": sweep(index, ds, attrs, xq[:200], shards),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if peers:
        from bench.filter_peers import run_peers

        result["peers"] = run_peers(ds, attrs, xq[:200], SELECTIVITIES, truth)
    result["name"] = "filters-minilm" if minilm else "filters"
    plot(result, os.path.join(out_dir, f"{result['name']}.png"))
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["selectivity"] for r in result["rows"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(labels, [r["recall_at_10"] for r in result["rows"]], "-o", label="vsearch")
    a.plot(labels, [r["post_filter_recall"] for r in result["rows"]], "-o", label="post-filter")
    b.plot(labels, [r["batched_qps"] for r in result["rows"]], "-o", label="vsearch batched")
    b.plot(labels, [r["single_qps"] for r in result["rows"]], "-o", label="vsearch single")
    for name, peer in result.get("peers", {}).items():
        if "rows" in peer:
            a.plot(labels, [r["recall_at_10"] for r in peer["rows"]], "--s", label=name)
            b.plot(labels, [r["qps"] for r in peer["rows"]], "--s", label=name)
    a.set_ylabel("recall@10 (vs brute force over the subset)")
    a.set_ylim(0, 1.02)
    b.set_ylabel("queries/s")
    b.set_yscale("log")
    for ax in (a, b):
        ax.set_xlabel("rows matching the filter")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"filtered search, {result['dataset']}, {result['factory']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(r: dict) -> str:
    u = r["unfiltered"]
    lines = [
        f"# Filtered search ({r['dataset']}, seeded attributes)",
        "",
        f"Command: `python -m bench.filters{r.get('flags', '')}`. "
        f"{r['dataset']}, {r['queries']} queries, {r['shards']} shards, automatic index "
        f"`{r['factory']}` (cosine), {r['machine']}. The oracle: brute force over the rows "
        "that match. Post-filter: 100 unfiltered results, then the filter.",
        "",
        f"Unfiltered: recall@10 {u['recall_at_10']:.3f}, {u['batched_qps']:,.0f} queries/s "
        f"batched, {u['single_qps']:,.0f}/s one at a time.",
        "",
        "| matching | filter | plan | recall@10 | batched q/s | single q/s | short answers "
        "| post-filter recall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['selectivity']} ({row['matching']:.4f}) | `{json.dumps(row['filter'])}` "
            f"| {', '.join(row['plans'])} | {row['recall_at_10']:.3f} | "
            f"{row['batched_qps']:,.0f} | {row['single_qps']:,.0f} | {row['short_rows']} | "
            f"{row['post_filter_recall']:.3f} |"
        )
    lines += [
        "",
        f"## The exact plan's threshold (here {r['exact_max_rows']:,} matching rows per shard)",
        "",
        "Each plan forced on the same 200 queries (`band` ranges):",
        "",
        "| rows per shard | exact q/s | exact recall | ann q/s | ann recall |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in r["sweep"]:
        lines.append(
            f"| {s['rows_per_shard']:,} | {s['exact_qps']:,.0f} | {s['exact_recall']:.3f} | "
            f"{s['ann_qps']:,.0f} | {s['ann_recall']:.3f} |"
        )
    if "peers" in r:
        lines += [
            "",
            "## The same filtered queries in other stores",
            "",
            "Recall@10 against the same oracle @ queries/s (batched where the store has a "
            "batch call). Milvus Lite: IVF_FLAT nlist 1024, nprobe 32, boolean expressions; "
            "LanceDB: IVF-PQ 256 partitions, nprobes 20, refine 10, `where(..., prefilter=True)`;"
            " Qdrant local mode (an in-process brute force meant for small collections, not "
            "Qdrant's server), fewer queries.",
            "",
        ]
        lines += ["| system | queries | " + " | ".join(x["selectivity"] for x in r["rows"]) + " |"]
        lines += ["| --- | --- |" + " --- |" * len(r["rows"])]
        for name, peer in r["peers"].items():
            if "rows" not in peer:
                lines.append(f"| {name} | {peer.get('error', '?')} |")
                continue
            cells = [f"{x['recall_at_10']:.3f} @ {_qps(x['qps'])}/s" for x in peer["rows"]]
            lines.append(f"| {name} | {peer['queries']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _qps(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.2f}"


def main() -> None:
    ap = parser(__doc__, "filters")
    ap.add_argument("--peers", action="store_true", help="Qdrant local, LanceDB, Milvus Lite")
    ap.add_argument("--minilm", type=int, default=0, help="N MiniLM vectors instead of GloVe")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    result = run(args.quick, args.out, args.workdir, args.peers, args.minilm)
    result["flags"] = (" --peers" if args.peers else "") + (
        f" --minilm {args.minilm}" if args.minilm else ""
    )
    print(write(args.out, result["name"], result, markdown))


if __name__ == "__main__":
    main()
