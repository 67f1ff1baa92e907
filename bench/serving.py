"""Serving overhead: in-process `shards` vs the handle path vs HTTP (JSON, base64 and the
binary frames of `vsearch.frames`; `-decoded`: the answer decoded as the client does).

    python -m bench.serving [--quick]

Same 4 GloVe shards everywhere (the automatic index at its tuned defaults); single queries and
batches of 64 (``--sizes``), concurrency 1, 8 and 32 (``--concurrency``), requests merged
at the shard (``deployments.coalesce``: ``max_batch_size`` 16) and not (1), for each layout
(``--layouts``: shards per shard replica, or ``router``: the router replica holds all four,
``shard.in_router``). Every configuration is deployed at once and measured in turn, in
``--rounds`` interleaved rounds (the medians are reported). Writes
bench/results/serving.json and serving.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.core import build
from bench.glove import QUICK, load
from bench.results import parser, write
from deployments.http import encode_vectors_b64
from shards import ShardedIndex
from shards._faiss import faiss
from vsearch import _wire

PATHS = ("in-process", "handle", "http-json", "http-b64", "http-b64-decoded", "http-frame")


def drive(call, payloads: list, concurrency: int, faiss_threads: int | None = None) -> dict:
    """Run ``call(payload)`` over all payloads with ``concurrency`` threads; latency stats.

    ``faiss_threads``: OpenMP threads of each calling thread (OpenMP's setting is per thread).
    """
    lat = np.empty(len(payloads))

    def one(i: int) -> None:
        t0 = time.perf_counter()
        call(payloads[i])
        lat[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    init = None if faiss_threads is None else (lambda: faiss.omp_set_num_threads(faiss_threads))
    with ThreadPoolExecutor(concurrency, initializer=init) as pool:
        list(pool.map(one, range(len(payloads))))
    wall = time.perf_counter() - t0
    return {
        "requests": len(payloads),
        "seconds": wall,
        "requests_per_s": len(payloads) / wall,
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
    }


def paths(index: ShardedIndex, url: str, app: str = "bench"):
    import httpx

    from deployments.client import VsearchClient

    client = VsearchClient(app)
    http = httpx.Client(
        base_url=url,
        timeout=60,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )

    def http_json(xq):
        r = http.post("/v1/search", json={"vectors": xq.tolist(), "k": 10})
        assert r.status_code == 200, r.text

    def http_b64(xq):
        b64 = encode_vectors_b64(xq)
        r = http.post("/v1/search", json={"vectors_b64": b64, "k": 10})
        assert r.status_code == 200, r.text

    def http_frame(xq):  # both ways binary, decoded as the vsearch client does
        send = next(_wire.search_requests(xq, None, None, 10, None, None))
        r = http.post("/v1/search", **send)
        assert r.status_code == 200, r.text
        _wire.search_result(r.content)

    def http_b64_decoded(xq):  # the JSON answer decoded as the vsearch client does
        r = http.post("/v1/search", json={"vectors_b64": encode_vectors_b64(xq), "k": 10})
        assert r.status_code == 200, r.text
        _wire.search_result(r.json())

    return {
        "in-process": lambda xq: index.search(xq, 10),
        "handle": lambda xq: client.search(xq, 10),
        "http-json": http_json,
        "http-b64": http_b64,
        "http-b64-decoded": http_b64_decoded,
        "http-frame": http_frame,
    }


def run(
    quick: bool,
    workdir: str,
    only: list[str] | None = None,
    batches: tuple[str, ...] = ("16", "1"),
    layouts: tuple[str, ...] = ("1",),
    sizes: tuple[int, ...] = (1, 64),
    concurrency: tuple[int, ...] = (1, 8, 32),
    rounds: int = 1,
) -> dict:
    """Every (layout, batch) is deployed as its own app, all at once; each round measures
    every cell of every app and in process one after the other, so a noisy spell on a shared
    machine hits all of them alike. Rows: the median of the rounds."""
    import ray

    from deployments.local import deploy, start_local

    ds = load(**QUICK) if quick else load()
    index_path = os.path.join(workdir, f"{ds.name}-auto-4")
    if not os.path.exists(os.path.join(index_path, "CURRENT")):
        build(ds, index_path, "auto", 4)
    index = ShardedIndex.open(index_path)
    base = start_local()
    n_single = 50 if quick else 200
    n_batch = 8 if quick else 30
    targets: list[tuple[str | None, str | None, str, object]] = []
    for layout, batch in ((lay, b) for lay in layouts for b in batches):
        # max_batch_size[:batch_wait_timeout_s[:search_slots]]
        size, wait, slots = [*batch.split(":"), "", ""][:3]
        shard: dict = {"max_batch_size": int(size), "omp_threads": 1}
        if wait:
            shard["batch_wait_timeout_s"] = float(wait)
        if slots:
            shard["search_slots"] = int(slots)
        if layout == "router":
            shard["in_router"] = True
        else:
            shard.update(num_replicas=1, shards_per_replica=int(layout))
        app = f"bench-{layout}-{batch}".replace(":", "-w").replace(".", "_")
        deploy(app, {"index_uri": index_path, "shard": shard})
        calls = paths(index, f"{base}/{app}", app)
        if not targets:
            targets.append((None, None, "in-process", calls["in-process"]))
        targets += [
            (layout, batch, name, call)
            for name, call in calls.items()
            if name != "in-process" and (not only or name in only)
        ]
    if only and "in-process" not in only:
        targets = targets[1:]
    runs: dict[tuple, list[dict]] = {}
    for r in range(rounds):
        for nq, count in ((nq, n_single if nq == 1 else n_batch) for nq in sizes):
            for conc in concurrency:
                n = count * min(conc, 8)
                starts = np.random.default_rng(r).integers(0, len(ds.xq) - nq, n)
                payloads = [ds.xq[s : s + nq] for s in starts]
                for layout, batch, name, call in targets:
                    call(payloads[0])  # warm-up
                    # in process: all cores for one caller, one thread each for several
                    threads = (os.cpu_count() if conc == 1 else 1) if name == "in-process" else None
                    stats = drive(call, payloads, conc, threads)
                    key = (name, layout, batch, nq, conc)
                    runs.setdefault(key, []).append(stats)
                    print(json.dumps({"round": r, "key": key, **stats}), file=sys.stderr)
    rows = []
    for (name, layout, batch, nq, conc), got in runs.items():
        med = {f: float(np.median([g[f] for g in got])) for f in got[0] if f != "requests"}
        rows.append(
            {
                "path": name,
                "layout": layout,
                "shard_batch": batch,
                "nq": nq,
                "concurrency": conc,
                "requests": got[0]["requests"],
                "rounds": len(got),
                **med,
                "queries_per_s": med["requests_per_s"] * nq,
                "queries_per_s_rounds": [g["requests_per_s"] * nq for g in got],
            }
        )
    rows.sort(key=lambda x: (x["path"] != "in-process", str(x["layout"]), x["shard_batch"] or ""))
    ray.shutdown()
    flags = " ".join(sys.argv[1:])
    env = "".join(
        f"{k}={os.environ[k]} "
        for k in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")
        if os.environ.get(k)
    )
    return {
        "command": f"{env}python -m bench.serving {flags}".strip(),
        "layouts": list(layouts),
        "dataset": ds.name,
        "factory": index.manifest.factory,
        "params": index.manifest.default_params,
        "machine": {
            "cpus": os.cpu_count(),
            "in_process_faiss_threads": faiss.omp_get_max_threads(),
            "replica_omp_threads": 1,
            "python": platform.python_version(),
            "ray_env": {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE")},
        },
        "rows": rows,
    }


def markdown(r: dict) -> str:
    base = {(x["nq"], x["concurrency"]): x for x in r["rows"] if x["path"] == "in-process"}
    if not base:
        return json.dumps(r["rows"], indent=1)
    lines = [
        f"# Serving benchmark: `{r['command']}`",
        "",
        f"{r['dataset']}, 4 shards; layout: shards per shard replica, or `router` (the "
        "router replica holds all four: `shard.in_router`); "
        f"`{r['factory']}` at {r['params']}; "
        f"{r['machine']['cpus']} CPUs; in-process faiss threads "
        f"{r['machine']['in_process_faiss_threads']}, replicas 1 OpenMP thread each. "
        "merged: the shard's `max_batch_size` (the most requests that queue behind the "
        "searches running and are merged into one, `deployments.coalesce`; 1: none; "
        "`16:0.001`: a request held up to 1 ms for company while another search runs; "
        "`16::3`: 3 search slots, against the default of one per core). "
        f"Each figure: the median of {r['rows'][0].get('rounds', 1)} interleaved rounds "
        "(every round measures every row; each round's figure is in the .json).",
        "",
        "| path | layout | merged | queries/request | concurrency | queries/s | "
        "vs in-process | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["rows"]:
        ref = base[(x["nq"], x["concurrency"])]
        lines.append(
            f"| {x['path']} | {x.get('layout') or '-'} | {x['shard_batch'] or '-'} | "
            f"{x['nq']} | {x['concurrency']} | "
            f"{x['queries_per_s']:,.0f} | {x['queries_per_s'] / ref['queries_per_s']:.0%} | "
            f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--paths", help="comma-separated subset of " + ",".join(PATHS))
    ap.add_argument(
        "--batches",
        default="1,16",
        help="shard max_batch_size[:batch_wait_timeout_s[:search_slots]] values to compare "
        "(1: no merging)",
    )
    ap.add_argument("--sizes", default="1,64", help="queries per request, comma-separated")
    ap.add_argument("--concurrency", default="1,8,32", help="callers, comma-separated")
    ap.add_argument(
        "--layouts",
        default="1",
        help="comma-separated: shards per shard replica (1, 4), or router (shard.in_router)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians)")
    ap.add_argument("--name", default="serving", help="results file name (without extension)")
    args = ap.parse_args()
    result = run(
        args.quick,
        args.workdir,
        args.paths.split(",") if args.paths else None,
        tuple(args.batches.split(",")),
        tuple(args.layouts.split(",")),
        tuple(int(n) for n in args.sizes.split(",")),
        tuple(int(c) for c in args.concurrency.split(",")),
        args.rounds,
    )
    print(write(args.out, args.name, result, markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
