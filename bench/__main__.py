"""``python -m bench [--quick] [--out DIR]``: the CPU benchmarks in order, one entry point.

core (Flat vs the automatic choice), compare (vsearch against FAISS, hnswlib, usearch, Qdrant
local, Milvus Lite, LanceDB: peers not installed are reported, see `make bench-peers`),
scaling (shard count), cold_start (process start to first answer) and capacity (the
model). Each writes its results under ``--out`` (bench/results by default). ``--quick``: small
data, vsearch against FAISS only, one cold start each (the CI smoke
test). The GPU benchmarks run on a GPU machine: scripts/gpu-check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

STEPS = ("bench.core", "bench.compare", "bench.scaling", "bench.cold_start", "bench.capacity")
# --quick is a smoke run (CI): vsearch's paths against FAISS only, one cold start each
QUICK = {"bench.compare": ["--systems", "faiss"], "bench.cold_start": ["--runs", "1"]}


def main() -> int:
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    env = {**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    for module in STEPS:
        extra = QUICK.get(module, []) if "--quick" in args else []
        print(f"== python -m {module} {' '.join(args + extra)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", module, *args, *extra], env=env)
        if rc:
            print(f"{module} failed with status {rc}", file=sys.stderr)
            return rc
        print(f"== {module}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
