"""The online recall monitor's cost and accuracy: the same searches against the same index
served with the monitor off, at its default rate, and at a high rate with no budget, in
rounds that alternate between them in one run.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 python -m bench.recall_monitor

GloVe (390k x 50, cosine, 4 shards, the automatic index) on a local Ray, the 4 shards in
one replica, four applications over the same files: ``off`` (sample_rate 0), ``off-again``
(the same: its ratio to ``off`` is the noise floor of the comparison), ``default`` (the
shipped options: 0.5% of query rows, exact re-runs within 2% of the shards' search time)
and ``unbounded`` (5% of rows, no budget to speak of: what sampling costs without one).
Batches of 256 and single queries from 8 callers over HTTP (base64 vectors); each round
measures every app once, in a rotating order; the cost is the median over rounds of the
per-round QPS ratio to ``off``. The monitor's measured recall is compared with the true
recall of the same answers (brute force). Writes bench/results/recall_monitor.json and .md.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

from bench.core import build
from bench.glove import QUICK, load
from bench.results import command, parser, write
from bench.serving import drive
from deployments.http import encode_vectors_b64

APPS = {
    "off": {"sample_rate": 0.0},
    "off-again": {"sample_rate": 0.0},  # the same as off: the noise between two apps
    "default": {},
    "unbounded": {"sample_rate": 0.05, "cpu_share": 1.0},
}
SHAPES = {"batch256": 256, "single": 1}


def _requests(ds, rows: int, n: int, offset: int) -> list[tuple[int, np.ndarray]]:
    """``n`` requests of ``rows`` held-out queries: (first row, vectors)."""
    out = []
    for i in range(n):
        start = (offset + i * rows) % (len(ds.xq) - rows)
        out.append((start, ds.xq[start : start + rows]))
    return out


def _app_pids(app: str) -> list[int]:
    """Process ids of the application's replicas (router, shard replica, coordinator): Ray
    titles an actor's process ``ray::ServeReplica:APP:DEPLOYMENT``."""
    want = f"ServeReplica:monitor-{app}:".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if want in f.read():
                        pids.append(int(entry))
            except OSError:
                continue  # the process ended
    return pids


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _machine_cpu_s() -> float:
    """CPU seconds every core of the machine has been busy (/proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def plumbing(ds, root: str, n: int = 2000) -> dict:
    """In process, microseconds of the monitor's per-request work outside the exact search:
    the router's ``pick`` (every request), a shard's ``offer`` (a sampled request: checks,
    copies, queueing), and the coordinator's join of one part with its checks."""
    import asyncio

    from deployments.config import RecallOptions
    from deployments.monitor import RecallMonitor
    from deployments.sampler import ShardSampler, pick
    from shards import ShardedIndex
    from shards.query import Query, Sample

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n):
        pick(rng, 256, 0.005, 0.95)
    pick_us = 1e6 * (time.perf_counter() - t0) / n
    index = ShardedIndex.open(root, log=False)
    xq = ds.xq[:256]
    q = Query(10, index.resolve(), sample=Sample(1, (0,), 0.95))
    states = index.applied.states()
    D, I = index.search_query(xq, q)

    async def offers() -> float:
        s = ShardSampler(0, "0-3", 1.0)
        t = time.perf_counter()
        for _ in range(n):
            s.offer(index, xq, q, D, I, states, {})
            s.jobs.clear()  # the exact search is measured in the service run
        if s._worker is not None:
            s._worker.cancel()
        return 1e6 * (time.perf_counter() - t) / n

    offer_us = asyncio.run(offers())
    De, Ie = D[:1], I[:1]
    monitor = RecallMonitor(RecallOptions(), 1, True)
    from shards.recall import UNFILTERED, Part

    parts = [
        Part(i, 0, "0-3", "v", 0, UNFILTERED, 0.95, 10, De, Ie, De, Ie, xq[:1]) for i in range(n)
    ]
    t0 = time.perf_counter()
    for i in range(0, n, 50):  # a report carries many parts; checks once per report
        monitor.add(parts[i : i + 50])
        monitor.check("v", 0.95)
    join_us = 1e6 * (time.perf_counter() - t0) / n
    return {"pick_us_per_request": pick_us, "offer_us": offer_us, "join_us_per_part": join_us}


def _true_recall(ds, answers: list[tuple[int, np.ndarray]]) -> float:
    hits = []
    for start, ids in answers:
        gt = ds.gt[start : start + len(ids), :10]
        hits.append((ids[:, :, None] == gt[:, None, :]).any(axis=2).mean(axis=1))
    return float(np.concatenate(hits).mean())


