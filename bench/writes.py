"""Writes through the service: upserts/s and deletes/s over HTTP, write-to-visible latency,
search QPS with and without a concurrent write stream, and compaction time.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 python -m bench.writes [--quick]

(the environment `make serve` runs with: HAProxy on the HTTP port, Serve's direct ingress)

GloVe (390k x 50, cosine, 4 shards, the automatic index) on a local Ray, one replica per
shard. Every figure is measured in this one run: the search throughput under writes is
given as a ratio to the same searches without them. Writes go to a copy of the index (its
log grows); compaction is timed in process for 100k changes (50k replacements, 50k
deletes). Writes bench/results/writes.json and writes.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.core import build
from bench.glove import QUICK, load
from bench.results import command, parser, write
from bench.serving import drive
from deployments.http import encode_vectors_b64
from shards import ShardedIndex

NEW_IDS = 10**9  # upserted ids start here (the GloVe rows are 0..n-1)


def write_rates(http, ds, quick: bool) -> list[dict]:
    """Upserts then deletes of fresh ids, batches of 1 (8 callers) and 256 (2 callers)."""
    rows = []
    next_id = [NEW_IDS]
    rng = np.random.default_rng(0)
    for batch, conc, count in ((1, 8, 200 if quick else 1600), (256, 2, 8 if quick else 60)):
        payloads = []
        for _ in range(count):
            ids = np.arange(next_id[0], next_id[0] + batch)
            next_id[0] += batch
            x = ds.xb[rng.integers(0, len(ds.xb), batch)]
            payloads.append((ids, x))

        def upsert(p):
            body = {"ids": p[0].tolist(), "vectors_b64": encode_vectors_b64(p[1])}
            r = http.post("/v1/upsert", json=body)
            assert r.status_code == 200, r.text

        def delete(p):
            r = http.post("/v1/delete", json={"ids": p[0].tolist()})
            assert r.status_code == 200 and r.json()["deleted"] == len(p[0]), r.text

        for kind, call in (("upsert", upsert), ("delete", delete)):
            stats = drive(call, payloads, conc)
            row = {"kind": kind, "batch": batch, "concurrency": conc, **stats}
            row["rows_per_s"] = stats["requests_per_s"] * batch
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def visible_latency(http, ds, n: int) -> dict:
    """Seconds from sending an upsert to the first plain search (no min_sequence) that
    returns it, and to its acknowledgement, one write at a time."""
    ack, seen = np.empty(n), np.empty(n)
    for i in range(n):
        x = ds.xq[i : i + 1]
        new_id = 2 * NEW_IDS + i
        t0 = time.perf_counter()
        r = http.post("/v1/upsert", json={"ids": [new_id], "vectors_b64": encode_vectors_b64(x)})
        assert r.status_code == 200, r.text
        ack[i] = time.perf_counter() - t0
        query = {"vectors_b64": encode_vectors_b64(x), "k": 10}
        while new_id not in http.post("/v1/search", json=query).json()["ids"][0]:
            if time.perf_counter() - t0 > 10:
                raise AssertionError(f"upserted id {new_id} not visible after 10 s")
        seen[i] = time.perf_counter() - t0
    return {
        "writes": n,
        "ack_p50_ms": 1e3 * float(np.percentile(ack, 50)),
        "ack_p99_ms": 1e3 * float(np.percentile(ack, 99)),
        "visible_p50_ms": 1e3 * float(np.percentile(seen, 50)),
        "visible_p99_ms": 1e3 * float(np.percentile(seen, 99)),
    }


def search_under_writes(http, ds, quick: bool) -> dict:
    """Single queries from 8 callers, alone and beside a stream of batch-16 upserts."""
    n = 400 if quick else 3000
    payloads = [ds.xq[i % len(ds.xq) : i % len(ds.xq) + 1] for i in range(n)]

    def search(xq):
        r = http.post("/v1/search", json={"vectors_b64": encode_vectors_b64(xq), "k": 10})
        assert r.status_code == 200, r.text

    search(payloads[0])
    alone = drive(search, payloads, 8)
    stop, written = threading.Event(), [0]

    def stream():
        i = 3 * NEW_IDS
        while not stop.is_set():
            x = ds.xb[(i % 1000) * 16 : (i % 1000) * 16 + 16]
            r = http.post(
                "/v1/upsert",
                json={"ids": list(range(i, i + 16)), "vectors_b64": encode_vectors_b64(x)},
            )
            assert r.status_code == 200, r.text
            i += 16
            written[0] += 16

    writer = threading.Thread(target=stream, daemon=True)
    writer.start()
    t0 = time.perf_counter()
    busy = drive(search, payloads, 8)
    seconds = time.perf_counter() - t0
    stop.set()
    writer.join()
    return {
        "alone": alone,
        "with_writes": busy,
        "write_rows_per_s": written[0] / seconds,
        "qps_ratio": busy["requests_per_s"] / alone["requests_per_s"],
    }


def compaction(root: str, ds, quick: bool) -> dict:
    """In process: 50k replacements and 50k deletes (fewer with --quick), then compact."""
    n = 5_000 if quick else 50_000
    index = ShardedIndex.open(root)
    rng = np.random.default_rng(1)
    rows = rng.permutation(len(ds.xb))[: 2 * n]
    t0 = time.perf_counter()
    for start in range(0, n, 4096):
        part = rows[start : min(n, start + 4096)]
        index.upsert(ds.xb[rng.integers(0, len(ds.xb), len(part))], part)
    for start in range(n, 2 * n, 4096):
        index.delete(rows[start : min(2 * n, start + 4096)])
    logged = time.perf_counter() - t0
    t0 = time.perf_counter()
    manifest = index.compact()
    took = time.perf_counter() - t0
    return {
        "changes": 2 * n,
        "write_seconds": logged,
        "compact_seconds": took,
        "vectors_after": manifest.ntotal,
        "factory": manifest.factory,
    }


def run(quick: bool, workdir: str) -> dict:
    import httpx
    import ray

    from deployments.local import deploy, start_local

    ds = load(**QUICK) if quick else load()
    source = os.path.join(workdir, f"{ds.name}-auto-4")
    if not os.path.exists(os.path.join(source, "CURRENT")):
        build(ds, source, "auto", 4)
    tmp = tempfile.mkdtemp(prefix="vsearch-writes-")
    root = os.path.join(tmp, "idx")
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("log"))
    try:
        url = start_local()
        deploy("writes", {"index_uri": root, "shard": {"num_replicas": 1, "omp_threads": 1}})
        http = httpx.Client(
            base_url=url + "/writes",
            timeout=60,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        rates = write_rates(http, ds, quick)
        visible = visible_latency(http, ds, 50 if quick else 300)
        print(json.dumps(visible), file=sys.stderr)
        under = search_under_writes(http, ds, quick)
        print(json.dumps(under), file=sys.stderr)
        ray.shutdown()
        compact = compaction(root, ds, quick)
        print(json.dumps(compact), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "command": command("bench.writes"),
        "dataset": ds.name,
        "factory": compact["factory"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rates": rates,
        "visible": visible,
        "search_under_writes": under,
        "compaction": compact,
    }


def markdown(r: dict) -> str:
    v, u, c = r["visible"], r["search_under_writes"], r["compaction"]
    lines = [
        "# Writes through the service",
        "",
        f"`{r['command']}` on {r['machine']['cpus']} cores; {r['dataset']}, 4 shards "
        f"({r['factory']}), one replica per shard, HTTP (`vectors_b64`) on a local Ray.",
        "",
        "| write | batch | callers | requests/s | rows/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rates"]:
        lines.append(
            f"| {row['kind']} | {row['batch']} | {row['concurrency']} | "
            f"{row['requests_per_s']:,.0f} | {row['rows_per_s']:,.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} |"
        )
    lines += [
        "",
        f"Write to visible ({v['writes']} single upserts, one at a time, then plain searches "
        f"until the new id is returned): acknowledged p50 {v['ack_p50_ms']:.1f} ms / p99 "
        f"{v['ack_p99_ms']:.1f} ms; visible p50 {v['visible_p50_ms']:.1f} ms / p99 "
        f"{v['visible_p99_ms']:.1f} ms.",
        "",
        f"Single-query search from 8 callers: {u['alone']['requests_per_s']:,.0f} QPS alone, "
        f"{u['with_writes']['requests_per_s']:,.0f} QPS beside a stream of batch-16 upserts "
        f"({u['write_rows_per_s']:,.0f} rows/s): **{u['qps_ratio']:.2f}x**; p99 "
        f"{u['alone']['p99_ms']:.1f} -> {u['with_writes']['p99_ms']:.1f} ms.",
        "",
        f"Compaction ({c['factory']}, in process): {c['changes']:,} changes logged in "
        f"{c['write_seconds']:.1f} s, `compact()` {c['compact_seconds']:.1f} s to a version "
        f"of {c['vectors_after']:,} vectors.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    args = parser(__doc__).parse_args()
    print(write(args.out, "writes", run(args.quick, args.workdir), markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
