"""The online recall monitor's cost and accuracy: the same searches against the same index
served with the monitor off, at its default rate, and at a high rate with no budget, in
rounds that alternate between them in one run.

    RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 python -m bench.recall_monitor

GloVe (390k x 50, cosine, 4 shards, the automatic index) on a local Ray, one replica per
shard, three applications over the same files: ``off`` (sample_rate 0), ``default`` (the
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
from bench.glove import load
from bench.results import parser, write
from bench.serving import drive
from deployments.http import encode_vectors_b64

APPS = {
    "off": {"sample_rate": 0.0},
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


def _true_recall(ds, answers: list[tuple[int, np.ndarray]]) -> float:
    hits = []
    for start, ids in answers:
        gt = ds.gt[start : start + len(ids), :10]
        hits.append((ids[:, :, None] == gt[:, None, :]).any(axis=2).mean(axis=1))
    return float(np.concatenate(hits).mean())


def run(quick: bool, workdir: str) -> dict:
    import httpx

    from deployments.local import deploy, start_local

    ds = load(n_db=50_000, n_queries=2_000) if quick else load()
    root = os.path.join(workdir, f"{ds.name}-auto-4")
    if not os.path.exists(os.path.join(root, "CURRENT")):
        build(ds, root, "auto", 4)
    url = start_local()
    for name, recall in APPS.items():
        shard = {"num_replicas": 1, "omp_threads": 1}
        deploy(f"monitor-{name}", {"index_uri": root, "shard": shard, "recall": recall})
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    http = httpx.Client(base_url=url, timeout=60, limits=limits)
    rounds = 2 if quick else 7
    counts = {"batch256": 40 if quick else 150, "single": 300 if quick else 1500}
    qps: dict[str, dict[str, list[float]]] = {a: {s: [] for s in SHAPES} for a in APPS}
    p50: dict[str, dict[str, list[float]]] = {a: {s: [] for s in SHAPES} for a in APPS}
    answers: dict[str, list] = {a: [] for a in APPS}
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
                got = drive(search, payloads, 8)
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
    env = " ".join(
        f"{k}={os.environ[k]}"
        for k in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")
        if os.environ.get(k)
    )
    return {
        "command": f"{env} python -m bench.recall_monitor {' '.join(sys.argv[1:])}".strip(),
        "dataset": ds.name,
        "factory": stats["off"].get("factory"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": rounds,
        "requests_per_round": counts,
        "apps": APPS,
        "cost": cost,
        "monitor": monitor,
        "true_recall": {a: _true_recall(ds, answers[a]) for a in APPS},
        "seconds": seconds,
    }


def markdown(r: dict) -> str:
    c, m = r["cost"], r["monitor"]
    lines = [
        "# The online recall monitor: cost and accuracy",
        "",
        f"`{r['command']}` on {r['machine']['cpus']} cores; {r['dataset']}, 4 shards "
        f"({r['factory']}), one replica per shard, HTTP (`vectors_b64`), 8 callers; "
        f"{r['rounds']} rounds, each measuring every app in a rotating order (median of the "
        "per-round ratios).",
        "",
        "| app | monitor | batch 256 q/s | ratio | single q/s | ratio | single p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for app, opts in r["apps"].items():
        b, s = c[app]["batch256"], c[app]["single"]
        lines.append(
            f"| {app} | {opts or 'defaults'} | {b['qps_median']:,.0f} | "
            f"{b['ratio_to_off']:.3f} | {s['qps_median']:,.0f} | {s['ratio_to_off']:.3f} | "
            f"{s['p50_ms_median']:.2f} |"
        )
    lines += [
        "",
        "| app | measured recall@10 | queries in window | measured in all | skipped | "
        "exact CPU s | share of the machine |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for app in r["apps"]:
        x = m[app]
        recall = "-" if x["recall"] is None else f"{x['recall']:.4f}"
        lines.append(
            f"| {app} | {recall} | {x['samples']} | {x['measured_total']} | "
            f"{x['skipped'] or '-'} | {x['exact_cpu_seconds']:.2f} | "
            f"{100 * x['exact_cpu_share']:.2f}% |"
        )
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
