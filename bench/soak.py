"""Soak: a bounded HTTP load run against a local service, with resident memory over time.

    python -m bench.soak [--seconds 60] [--concurrency 16]   (make soak)

Builds a 4-shard index of 80,000 synthetic clustered vectors (d=32) if missing, serves it on a
local Ray, and sends single queries (k=10) over loopback HTTP from ``--concurrency`` threads for
``--seconds``. Reports requests, errors, p50/p99 latency, and the resident memory (RSS) of the
Serve processes (shard replicas, router, proxy, controller) sampled every 5 s, with the slope
of a line fitted through the samples after warm-up (a leak shows as a steady climb).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.gpu import synthetic
from bench.results import parser, write

ROLES = {"shard": "ServeReplica", "proxy": "ProxyActor", "controller": "ServeController"}


def serve_rss() -> dict[str, float]:
    """MiB of resident memory per role, summed over this machine's Serve processes."""
    import psutil

    out = dict.fromkeys([*ROLES, "router"], 0.0)
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if not cmd.startswith("ray::") or proc.info["memory_info"] is None:
            continue
        mib = proc.info["memory_info"].rss / 2**20
        if "ServeReplica" in cmd and ":router" in cmd:
            out["router"] += mib
        else:
            for role, marker in ROLES.items():
                if marker in cmd:
                    out[role] += mib
    return out


def run(args) -> dict:
    import httpx
    import ray

    from deployments.local import deploy, start_local
    from shards import BuildOptions, VectorSource, build_index

    root = os.path.join(args.workdir, "soak-index")
    if not os.path.exists(os.path.join(root, "CURRENT")):
        os.makedirs(args.workdir, exist_ok=True)
        xb, _ = synthetic(80_000, 32, 0)
        np.save(os.path.join(args.workdir, "soak.npy"), xb)
        opts = BuildOptions(num_shards=4, index="Flat", progress=False)
        build_index(VectorSource(os.path.join(args.workdir, "soak.npy")), root, opts)
    url = start_local() + "/soak/v1/search"
    deploy("soak", {"index_uri": root})
    queries = synthetic(1, 32, 1000, seed=7)[1]
    lat: list[float] = []
    codes: dict[int, int] = {}
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                body = {"vectors": [queries[rng.integers(len(queries))].tolist()], "k": 10}
                t0 = time.perf_counter()
                try:
                    status = http.post(url, json=body).status_code
                except httpx.HTTPError as exc:
                    status = 0
                    errors.append(repr(exc)[:200])
                with lock:
                    lat.append(time.perf_counter() - t0)
                    codes[status] = codes.get(status, 0) + 1

    samples = [(0.0, serve_rss())]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.concurrency)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - t_start < args.seconds:
        time.sleep(min(5.0, args.seconds - (time.monotonic() - t_start)))
        samples.append((time.monotonic() - t_start, serve_rss()))
        print(f"{samples[-1][0]:5.0f} s  {len(lat):,} requests", file=sys.stderr)
    stop.set()
    for t in threads:
        t.join()
    ray.shutdown()
    total = [sum(s.values()) for _, s in samples]
    times = [t for t, _ in samples]
    warm = [i for i, t in enumerate(times) if t >= min(10.0, args.seconds / 3)]
    slope = float(np.polyfit(np.array(times)[warm], np.array(total)[warm], 1)[0]) * 60
    ok = codes.get(200, 0)
    return {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "requests": len(lat),
        "ok": ok,
        "errors": len(lat) - ok,
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "error_samples": errors[:3],
        "requests_per_s": len(lat) / args.seconds,
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
        "rss_mib": [{"t": t, **s} for t, s in samples],
        "rss_start_mib": total[0],
        "rss_end_mib": total[-1],
        "rss_slope_mib_per_min": slope,
        "cpus": os.cpu_count(),
    }


def markdown(r: dict) -> str:
    lines = [
        f"# Soak: `{r['command']}`",
        "",
        f"{r['seconds']} s of single queries (k=10) over loopback HTTP at concurrency "
        f"{r['concurrency']}, 4 Flat shards of 80,000 x 32 synthetic vectors, {r['cpus']} CPUs.",
        "",
        "| requests | errors | requests/s | p50 ms | p99 ms | Serve RSS start MiB | end MiB | "
        "slope after warm-up MiB/min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {r['requests']:,} | {r['errors']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['rss_start_mib']:,.0f} | {r['rss_end_mib']:,.0f} | "
        f"{r['rss_slope_mib_per_min']:+.1f} |",
        "",
        "RSS samples (MiB):",
        "",
        "| t (s) | shards | router | proxy | controller |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in r["rss_mib"]:
        lines.append(
            f"| {s['t']:.0f} | {s['shard']:,.0f} | {s['router']:,.0f} | {s['proxy']:,.0f} | "
            f"{s['controller']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__, workdir="soak")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--name", default="soak", help="results file name (without extension)")
    args = ap.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 15.0)
    result = run(args)
    print(write(args.out, args.name, result, markdown))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
