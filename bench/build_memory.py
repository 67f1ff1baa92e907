"""Memory of the single-process build: peak, and what stays resident once it returned.

    python -m bench.build_memory [--input X.npy ...] [--shards 4]

Each build runs in a fresh process that holds nothing of the result afterwards (the index
is written and dropped), so whatever stays resident is the build's leftover. Three ways, in
the same run: glibc's defaults; ``MALLOC_ARENA_MAX=2`` (fewer per-thread malloc arenas); and
the build as it ships, which calls ``malloc_trim`` between the tuning sweep's searches
and when it returns (``shards.memory``).
Memory is the process's anonymous resident memory (``RssAnon``): the input ``.npy`` is
memory-mapped, and its file pages, which the kernel can drop at any time, are not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from bench.results import CACHE, parser, write

MB = 2**20
CHILD = """
import gc, json, os, resource, sys
from shards import BuildOptions, VectorSource, build_index
from shards import memory

def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

path, out, shards, trim = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
if not trim:
    memory.release = lambda collect=True: None  # the build as it was: never trimmed
before = anon()
build_index(VectorSource(path), out, BuildOptions(num_shards=shards, progress=False))
gc.collect()
after = anon()
print("RESULT " + json.dumps({
    "before_mb": before / 2**20,
    "after_mb": after / 2**20,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""
WAYS = {
    "glibc defaults, no trim": ({}, False),
    "MALLOC_ARENA_MAX=2, no trim": ({"MALLOC_ARENA_MAX": "2"}, False),
    "as shipped (malloc_trim while tuning and on return)": ({}, True),
}


def measure(path: str, shards: int) -> list[dict]:
    rows = []
    for way, (env_extra, trim) in WAYS.items():
        with tempfile.TemporaryDirectory() as out:
            env = {**os.environ, **env_extra, "VSEARCH_PROGRESS": "0"}
            cmd = [sys.executable, "-c", CHILD, path, out, str(shards), "1" if trim else "0"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        got = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
        retained = got["after_mb"] - got["before_mb"]
        rounded = {k: round(v) for k, v in got.items()}
        rows.append({"way": way, **rounded, "retained_mb": round(retained)})
    return rows


def main() -> None:
    ap = parser(__doc__, "build_memory")
    ap.add_argument("--input", nargs="*", default=None)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    inputs = args.input or [
        os.path.join(CACHE, "minilm-40000-10000-db.npy"),
        os.path.join(CACHE, "glove-390000-10000-db.npy"),
    ]
    result = {
        "command": "python -m bench.build_memory " + " ".join(sys.argv[1:]),
        "shards": args.shards,
        "inputs": {},
    }
    for path in inputs:
        import numpy as np

        x = np.load(path, mmap_mode="r")
        name = f"{os.path.basename(path)} ({x.shape[0]:,} x {x.shape[1]}, {x.nbytes / MB:,.0f} MB)"
        result["inputs"][name] = measure(path, args.shards)
    print(write(args.out, "build_memory", result, markdown))


def markdown(r: dict) -> str:
    lines = [
        "# Single-process build memory",
        "",
        f"`{r['command']}`: {r['shards']} shards, automatic index; each build in a fresh "
        "process that drops the result; anonymous resident memory (the memory-mapped input "
        "is not counted).",
        "",
        "| input | allocator | before MB | peak RSS MB | after MB | retained MB |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in r["inputs"].items():
        for row in rows:
            lines.append(
                f"| {name} | {row['way']} | {row['before_mb']} | {row['peak_mb']} | "
                f"{row['after_mb']} | {row['retained_mb']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
