"""Ray Serve with one GPU shard replica: the served answers equal in-process GPU search, and
the handle and HTTP throughput against in-process on the same GPU.

    python -m bench.gpu_serving [--glove PATH.npy] [--out DIR]

Builds GloVe for the GPU (`--target gpu`: CAGRA built on the GPU, tuned on its CPU form),
serves it from one replica with ``num_gpus: 1`` on a local Ray, checks /v1/stats shows the
device, cuVS and GPU memory, then drives batches of 64 queries at concurrency 8.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.gpu import glove
from bench.results import parser, write
from bench.serving import drive
from deployments.http import encode_vectors_b64
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.cuda import gpu_count

DEADLINE_MS = 30_000  # throughput, not the deadline, is measured here


def run(args) -> dict:
    if args.num_gpus > 0 and gpu_count() == 0:
        raise SystemExit("bench.gpu_serving needs a CUDA GPU and faiss-gpu-cuvs (or --num-gpus 0)")
    import httpx
    import ray

    from deployments.client import VsearchClient
    from deployments.local import deploy, start_local

    data = glove(args.glove, 2_000)
    if data is None:
        raise SystemExit("no GloVe vectors: give --glove PATH.npy")
    xb, xq = data[0][: args.n], data[1]
    os.makedirs(args.workdir, exist_ok=True)
    src, root = os.path.join(args.workdir, "glove.npy"), os.path.join(args.workdir, "glove-gpu")
    np.save(src, xb)
    t0 = time.perf_counter()
    opts = BuildOptions(metric="ip", target="gpu", progress=False)
    manifest = build_index(VectorSource(src), root, opts)
    build_s = time.perf_counter() - t0
    index = ShardedIndex.open(root)
    where = index.place("cuda:0" if args.num_gpus > 0 else "cpu")
    I0 = index.search(xq, 10)[1]

    url = start_local(num_cpus=min(8, os.cpu_count() or 1), num_gpus=args.num_gpus) + "/gpu"
    t0 = time.perf_counter()
    deploy("gpu", {"index_uri": root, "shard": {"num_gpus": args.num_gpus, "omp_threads": 4}})
    deploy_s = time.perf_counter() - t0
    client = VsearchClient("gpu")
    Ih = client.search(xq[:1000], 10, deadline_ms=DEADLINE_MS).I
    http = httpx.Client(base_url=url, timeout=60)
    b64 = encode_vectors_b64(xq[:256])
    r = http.post("/v1/search", json={"vectors_b64": b64, "k": 10, "deadline_ms": DEADLINE_MS})
    r.raise_for_status()
    I256 = index.search(xq[:256], 10)[1]  # the same batch (CAGRA's kernels depend on its size)
    Ihttp = np.array(r.json()["ids"])
    stats = http.get("/v1/stats").json()

    payloads = [xq[s : s + 64] for s in np.random.default_rng(0).integers(0, len(xq) - 64, 160)]
    rows = []
    for name, call in (
        ("in-process", lambda x: index.search(x, 10)),
        ("handle", lambda x: client.search(x, 10, deadline_ms=DEADLINE_MS)),
        ("http-b64", lambda x: _http_b64(http, x)),
    ):
        call(payloads[0])
        rows.append({"path": name, **drive(call, payloads, 8)})
        rows[-1]["queries_per_s"] = rows[-1]["requests_per_s"] * 64
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ray.shutdown()
    return {
        "command": (
            (
                "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 "
                if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED")
                else ""
            )
            + "python -m bench.gpu_serving "
            + " ".join(sys.argv[1:])
        ),
        "factory": manifest.factory,
        "default_params": manifest.default_params,
        "build_s": build_s,
        "deploy_s": deploy_s,
        "placement": where.device,
        "num_gpus": args.num_gpus,
        "handle_equals_in_process": float((Ih == I0[:1000]).mean()),
        "http_equals_in_process": float((Ihttp == I256).mean()),
        "stats_shards": stats.get("shards"),
        "rows": rows,
    }


def _http_b64(http, xq) -> None:
    b64 = encode_vectors_b64(xq)
    r = http.post("/v1/search", json={"vectors_b64": b64, "k": 10, "deadline_ms": DEADLINE_MS})
    assert r.status_code == 200, r.text


def markdown(r: dict) -> str:
    base = r["rows"][0]["queries_per_s"]
    lines = [
        f"# GPU serving: `{r['command']}`",
        "",
        f"GloVe built for the GPU: `{r['factory']}` at {r['default_params']} (build "
        f"{r['build_s']:.0f} s); one shard replica with num_gpus {r['num_gpus']} "
        f"({r['placement']}). "
        f"Served ids equal to in-process: handle {r['handle_equals_in_process']:.1%}, "
        f"HTTP {r['http_equals_in_process']:.1%}.",
        "",
        f"/v1/stats shard entry: `{json.dumps((r['stats_shards'] or [{}])[0])}`",
        "",
        "| path | queries/request | concurrency | queries/s | vs in-process | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["rows"]:
        lines.append(
            f"| {x['path']} | 64 | 8 | {x['queries_per_s']:,.0f} | "
            f"{x['queries_per_s'] / base:.0%} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__, workdir="gpu-serving")
    ap.add_argument("--glove", help="GloVe .npy (default: the demo extra's package, if any)")
    ap.add_argument("--name", default="gpu_serving", help="results file name")
    ap.add_argument("--num-gpus", type=int, default=1, help="0: the same run on CPU (a dry run)")
    ap.add_argument("--n", type=int, help="index only the first N vectors")
    args = ap.parse_args()
    print(write(args.out, args.name, run(args), markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
