"""Capacity model for 100M and 1B vectors, from the measured build and GPU figures.

    python -m bench.build_capacity

Reads ``bench/results/distributed_build.json`` (the 10M x 96 builds: per-core add rate,
training and tuning time, peak memory per worker, index bytes per vector) and
``bench/results/gpu.json`` (CAGRA throughput on an H200), and composes them. The model keeps
shards at the measured size (more shards, not larger ones), so the per-shard index choice,
the per-core rate and the memory per worker stay the ones measured; what is modelled, not
measured, is said in the table's notes.
"""

from __future__ import annotations

import json
import math
import os

from bench.capacity import measured_gpu
from bench.results import RESULTS, parser, write

NODE_CORES = 16
NODE_GB = 64
TARGETS = (100_000_000, 1_000_000_000)
CLUSTERS = (10, 50)


def model(build: dict, gpu: dict | None) -> dict:
    single, dist = build["single"], build["distributed"]
    n, shards = build["n"], build["shards"]
    per_shard = n // shards
    add_s = single["add_seconds"]
    per_core = n / add_s / build["cpus"]  # vectors added per second per core, one process
    dist_per_core = n / dist["add_seconds"] / build["nodes"]  # partition + add, per 1-CPU node
    worker_gb = max(dist["peak_worker_rss_gb"].values())
    tuner_gb = dist["peak_worker_rss_gb"].get("_ShardTuner", worker_gb)
    tune_s = single["total_seconds"] - single["train_seconds"] - add_s
    bytes_per_vector = single["index_bytes"] / n
    rows = []
    for target in TARGETS:
        k = math.ceil(target / per_shard)
        tasks_per_node = max(1, min(NODE_CORES, int(0.8 * NODE_GB / worker_gb)))
        # tuning holds every shard at once, one actor each: the cluster must fit them all
        min_nodes = math.ceil(k * tuner_gb / (0.8 * NODE_GB))
        hours: dict[int, float | None] = {}
        for nodes in CLUSTERS:
            rate = dist_per_core * nodes * tasks_per_node
            seconds = single["train_seconds"] + target / rate + tune_s
            hours[nodes] = seconds / 3600 if nodes >= min_nodes else None
        index_gb = target * bytes_per_vector / 2**30
        row = {
            "vectors": target,
            "shards": k,
            "index_gb": round(index_gb, 1),
            "tasks_per_node": tasks_per_node,
            "build_hours": {str(c): None if h is None else round(h, 2) for c, h in hours.items()},
            "min_build_nodes": min_nodes,
            "serve_cpu_nodes": math.ceil(index_gb / (0.7 * NODE_GB)),
        }
        if gpu and gpu.get("cagra_glove_qps_batch"):
            graph_gb = target * (build["d"] * 4 + 64 * 4) / 2**30  # CAGRA: vectors + graph
            per_gpu = gpu["cagra_glove_qps_batch"] * math.log2(390_000) / math.log2(target) * 0.5
            gpu_shards = math.ceil(graph_gb / (0.7 * 141))
            row["gpu_shards_h200"] = gpu_shards
            row["gpus_for_qps"] = {
                str(q): gpu_shards * max(1, math.ceil(q / per_gpu)) for q in (100_000, 1_000_000)
            }
        rows.append(row)
    return {
        "measured": {
            "source": build["command"],
            "per_shard": per_shard,
            "factory": single["factory"],
            "single_add_vectors_per_s_per_core": round(per_core),
            "distributed_vectors_per_s_per_node_cpu": round(dist_per_core),
            "peak_worker_gb": worker_gb,
            "train_s": single["train_seconds"],
            "tune_s": round(tune_s, 1),
            "index_bytes_per_vector": round(bytes_per_vector, 1),
        },
        "gpu": gpu,
        "rows": rows,
    }


def markdown(r: dict) -> str:
    m = r["measured"]
    lines = [
        "# Capacity for 100M and 1B vectors (`python -m bench.build_capacity`)",
        "",
        f"**Measured** (`{m['source']}`, 2 cores): shards of {m['per_shard']:,} vectors "
        f"as `{m['factory']}`; the single-process build adds "
        f"{m['single_add_vectors_per_s_per_core']:,} vectors/s per core; the distributed "
        f"build partitions and adds {m['distributed_vectors_per_s_per_node_cpu']:,} vectors/s "
        f"per one-CPU node; peak memory of a worker {m['peak_worker_gb']:.2f} GB; training "
        f"{m['train_s']:.0f} s (once, on a sample), tuning {m['tune_s']:.0f} s; the index "
        f"takes {m['index_bytes_per_vector']:.0f} bytes per vector.",
        "",
        f"**Modelled**: nodes of {NODE_CORES} cores and {NODE_GB} GB; shards kept at the measured "
        "size; the distributed per-CPU rate scaled linearly with CPUs (each shard is added by "
        "one independent task, and the input is read in parallel from object storage: its "
        "bandwidth is assumed not to bind); tasks per node bounded by cores and by 80% of memory "
        "over the measured worker peak. Serving: the index held in 70% of each node's memory "
        "(CPU), or as CAGRA (vectors + a 64-degree graph) in 70% of an H200's 141 GB, with the "
        "measured GloVe CAGRA rate scaled by log(390k)/log(n) at 50% busy (an assumption, as in "
        "`capacity.md`).",
        "",
        "Tuning loads every shard at once (one actor each, at the measured tuning-actor peak): "
        "the least build nodes are those that hold them all; a smaller cluster would have to "
        "tune on a sample of the shards (not built yet).",
        "",
        "| vectors | shards | index GB | least build nodes | build h, 10 nodes | build h, 50 nodes "
        "| CPU nodes to serve | H200s to hold (CAGRA) | H200s for 100k QPS | H200s for 1M QPS |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        g = row.get("gpus_for_qps", {})
        h = {c: "too few" if v is None else v for c, v in row["build_hours"].items()}
        lines.append(
            f"| {row['vectors']:,} | {row['shards']:,} | {row['index_gb']:,} | "
            f"{row['min_build_nodes']} | {h['10']} | {h['50']} | "
            f"{row['serve_cpu_nodes']} | {row.get('gpu_shards_h200', '-')} | "
            f"{g.get('100000', '-')} | {g.get('1000000', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parser(__doc__).parse_args()
    with open(os.path.join(RESULTS, "distributed_build.json")) as f:
        build = json.load(f)
    print(write(args.out, "build_capacity", model(build, measured_gpu()), markdown))


if __name__ == "__main__":
    main()
