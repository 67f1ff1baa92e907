"""Where the serving path spends its CPU: per-process CPU time under load, plus py-spy.

Needs py-spy in the environment (`pip install py-spy`) for the function breakdown.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 python -m bench.serving_profile

Same 4 GloVe shards (one replica holding all four); requests of 1, 64 and 256 queries
(``--batches``) at concurrency 8 through the handle and through HTTP (base64 JSON, binary
frames). CPU seconds of every Ray process are read from /proc before and after; the
in-process search of the same requests gives faiss's and the library's own CPU cost.
``--pyspy``: the replicas' top functions too. Writes bench/results/serving_profile.md, .json.
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
        elif "ProxyActor" in cmd or "haproxy" in cmd:
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


REQUESTS = {1: 1000, 64: 240, 256: 60}  # requests per batch size: ~15k queries each


def main() -> int:
    import argparse

    import httpx
    import ray

    from deployments.client import VsearchClient
    from deployments.local import deploy, start_local
    from vsearch import _wire

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="1,64,256", help="queries per request, comma-separated")
    ap.add_argument("--pyspy", action="store_true", help="py-spy the replicas (batches of 64)")
    ap.add_argument(
        "--in-router", action="store_true", help="the router replica holds the shards itself"
    )
    ap.add_argument("--name", default="serving_profile", help="results file name")
    args = ap.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]
    ds = load()
    index_path = os.path.join(os.path.dirname(__file__), "cache", "idx", f"{ds.name}-auto-4")
    if not os.path.exists(os.path.join(index_path, "CURRENT")):
        from bench.core import build

        build(ds, index_path, "auto", 4)
    index = ShardedIndex.open(index_path)
    rng = np.random.default_rng(0)
    work = {nq: [ds.xq[s : s + nq] for s in rng.integers(0, len(ds.xq) - nq, REQUESTS.get(nq, 240))]
            for nq in sizes}  # fmt: skip

    base = start_local()
    shard = {"in_router": True} if args.in_router else {"shards_per_replica": 4}
    deploy("bench", {"index_uri": index_path, "shard": shard})
    client = VsearchClient("bench")
    http = httpx.Client(base_url=f"{base}/bench", timeout=60)

    def b64(xq):
        body = {"vectors_b64": encode_vectors_b64(xq), "k": 10}
        assert http.post("/v1/search", json=body).status_code == 200

    def frame(xq):
        r = http.post("/v1/search", **next(_wire.search_requests(xq, None, None, 10, None, None)))
        assert r.status_code == 200
        _wire.search_result(r.content)

    paths = {"handle": lambda xq: client.search(xq, 10), "http-b64": b64, "http-frame": frame}
    cmd = "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 python -m bench.serving_profile"
    result = {
        "command": " ".join([cmd, *sys.argv[1:]]),
        "http_front": "HAProxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy",
        "concurrency": 8,
        "layout": "in the router replica" if args.in_router else "in one shard replica",
        "rows": [],
    }
    for nq in sizes:
        batches = work[nq]
        t0, c0 = time.perf_counter(), os.times()
        for xq in batches:
            index.search(xq, 10)
        c1 = os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        row = {"nq": nq, "requests": len(batches), "path": "in-process"}
        row |= {"wall_s": time.perf_counter() - t0, "cpu_s": {"faiss + library": cpu}}
        row["queries_per_s"] = nq * len(batches) / row["wall_s"]
        result["rows"].append(row)
        for name, call in paths.items():
            call(batches[0])
            before = cpu_by_process()
            stats = drive(call, batches, 8)
            after = cpu_by_process()
            row = {"nq": nq, "requests": len(batches), "path": name, "wall_s": stats["seconds"]}
            row["cpu_s"] = {k: after[k] - before.get(k, 0.0) for k in after}
            row["queries_per_s"] = stats["requests_per_s"] * nq
            result["rows"].append(row)
            print(json.dumps(row), file=sys.stderr)
    if args.pyspy:
        result["pyspy_top_self"] = profile_replicas(paths, work.get(64) or work[sizes[0]])
    ray.shutdown()
    write(RESULTS, args.name, result, markdown)
    print(markdown(result))
    return 0


def profile_replicas(paths: dict, batches: list) -> dict:
    """py-spy on the shard replica and the router while the handle and HTTP paths run."""
    import threading

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
    tops: dict = {}
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
    return tops


def markdown(r: dict) -> str:
    roles = sorted({k for row in r["rows"] if row["path"] != "in-process" for k in row["cpu_s"]})
    lines = [
        f"# Where serving spends its CPU: `{r['command']}`",
        "",
        f"GloVe 390k, 4 shards {r.get('layout', 'in one shard replica')}, concurrency "
        f"{r['concurrency']} (in process: one "
        f"caller), HTTP front: {r['http_front']}. CPU milliseconds per request by process, read "
        "from /proc before and after each run; `vs in-process`: total CPU per request over the "
        "in-process search's.",
        "",
        "| queries/request | path | queries/s | "
        + " | ".join(roles)
        + " | total CPU ms/request | vs in-process |",
        "| --- | --- | --- |" + " --- |" * (len(roles) + 2),
    ]
    base = {row["nq"]: row for row in r["rows"] if row["path"] == "in-process"}
    for row in r["rows"]:
        per = {k: 1e3 * v / row["requests"] for k, v in row["cpu_s"].items()}
        total = sum(per.values())
        ref = base.get(row["nq"])
        ref_ms = None if ref is None else 1e3 * sum(ref["cpu_s"].values()) / ref["requests"]
        cells = " | ".join(f"{per.get(k, 0):.2f}" for k in roles)
        if row["path"] == "in-process":
            cells = " | ".join("-" for _ in roles)
        ratio = f"{total / ref_ms:.1f}x" if ref_ms else "-"
        lines.append(
            f"| {row['nq']} | {row['path']} | {row['queries_per_s']:,.0f} | {cells} | "
            f"{total:.2f} | {ratio} |"
        )
    for role, top in r.get("pyspy_top_self", {}).items():
        lines += ["", f"py-spy, {role} (self time):", ""]
        lines += [f"- {share:.0%} {fn}" for fn, share in top]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
