"""Capacity model beyond one machine: what is measured here, composed and extrapolated.

    python -m bench.capacity [--quick]

1. Fan-out tail (measured + modelled): single queries through the Serve handle of a 1-shard
   GloVe app are timed (router + one shard call); a query through the router waits for the
   slowest of S shard calls, so its latency is modelled as the maximum of S draws from those
   samples. Monte Carlo gives p50/p99 for S = 1..64.
2. GPU bounds (modelled from bandwidth, checked against `bench/results/gpu.json`): a Flat
   scan reads every vector once per batch; IVF reads nprobe/nlist of the codes. Queries per
   second cannot exceed bandwidth / bytes read, on an H100 (3.35 TB/s) or H200 (4.8 TB/s).
3. Sizing: shards from memory, GPUs from a target QPS and the measured per-GPU throughput.

Writes ``capacity.json``, ``capacity.md`` and ``capacity.png`` under ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from bench.results import RESULTS, line_plot, parser, write

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARDS = (1, 2, 4, 8, 16, 32, 64)
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
SIZES = (1_000_000, 10_000_000, 100_000_000)


def call_latencies(quick: bool, workdir: str) -> tuple[np.ndarray, str]:
    """Seconds per single-query search through the Serve handle of a 1-shard GloVe app
    (router + one shard call): the per-shard term of the fan-out model."""
    import ray

    from bench.core import build
    from bench.glove import QUICK, load
    from deployments.client import VsearchClient
    from deployments.local import deploy, start_local

    ds = load(**QUICK) if quick else load()
    path = os.path.join(workdir, f"{ds.name}-auto-1")
    if not os.path.exists(os.path.join(path, "CURRENT")):
        build(ds, path, "auto", 1)
    start_local()
    deploy("capacity", {"index_uri": path})
    client = VsearchClient("capacity")
    xq = ds.xq[: 300 if quick else 2000]
    client.search(xq[:1], 10)
    out = np.empty(len(xq))
    for i in range(len(xq)):
        t0 = time.perf_counter()
        client.search(xq[i : i + 1], 10)
        out[i] = time.perf_counter() - t0
    ray.shutdown()
    return out, ds.name


def fanout(samples: np.ndarray, trials: int = 100_000) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for s in SHARDS:
        slowest = rng.choice(samples, size=(trials, s)).max(axis=1)
        out.append(
            {
                "shards": s,
                "p50_ms": 1e3 * float(np.percentile(slowest, 50)),
                "p99_ms": 1e3 * float(np.percentile(slowest, 99)),
            }
        )
    return out


def gpu_bounds(measured: dict | None) -> list[dict]:
    rows = []
    for n in SIZES:
        for d, codes in ((96, 48), (768, 96)):
            flat_bytes = n * d * 4
            ivf_bytes = n * codes / 1024 * 32  # 8-bit PQ codes, nprobe 32 of 1,024 lists
            for gpu, bw in BANDWIDTH.items():
                rows.append(
                    {
                        "n": n,
                        "d": d,
                        "gpu": gpu,
                        "flat_gb": flat_bytes / 1e9,
                        "flat_batch1_qps_bound": bw / flat_bytes,
                        "ivfpq_batch1_qps_bound": bw / ivf_bytes,
                    }
                )
    return rows


def measured_gpu() -> dict | None:
    path = os.path.join(RESULTS, "gpu.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        r = json.load(f)
    flat = [
        x
        for x in r["rows"]
        if x["index"] == "Flat" and x["device"] != "cpu" and x["dataset"].startswith("synthetic")
    ]
    cagra = [
        x
        for x in r["rows"]
        if x["index"] == "CAGRA64" and x["device"] != "cpu" and x["dataset"].startswith("glove")
    ]
    best = max(
        (x for x in cagra if x["recall"] >= 0.95), key=lambda x: x["qps_batch"], default=None
    )
    return {
        "gpu": r["machine"]["gpu"],
        "copy_bandwidth": r["machine"]["copy_bandwidth_bytes_per_s"],
        "flat_1m_batch1_qps": flat[0]["qps_1"] if flat else None,
        "flat_1m_fraction": flat[0].get("fraction_of_bandwidth_1") if flat else None,
        "cagra_glove_qps_batch": best["qps_batch"] if best else None,
        "cagra_glove_recall": best["recall"] if best else None,
    }


def sizing(measured: dict | None) -> list[dict]:
    """GPUs for a target QPS on a 100M x 96 index: shards by memory, replicas by throughput."""
    if not measured or not measured["cagra_glove_qps_batch"]:
        return []
    # graph search visits about log(n) nodes: scale the measured 390k rate by log ratio
    per_gpu = measured["cagra_glove_qps_batch"] * np.log2(390_000) / np.log2(1e8) * 0.5
    bytes_per_vector = 96 * 4 + 64 * 4  # CAGRA: vectors + graph
    shards = int(np.ceil(1e8 * bytes_per_vector / (0.7 * 141e9)))
    rows = []
    for target in (10_000, 100_000, 1_000_000):
        replicas = max(1, int(np.ceil(target / per_gpu)))
        rows.append(
            {
                "target_qps": target,
                "shards": shards,
                "replicas": replicas,
                "gpus": shards * replicas,
            }
        )
    return rows


def run(args) -> dict:
    samples, dataset = call_latencies(args.quick, args.workdir)
    measured = measured_gpu()
    return {
        "command": "python -m bench.capacity " + " ".join(sys.argv[1:]),
        "dataset": dataset,
        "calls": len(samples),
        "call_p50_ms": 1e3 * float(np.percentile(samples, 50)),
        "call_p99_ms": 1e3 * float(np.percentile(samples, 99)),
        "fanout": fanout(samples),
        "gpu_measured": measured,
        "gpu_bounds": gpu_bounds(measured),
        "sizing": sizing(measured),
    }


def markdown(r: dict) -> str:
    m = r["gpu_measured"] or {}
    lines = [
        f"# Capacity model: `{r['command']}`",
        "",
        f"**Measured**: {r['calls']:,} single queries through the Serve handle of a 1-shard "
        f"{r['dataset']} app (router + one shard call, tuned defaults, 2 cores): "
        f"{r['call_p50_ms']:.2f} ms p50 / {r['call_p99_ms']:.2f} ms p99. **Modelled**: with S "
        "shards the router waits for the slowest of S such calls (independent draws from the "
        "measured samples; on one machine the S calls would also compete for its cores, so "
        "this is the tail of a cluster with a shard per node):",
        "",
        "| shards S | p50 ms | p99 ms |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {x['shards']} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} |" for x in r["fanout"]]
    lines += [
        "",
        "![fan-out tail](capacity.png)",
        "",
        "**GPU bounds (modelled)**: queries per second at batch 1 cannot exceed bandwidth / "
        "bytes read per query (Flat: every vector; IVF-PQ: 8-bit codes of 32 of 1,024 lists).",
    ]
    if m:
        lines.append(
            f"Measured on an {m['gpu']}: copy bandwidth {m['copy_bandwidth'] / 1e12:.2f} TB/s; a "
            f"Flat scan of 1M x 96 at batch 1 ran {m['flat_1m_batch1_qps']:,.0f} QPS = "
            f"{(m['flat_1m_fraction'] or 0):.0%} of that bound (top-k selection and launches "
            "dominate one query), so the bound is a ceiling, not a forecast; batches share one "
            "scan among many queries and become compute-bound."
        )
    lines += [
        "",
        "| vectors | d | GPU | Flat GB | Flat QPS bound (batch 1) | IVF-PQ QPS bound (batch 1) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {x['n']:,} | {x['d']} | {x['gpu']} | {x['flat_gb']:,.1f} | "
        f"{x['flat_batch1_qps_bound']:,.0f} | {x['ivfpq_batch1_qps_bound']:,.0f} |"
        for x in r["gpu_bounds"]
    ]
    if r["sizing"]:
        lines += [
            "",
            "**Sizing (modelled)** for 100M x 96 vectors as CAGRA on H200s: shards so that each "
            "fits 70% of 141 GB; per-GPU throughput from the measured GloVe CAGRA rate at "
            f"recall {m['cagra_glove_recall']:.3f} ({m['cagra_glove_qps_batch']:,.0f} QPS at "
            "batch 1,024 over 390k vectors), scaled by log(390k)/log(100M) (a graph search "
            "visits about log n nodes: an assumption, not a measurement), run at 50% busy:",
            "",
            "| target QPS | shards | replicas per shard | GPUs |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {x['target_qps']:,} | {x['shards']} | {x['replicas']} | {x['gpus']} |"
            for x in r["sizing"]
        ]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: str) -> None:
    s = [x["shards"] for x in r["fanout"]]
    series = {q: [x[f"{q}_ms"] for x in r["fanout"]] for q in ("p50", "p99")}
    line_plot(path, s, series, "shards per query (fan-out)", "ms (modelled from measured calls)")


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--name", default="capacity")
    args = ap.parse_args()
    result = run(args)
    print(write(args.out, args.name, result, markdown))
    plot(result, os.path.join(args.out, f"{args.name}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
