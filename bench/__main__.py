"""``python -m bench [--quick] [--out DIR]``: the CPU benchmarks in order, one entry point.

core (Flat vs the automatic choice), compare (vsearch against FAISS, hnswlib, usearch, Qdrant
local, Milvus Lite, LanceDB: peers not installed are reported, see `make bench-peers`),
scaling (shard count), cold_start (process start to first answer) and capacity (the
model). Each writes its results under ``--out``
(bench/results by default). The GPU benchmarks run on a GPU machine: scripts/gpu-check.
"""

from __future__ import annotations

import os
import subprocess
import sys

STEPS = ("bench.core", "bench.compare", "bench.scaling", "bench.cold_start", "bench.capacity")


def main() -> int:
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    env = {**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    for module in STEPS:
        print(f"== python -m {module} {' '.join(args)}", flush=True)
        rc = subprocess.call([sys.executable, "-m", module, *args], env=env)
        if rc:
            print(f"{module} failed with status {rc}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
