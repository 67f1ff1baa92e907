"""Collections: one Serve application per collection against Serve's model multiplexing,
measured in one run, to choose how a cluster serves several indexes.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 python -m bench.collections

Each collection: a one-shard Flat index of 20,000 GloVe vectors (its own copy). Per
collection application (what vsearch serves, ``deployments.collections``): the seconds to
deploy the N-th one, its processes and their memory (RSS), and single-query HTTP searches
spread over the N collections from 8 callers. Multiplexed: one deployment of
``@serve.multiplexed`` loading a collection's index on first use (``Multiplexed`` below, a
prototype of the search path only: no writes, log, versions or swaps, which it would need
per collection inside one replica), with its cold load per collection and the same
searches, also with more collections than it keeps loaded. Writes
bench/results/collections.json and collections.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from ray import serve

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.glove import load
from bench.results import command, parser, write
from bench.serving import drive
from deployments.http import encode_vectors_b64

PER_COLLECTION = 20_000
KEEP = 8  # collections the multiplexed replica keeps loaded


class Multiplexed:
    """The multiplexed prototype: ``POST /`` with ``serve_multiplexed_model_id: NAME`` searches
    collection NAME (``root/NAME``), loaded on first use, at most ``keep`` at once."""

    def __init__(self, root: str) -> None:
        self.root = root

    @serve.multiplexed(max_num_models_per_replica=KEEP)
    async def get_index(self, name: str):
        from shards import ShardedIndex

        return ShardedIndex.open(os.path.join(self.root, name))

    async def __call__(self, request):
        from deployments.http import queries_of, response_json
        from deployments.schema import SearchRequest

        index = await self.get_index(serve.get_multiplexed_model_id())
        req = SearchRequest.model_validate(await request.json())
        D, I = index.search(queries_of(req, index.dim), req.k)
        body = {"D": D, "I": I, "coverage": 1.0, "degraded": False, "took_ms": 0.0}
        return response_json({**body, "index_version": index.index_version})


def build_collections(ds, root: str, n: int) -> list[str]:
    from shards import BuildOptions, VectorSource, build_index

    names = []
    for c in range(n):
        name = f"c{c}"
        start = (c * PER_COLLECTION) % (len(ds.xb) - PER_COLLECTION)
        src = os.path.join(root, f"{name}.npy")
        np.save(src, ds.xb[start : start + PER_COLLECTION])
        opts = BuildOptions(index="Flat", metric="cosine", progress=False)
        build_index(VectorSource(src), os.path.join(root, name), opts)
        names.append(name)
    return names


def replica_memory(app: str) -> tuple[int, float]:
    """(processes, RSS MB) of the Serve replicas of application ``app``."""
    import psutil

    procs, rss = 0, 0
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if f"ServeReplica:{app}:" in cmd:
            procs += 1
            rss += p.info["memory_info"].rss
    return procs, rss / 2**20


def searches(http, ds, names, header: bool, n: int) -> dict:
    def call(i):
        name = names[i % len(names)]
        body = {"vectors_b64": encode_vectors_b64(ds.xq[i % len(ds.xq)][None]), "k": 10}
        if header:
            r = http.post("/mux", json=body, headers={"serve_multiplexed_model_id": name})
        else:
            r = http.post(f"/v1/collections/{name}/search", json=body)
        assert r.status_code == 200, r.text

    return drive(call, list(range(n)), 8)


def per_app(ds, root, names, http, counts, n_search) -> list[dict]:
    from deployments.local import deploy, undeploy

    rows, deployed = [], []
    for name in names[: max(counts)]:
        t0 = time.perf_counter()
        deploy(f"app-{name}", {"index_uri": os.path.join(root, name), "collection": name})
        seconds = time.perf_counter() - t0
        deployed.append(name)
        procs, rss = replica_memory(f"app-{name}")
        row = {"design": "application per collection", "collections": len(deployed)}
        row.update(deploy_seconds=seconds, processes=procs, rss_mb=rss)
        if len(deployed) in counts:
            row["search"] = searches(http, ds, deployed, False, n_search)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    for name in deployed:
        undeploy(f"app-{name}")
    return rows


def multiplexed(ds, root, names, http, counts, keep, n_search) -> list[dict]:
    rows = []
    for n in counts:
        app = serve.deployment(Multiplexed, name="mux", max_ongoing_requests=64)
        t0 = time.perf_counter()
        serve.run(app.bind(root), name="mux", route_prefix="/mux")
        seconds = time.perf_counter() - t0
        cold = []
        for name in names[:n]:  # the first query of each collection loads it
            t1 = time.perf_counter()
            body = {"vectors_b64": encode_vectors_b64(ds.xq[:1]), "k": 10}
            r = http.post("/mux", json=body, headers={"serve_multiplexed_model_id": name})
            assert r.status_code == 200, r.text
            cold.append(time.perf_counter() - t1)
        procs, rss = replica_memory("mux")
        row = {"design": f"multiplexed (keeps {keep})", "collections": n}
        row.update(deploy_seconds=seconds, processes=procs, rss_mb=rss)
        row["cold_first_query_ms"] = 1e3 * float(np.median(cold))
        row["search"] = searches(http, ds, names[:n], True, n_search)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        serve.delete("mux")
    return rows


def run(quick: bool) -> dict:
    import httpx
    import ray

    from deployments.local import start_local

    ds = load(n_db=100_000, n_queries=2_000)
    app_counts = [1, 2] if quick else [1, 2, 4]
    mux_counts = [1, 2] if quick else [1, 2, 4, 16]
    keep = KEEP
    n_search = 200 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="vsearch-collections-") as root:
        names = build_collections(ds, root, max(mux_counts))
        url = start_local()
        http = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64))
        apps = per_app(ds, root, names, http, app_counts, n_search)
        mux = multiplexed(ds, root, names, http, mux_counts, keep, n_search)
        ray.shutdown()
    return {
        "command": command("bench.collections"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "per_collection_vectors": PER_COLLECTION,
        "rows": apps + mux,
    }


def markdown(r: dict) -> str:
    lines = [
        "# Collections: an application each, or one multiplexed deployment",
        "",
        f"`{r['command']}` on {r['machine']['cpus']} cores; each collection a one-shard Flat "
        f"index of {r['per_collection_vectors']:,} GloVe vectors. Searches: single queries "
        "over HTTP from 8 callers, spread round-robin over the collections. Processes and "
        "RSS: those of the N-th collection's own application (one more of each per "
        "collection) for the application rows; the whole deployment, all collections "
        "included, for the multiplexed rows. The multiplexed prototype searches in its one "
        "replica (no router hop, no writes, no log, no versions).",
        "",
        "| design | collections | deploy s | processes | replica RSS MB | cold first query ms "
        "| searches/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        s = row.get("search")
        cold = row.get("cold_first_query_ms")
        lines.append(
            f"| {row['design']} | {row['collections']} | {row['deploy_seconds']:.1f} | "
            f"{row['processes']} | {row['rss_mb']:,.0f} | "
            f"{'' if cold is None else f'{cold:.0f}'} | "
            + (
                f"{s['requests_per_s']:,.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} |"
                if s
                else "| | |"
            )
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parser(__doc__).parse_args()
    print(write(args.out, "collections", run(args.quick), markdown))


if __name__ == "__main__":
    main()
