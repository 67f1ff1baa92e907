"""vsearch against the systems its users would pick instead, side by side on the same data.

    python -m bench.compare [--quick] [--systems a,b,...]      (make bench-peers)

One run, one machine, the same GloVe vectors (cosine, 10,000 held-out queries of which
``--queries`` are used) for every system: recall@10 against queries per second, for batches of
256 queries and for single queries sent by 8 concurrent callers, with p50/p99 latency, build
time and the resident memory the build added. vsearch runs in process (`shards`), through its
Ray Serve handle and through its HTTP API (1 shard, the automatic index, `target_recall`
settings). Writes ``compare.json``, ``compare.md`` and ``compare.png`` under ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from bench.compare_report import BATCH, CONCURRENCY, markdown, plots, summary
from bench.glove import QUICK, load
from bench.results import parser, write
from bench.systems import K, System, peers
from shards._faiss import faiss
from vsearch import _wire

# vsearch's knob, swept as the peers' are (hnswlib's ef from 16 up): the tuning sample is held
# out of the index, and on other queries a target can land above or below what it says
TARGETS = (0.9, 0.93, 0.94, 0.95, 0.955, 0.96, 0.97, 0.975, 0.99)
SINGLES_MAX_S = 20.0  # the single-query phase of one setting stops after this long


class VsearchInProcess(System):
    name = "vsearch in-process"

    def __init__(
        self, workdir: str, metric: str = "ip", index: str = "auto", traffic: str = "mixed"
    ) -> None:
        self.workdir, self.metric, self.index_kind = workdir, metric, index
        self.traffic = traffic
        if index != "auto":  # a chosen index instead of the automatic choice
            self.name = f"vsearch in-process ({index})"
        elif traffic != "mixed":  # the automatic choice for another traffic shape
            self.name = f"vsearch in-process (traffic {traffic})"

    def build(self, xb):
        from shards import BuildOptions, ShardedIndex, VectorSource, build_index
        from shards.choice import HNSW_EF_CONSTRUCTION

        src = os.path.join(self.workdir, "compare-db.npy")
        np.save(src, xb)
        self.root = os.path.join(self.workdir, f"compare-vsearch-{self.index_kind}-{self.traffic}")
        efc = HNSW_EF_CONSTRUCTION if "HNSW" in self.index_kind else None  # as auto builds
        opts = BuildOptions(
            metric=self.metric,
            index=self.index_kind,
            traffic=self.traffic,
            progress=False,
            ef_construction=efc,
        )
        build_index(VectorSource(src), self.root, opts)
        self.index = ShardedIndex.open(self.root)

    def settings(self):
        return [{"target_recall": t} for t in TARGETS]

    def search(self, xq, k, setting):
        return self.index.search(xq, k, target_recall=setting["target_recall"])[1]

    def describe(self, setting):
        ov = self.index.resolve(None, setting["target_recall"], K)
        knobs = {f: v for f, v in vars(ov).items() if v is not None}
        return f"{self.index.manifest.factory} {knobs}"


class VsearchHandle(System):
    name = "vsearch handle"
    kind = "service"

    def __init__(self, local: VsearchInProcess) -> None:
        self.local = local

    def build(self, xb):
        from deployments.client import VsearchClient
        from deployments.local import deploy, start_local

        self.url = start_local() + "/compare"
        # as make serve runs it on one machine: the router replicas hold the shards
        shard = {"in_router": True, "omp_threads": 2}
        deploy("compare", {"index_uri": self.local.root, "shard": shard})
        self.client = VsearchClient("compare")

    def settings(self):
        return [{"target_recall": t} for t in TARGETS]

    def search(self, xq, k, setting):
        return self.client.search(xq, k, dict(setting), deadline_ms=30_000).I


class VsearchHttp(VsearchHandle):
    name = "vsearch HTTP"

    def __init__(self, handle: VsearchHandle) -> None:
        self.handle = handle

    def build(self, xb):
        import httpx

        self.http = httpx.Client(
            base_url=self.handle.url, timeout=60, limits=httpx.Limits(max_connections=64)
        )

    def search(self, xq, k, setting):
        """As the vsearch client searches: a binary frame each way (``vsearch.frames``)."""
        send = _wire.search_requests(xq, None, None, k, dict(setting), None, deadline_ms=30_000)
        r = self.http.post("/v1/search", **next(send))
        r.raise_for_status()
        return _wire.search_result(r.content).ids


class VsearchHttpDirect(VsearchHttp):
    """HTTP straight to the router replica: Serve's direct ingress port (on with
    RAY_SERVE_THROUGHPUT_OPTIMIZED), skipping the Python proxy on the main port."""

    name = "vsearch HTTP direct"

    def build(self, xb):
        import httpx

        low = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
        for port in range(low, low + 20):
            base = f"http://127.0.0.1:{port}/compare"
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                continue
        else:
            raise RuntimeError("no direct ingress port answers (RAY_SERVE_THROUGHPUT_OPTIMIZED?)")
        self.http = httpx.Client(base_url=base, timeout=60, limits=httpx.Limits(max_connections=64))


def describe(system: System, setting: dict) -> str | None:
    """``system.describe(setting)``, or None when it cannot say (e.g. a target no tuned
    point reaches: the search's own error is in the row)."""
    try:
        return system.describe(setting)
    except Exception:
        return None


def rss_mib() -> float:
    """Resident memory of this process and its children (engines that run a server)."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def measure(
    system: System, xq: np.ndarray, gt: np.ndarray, setting: dict, singles: int, lone: bool = True
) -> dict[str, Any]:
    """Recall, batched QPS and (``lone``) 8-caller single-query QPS of one setting, one pass."""
    system.search(xq[:BATCH], K, setting)  # warm-up
    t0 = time.perf_counter()
    I = np.vstack([system.search(xq[i : i + BATCH], K, setting) for i in range(0, len(xq), BATCH)])
    out: dict[str, Any] = {
        "recall": float((I[:, :K, None] == gt[:, None, :K]).any(axis=2).mean()),
        "qps_batch": len(xq) / (time.perf_counter() - t0),
    }
    if lone:
        qps, lat = singles_pass(system, xq, setting, singles)
        out.update(
            qps_single_c8=qps,
            singles=len(lat),
            p50_ms=1e3 * float(np.percentile(lat, 50)),
            p99_ms=1e3 * float(np.percentile(lat, 99)),
        )
    return out


def keep_best(row: dict[str, Any], stats: dict[str, Any]) -> None:
    """Fold one pass's ``stats`` into ``row``: the faster batched figure, and the single-query
    figures of the faster pass (a noisy shared machine only ever slows a pass down)."""
    if "qps_batch" not in row:
        row.update(stats)
        return
    row["qps_batch"] = max(row["qps_batch"], stats["qps_batch"])
    if stats.get("qps_single_c8", 0.0) > row.get("qps_single_c8", 0.0):
        row.update({k: stats[k] for k in ("qps_single_c8", "singles", "p50_ms", "p99_ms")})


def singles_pass(
    system: System, xq: np.ndarray, setting: dict, singles: int
) -> tuple[float, list[float]]:
    """``singles`` lone queries from CONCURRENCY callers: queries/s and each latency."""
    lat: list[float] = []
    next_query = iter(range(singles))  # shared by the callers; next() is atomic under the GIL
    t0 = time.perf_counter()

    def caller() -> None:
        faiss.omp_set_num_threads(1)
        for i in next_query:
            if time.perf_counter() - t0 > SINGLES_MAX_S:
                break  # slow systems: a time-capped sample
            t = time.perf_counter()
            system.search(xq[i : i + 1], K, setting)
            lat.append(time.perf_counter() - t)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for f in [pool.submit(caller) for _ in range(CONCURRENCY)]:
            f.result()
    return len(lat) / (time.perf_counter() - t0), lat


def run(args, dataset: str) -> dict:
    if dataset == "minilm":
        from bench import minilm

        ds, metric = minilm.load(), "l2"  # normalised: L2, cosine and inner product rank alike
    else:
        ds, metric = (load(**QUICK) if args.quick else load()), "ip"
    nq = min(args.queries, len(ds.xq))
    xq, gt = ds.xq[:nq], ds.gt[:nq]
    singles = min(nq, 100 if args.quick else args.singles)
    os.makedirs(args.workdir, exist_ok=True)
    local = VsearchInProcess(args.workdir, metric)
    handle = VsearchHandle(local)
    shapes = [
        VsearchInProcess(args.workdir, metric, traffic=t) for t in args.traffic if t != "mixed"
    ]
    systems: list[System] = [
        local,
        *shapes,
        *([VsearchInProcess(args.workdir, metric, "hnsw")] if args.also_hnsw else []),
        *[VsearchInProcess(args.workdir, metric, factory) for factory in args.also_index or []],
        *([] if args.no_service else [handle, VsearchHttp(handle), VsearchHttpDirect(handle)]),
        *peers(1024),
    ]
    wanted = set(args.systems.split(",")) if args.systems else None
    rows: list[dict[str, Any]] = []
    built: list[System] = []
    measured: list[tuple[System, dict, dict[str, Any]]] = []  # (system, setting, its row)
    for system in systems:
        vsearch = system.name.startswith("vsearch")  # always measured
        if wanted and not vsearch and not any(w in system.name for w in wanted):
            continue
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        before = rss_mib()
        t0 = time.perf_counter()
        try:
            system.build(ds.xb)
        except Exception as exc:  # a peer that cannot run here: say why, go on
            rows.append({"system": system.name, "error": f"build failed: {exc!r}"[:300]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            continue
        build_s, mem = time.perf_counter() - t0, rss_mib() - before
        built.append(system)
        for setting in system.settings():
            row = {
                "system": system.name,
                "kind": system.kind,
                "setting": setting,
                "build_s": build_s,
                "build_rss_mib": mem,
                "resolved": describe(system, setting),
            }
            rows.append(row)
            measured.append((system, setting, row))
    # pass p of every system and setting before pass p + 1 of any: the machine's load drifts
    # over minutes, and a system measured all at once could meet a quiet or a busy stretch
    for p in range(args.passes):
        for system, setting, row in measured:
            if "error" in row:
                continue
            # a time-capped single-query pass (a slow system) is not repeated
            lone = p == 0 or row.get("singles", 0) >= singles
            try:
                keep_best(row, measure(system, xq, gt, setting, singles, lone))
            except Exception as exc:
                row["error"] = f"search failed: {exc!r}"[:300]
            print(json.dumps({"pass": p + 1, **row}), file=sys.stderr, flush=True)
    for system in built:
        system.close()
    if not args.no_service:
        import ray

        ray.shutdown()
    return {
        "command": "python -m bench.compare " + " ".join(sys.argv[1:]),
        "dataset": ds.name,
        "metric": metric,
        "queries": nq,
        "singles": singles,
        "passes": args.passes,
        "cpus": os.cpu_count(),
        "http_front": http_front(),
        "wire": "frames",  # vsearch HTTP's wire (results without this key sent base64 JSON)
        "rows": rows,
    }


def http_front() -> str:
    """What answers on the main HTTP port: HAProxy (``RAY_SERVE_ENABLE_HA_PROXY=1``, as `make
    serve` runs it) or Serve's Python proxy."""
    return "HAProxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Serve proxy"


def main() -> int:
    ap = parser(__doc__, workdir="compare")
    ap.add_argument("--queries", type=int, default=2_000, help="held-out queries to use")
    ap.add_argument("--singles", type=int, default=500, help="single queries per setting")
    ap.add_argument(
        "--passes",
        type=int,
        default=1,
        help="passes over every system and setting in turn; the best of each counts",
    )
    ap.add_argument(
        "--dataset",
        default="glove",
        help="glove, minilm (bench/minilm.py), or both comma-separated: one run, one results "
        "file each (NAME-DATASET) and NAME-summary.md with vsearch's ratios to hnswlib",
    )
    ap.add_argument(
        "--traffic",
        default="mixed",
        type=lambda v: v.split(","),
        help="also vsearch in process built for these traffic shapes (single, batch)",
    )
    ap.add_argument("--no-service", action="store_true", help="vsearch in process only (no Ray)")
    ap.add_argument(
        "--systems", help="only these peers (substrings of their names; vsearch always)"
    )
    ap.add_argument(
        "--also-hnsw", action="store_true", help="also vsearch in process with an HNSW index"
    )
    ap.add_argument(
        "--also-index",
        action="append",
        metavar="FACTORY",
        help="also vsearch in process built with this faiss factory string (repeatable; HNSW "
        "graphs with efConstruction 200, as the automatic choice builds them)",
    )
    ap.add_argument("--name", default="compare", help="results file name (without extension)")
    args = ap.parse_args()
    datasets = args.dataset.split(",")
    results = []
    for dataset in datasets:
        name = args.name if len(datasets) == 1 else f"{args.name}-{dataset}"
        result = run(args, dataset)
        result["plot"] = f"{name}.png"
        print(write(args.out, name, result, markdown))
        plots(result, os.path.join(args.out, name))
        results.append(result)
    if len(datasets) > 1:
        print(write(args.out, f"{args.name}-summary", {"results": results}, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
