"""Where the serving path spends its CPU: per-process CPU time under load, plus py-spy.

Needs py-spy in the environment (`pip install py-spy`) for the function breakdown.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 python -m bench.serving_profile

Same 4 GloVe shards (one replica holding all four); batches of 64 at concurrency 8 through
the handle and through HTTP (base64). CPU seconds of every Ray process are read from /proc
before and after; the in-process search of the same batches gives faiss's own CPU cost.
Writes bench/results/serving_profile.md and .json.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.glove import load
from bench.results import RESULTS, write
from bench.serving import drive
from deployments.http import encode_vectors_b64
from shards import ShardedIndex

TICK = os.sysconf("SC_CLK_TCK")


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) of Ray's processes and this one, by role."""
    out: dict[str, float] = collections.defaultdict(float)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
            fields = read(f"/proc/{pid}/stat").decode().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        if int(pid) == os.getpid():
            out["client (this process)"] += cpu
        elif "ServeReplica" in cmd and "router" in cmd:
            out["router replica"] += cpu
        elif "ServeReplica" in cmd:
            out["shard replica"] += cpu
        elif "ProxyActor" in cmd:
            out["HTTP proxy"] += cpu
        elif "ray" in cmd and (
            "raylet" in cmd
            or "gcs_server" in cmd
            or "Controller" in cmd
            or "dashboard" in cmd
            or "log_monitor" in cmd
            or "agent" in cmd
        ):
            out["Ray control (raylet, GCS, controller, agents)"] += cpu
    return out


def pyspy_top(pid: int, seconds: int, out: str) -> list[tuple[str, float]]:
    """The functions where ``pid`` spends its time (py-spy raw output, self time)."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    subprocess.run(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--format",
            "raw",
            "--output",
            out,
            "--nonblocking",
        ],
        capture_output=True,
        timeout=seconds + 60,
    )
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in read(out).decode().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.split(";")[-1].split(" (")[0]
        counts[leaf] += int(n)
        total += int(n)
    return [(f, c / max(1, total)) for f, c in counts.most_common(12)]


def main() -> int:
    import httpx
    import ray

    from deployments.client import VsearchClient
    from deployments.local import deploy, start_local

    ds = load()
    index_path = os.path.join(os.path.dirname(__file__), "cache", "idx", f"{ds.name}-auto-4")
    index = ShardedIndex.open(index_path)
    rng = np.random.default_rng(0)
    batches = [ds.xq[s : s + 64] for s in rng.integers(0, len(ds.xq) - 64, 240)]
    t0, c0 = time.perf_counter(), os.times()
    for xq in batches:
        index.search(xq, 10)
    c1 = os.times()
    inproc_cpu = (c1.user - c0.user) + (c1.system - c0.system)
    inproc = {"seconds": time.perf_counter() - t0, "cpu_s": inproc_cpu}

    base = start_local()
    deploy("bench", {"index_uri": index_path, "shard": {"shards_per_replica": 4}})
    client = VsearchClient("bench")
    http = httpx.Client(base_url=f"{base}/bench", timeout=60)

    def b64(xq):
        body = {"vectors_b64": encode_vectors_b64(xq), "k": 10}
        assert http.post("/v1/search", json=body).status_code == 200

    paths = {"handle": lambda xq: client.search(xq, 10), "http-b64": b64}
    result = {
        "command": "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 python -m bench.serving_profile",
        "requests": len(batches),
        "queries_per_request": 64,
        "concurrency": 8,
        "in_process": inproc,
        "paths": {},
    }
    for name, call in paths.items():
        call(batches[0])
        before = cpu_by_process()
        stats = drive(call, batches, 8)
        after = cpu_by_process()
        cpu = {k: after[k] - before.get(k, 0.0) for k in after}
        result["paths"][name] = {
            "wall_s": stats["seconds"],
            "cpu_s": cpu,
            "queries_per_s": stats["requests_per_s"] * 64,
        }
        print(name, json.dumps(result["paths"][name]), file=sys.stderr)
    # py-spy on the shard replica and the router while the handle path runs
    pids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = read(f"/proc/{pid}/cmdline").decode(errors="replace")
        except OSError:
            continue
        if "ServeReplica:bench:router" in cmd:
            pids["router"] = int(pid)
        elif "ServeReplica:bench:shards" in cmd:
            pids["shard"] = int(pid)
    import threading

    tops = {}
    for path_name in ("handle", "http-b64"):
        spies = [
            threading.Thread(
                target=lambda r=f"{r}, {path_name} path", p=p: tops.__setitem__(
                    r, pyspy_top(p, 8, f"/tmp/pyspy-{p}.txt")
                )
            )
            for r, p in pids.items()
        ]
        for t in spies:
            t.start()
        drive(paths[path_name], batches * 3, 8)
        for t in spies:
            t.join()
    result["pyspy_top_self"] = tops
    ray.shutdown()
    write(RESULTS, "serving_profile", result, markdown)
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    ip = r["in_process"]
    lines = [
        f"# Where serving spends its CPU: `{r['command']}`",
        "",
        f"{r['requests']} requests of {r['queries_per_request']} GloVe queries, concurrency "
        f"{r['concurrency']}, 4 shards in one replica. In process the same searches took "
        f"{ip['cpu_s']:.2f} CPU s ({ip['seconds']:.2f} s wall).",
        "",
        "| path | queries/s | "
        + " | ".join(sorted(next(iter(r["paths"].values()))["cpu_s"]))
        + " | total CPU s |",
        "| --- | --- |" + " --- |" * (len(next(iter(r["paths"].values()))["cpu_s"]) + 1),
    ]
    for name, p in r["paths"].items():
        cells = " | ".join(f"{p['cpu_s'].get(k, 0):.2f}" for k in sorted(p["cpu_s"]))
        lines.append(
            f"| {name} | {p['queries_per_s']:,.0f} | {cells} | {sum(p['cpu_s'].values()):.2f} |"
        )
    for role, top in r.get("pyspy_top_self", {}).items():
        lines += ["", f"py-spy, {role} (self time):", ""]
        lines += [f"- {share:.0%} {fn}" for fn, share in top]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