def run(quick: bool, workdir: str) -> dict:
    import httpx

    from deployments.local import deploy, start_local

    ds = load(**QUICK) if quick else load()
    root = os.path.join(workdir, f"{ds.name}-auto-4")
    if not os.path.exists(os.path.join(root, "CURRENT")):
        build(ds, root, "auto", 4)
    extra = plumbing(ds, root)
    print(extra, file=sys.stderr)
    url = start_local()
    for name, recall in APPS.items():
        shard = {"num_replicas": 1, "omp_threads": 1, "shards_per_replica": 4}
        deploy(f"monitor-{name}", {"index_uri": root, "shard": shard, "recall": recall})
    pids = {a: _app_pids(a) for a in APPS}
    assert all(len(p) == 3 for p in pids.values()), pids  # router, shard, coordinator
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    http = httpx.Client(base_url=url, timeout=60, limits=limits)
    rounds = 2 if quick else 16
    counts = {"batch256": 40 if quick else 60, "single": 300 if quick else 600}
    qps: dict[str, dict[str, list[float]]] = {a: {s: [] for s in SHAPES} for a in APPS}
    p50: dict[str, dict[str, list[float]]] = {a: {s: [] for s in SHAPES} for a in APPS}
    answers: dict[str, list] = {a: [] for a in APPS}
    # CPU seconds per query: the app's own processes, and the whole machine (client, HAProxy)
    app_cpu: dict[str, dict[str, list[float]]] = {a: {s: [] for s in SHAPES} for a in APPS}
    all_cpu: dict[str, dict[str, list[float]]] = {a: {s: [] for s in SHAPES} for a in APPS}
    t_start = time.time()
    for r in range(rounds):
        order = list(APPS)[r % len(APPS) :] + list(APPS)[: r % len(APPS)]
        for shape, rows in SHAPES.items():
            for app in order:
                payloads = _requests(ds, rows, counts[shape], offset=r * 997)

                def search(payload, app=app):
                    start, xq = payload
                    body = {"vectors_b64": encode_vectors_b64(xq), "k": 10}
                    res = http.post(f"/monitor-{app}/v1/search", json=body)
                    assert res.status_code == 200, res.text
                    answers[app].append((start, np.asarray(res.json()["ids"])))  # every app

                search(payloads[0])
                time.sleep(1.0)  # the previous app's background work ends first
                cpu0, machine0 = _cpu_s(pids[app]), _machine_cpu_s()
                got = drive(search, payloads, 8)
                queries = len(payloads) * rows
                app_cpu[app][shape].append((_cpu_s(pids[app]) - cpu0) / queries)
                all_cpu[app][shape].append((_machine_cpu_s() - machine0) / queries)
                qps[app][shape].append(got["requests_per_s"] * rows)
                p50[app][shape].append(got["p50_ms"])
        print(f"round {r + 1}/{rounds}: {time.time() - t_start:.0f} s", file=sys.stderr)
    time.sleep(8)  # the last parts reach the coordinator with the next health checks
    stats = {a: http.get(f"/monitor-{a}/v1/stats").json() for a in APPS}
    cost = {}
    for app in APPS:
        cost[app] = {
            shape: {
                "qps_median": float(np.median(qps[app][shape])),
                "p50_ms_median": float(np.median(p50[app][shape])),
                "ratio_to_off": float(
                    np.median(np.array(qps[app][shape]) / np.array(qps["off"][shape]))
                ),
            }
            for shape in SHAPES
        }
    for app in APPS:  # the CPU cost of each query against off's, in the same rounds
        for shape in SHAPES:
            mine, base = np.array(app_cpu[app][shape]), np.array(app_cpu["off"][shape])
            machine = np.array(all_cpu["off"][shape])
            cost[app][shape].update(
                app_cpu_us_per_query=1e6 * float(np.median(mine)),
                machine_cpu_us_per_query=1e6 * float(np.median(all_cpu[app][shape])),
                # extra CPU of this app's processes per query, as a share of everything a
                # query costs the machine with the monitor off: the QPS lost when CPU-bound
                cpu_cost=float(np.median((mine - base) / machine)),
            )
    seconds = time.time() - t_start
    monitor = {
        a: {
            key: stats[a]["recall"].get(key)
            for key in ("recall", "samples", "measured_total", "skipped", "exact_cpu_seconds")
        }
        for a in APPS
    }
    for a in APPS:  # exact re-runs as a share of the machine over the whole run
        cpu = monitor[a]["exact_cpu_seconds"] or 0.0
        monitor[a]["exact_cpu_share"] = cpu / (seconds * (os.cpu_count() or 1))
    return {
        "command": command("bench.recall_monitor"),
        "dataset": ds.name,
        "factory": stats["off"].get("factory"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": rounds,
        "requests_per_round": counts,
        "apps": APPS,
        "cost": cost,
        "qps_per_round": qps,
        "app_cpu_per_query_per_round": app_cpu,
        "machine_cpu_per_query_per_round": all_cpu,
        "monitor": monitor,
        "true_recall": {a: _true_recall(ds, answers[a]) for a in APPS},
        "plumbing": extra,
        "seconds": seconds,
    }


def traffic_cpu_s(r: dict, app: str) -> float:
    """CPU seconds the machine spent on ``app``'s requests over the run (every slot's
    machine CPU per query times its queries)."""
    rows = {"batch256": 256, "single": 1}
    per_round = r["machine_cpu_per_query_per_round"][app]
    return sum(
        cpu * r["requests_per_round"][shape] * rows[shape]
        for shape, values in per_round.items()
        for cpu in values
    )


def markdown(r: dict) -> str:
    c, m = r["cost"], r["monitor"]
    lines = [
        "# The online recall monitor: cost and accuracy",
        "",
        f"`{r['command']}` on {r['machine']['cpus']} cores; {r['dataset']}, 4 shards "
        f"({r['factory']}) in one replica, HTTP (`vectors_b64`), 8 callers; "
        f"{r['rounds']} rounds, each measuring every app in a rotating order (median of the "
        "per-round ratios).",
        "",
        "CPU per query: the app's own processes (router, shard replica, coordinator) and "
        "the whole machine (with the client and HAProxy), medians over rounds; **cost**: the "
        "app's extra CPU per query over `off`'s, as a share of all a query costs the machine "
        "with the monitor off (the throughput lost when CPU-bound). QPS ratios are medians of "
        "per-round ratios to `off`; `off-again` (the same options as `off`) shows their noise.",
        "",
        "| app | monitor | shape | q/s | ratio | app CPU us/q | machine CPU us/q | **cost** |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for app, opts in r["apps"].items():
        for shape in ("batch256", "single"):
            x = c[app][shape]
            lines.append(
                f"| {app} | {opts or 'defaults'} | {shape} | {x['qps_median']:,.0f} | "
                f"{x['ratio_to_off']:.3f} | {x['app_cpu_us_per_query']:,.0f} | "
                f"{x['machine_cpu_us_per_query']:,.0f} | {100 * x['cpu_cost']:+.2f}% |"
            )
    lines += [
        "",
        "| app | measured recall@10 | queries in window | measured in all | skipped | "
        "exact CPU s | of the app's traffic CPU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for app in r["apps"]:
        x = m[app]
        recall = "-" if x["recall"] is None else f"{x['recall']:.4f}"
        lines.append(
            f"| {app} | {recall} | {x['samples']} | {x['measured_total']} | "
            f"{x['skipped'] or '-'} | {x['exact_cpu_seconds']:.2f} | "
            f"{100 * x['exact_cpu_seconds'] / max(traffic_cpu_s(r, app), 1e-9):.2f}% |"
        )
    p = r["plumbing"]
    d = m["default"]
    requests = r["rounds"] * sum(r["requests_per_round"].values())
    offered = d["measured_total"] + sum((d["skipped"] or {}).values())
    plumbing_s = 1e-6 * (
        p["pick_us_per_request"] * requests + (p["offer_us"] + p["join_us_per_part"]) * offered
    )
    traffic = traffic_cpu_s(r, "default")
    total = (d["exact_cpu_seconds"] + plumbing_s) / traffic
    lines += [
        "",
        f"**The default's cost, accounted directly:** exact re-runs "
        f"{d['exact_cpu_seconds']:.2f} CPU s and the plumbing about {plumbing_s:.2f} CPU s "
        f"({requests:,} requests, {offered:,} sampled), against the {traffic:.0f} CPU s the "
        f"machine spent on that app's traffic: **{100 * total:.2f}%** (the limit is 3%). "
        "The same-run QPS ratios above are within the spread of two identical apps "
        "(`off-again`) on this shared machine: the throughput difference the monitor makes "
        "is smaller than what these ratios can resolve.",
    ]
    lines += [
        "",
        f"The monitor's work outside the exact search, in process: the router's `pick` "
        f"{p['pick_us_per_request']:.1f} us per request (every request), a shard's `offer` "
        f"{p['offer_us']:.1f} us per sampled request, the coordinator's join "
        f"{p['join_us_per_part']:.1f} us per part (off every request path).",
    ]
    lines += [
        "",
        "True recall@10 of every answer each app gave (brute force): "
        + ", ".join(f"{a} {v:.4f}" for a, v in r["true_recall"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    args = parser(__doc__).parse_args()
    print(write(args.out, "recall_monitor", run(args.quick, args.workdir), markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
