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

from bench.glove import load
from bench.results import parser, write
from bench.systems import K, System, peers
from deployments.http import encode_vectors_b64
from shards._faiss import faiss

BATCH = 256
CONCURRENCY = 8
TARGETS = (0.9, 0.95, 0.955, 0.96, 0.97, 0.975, 0.99)  # a held-out set can fall just below
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

        src = os.path.join(self.workdir, "compare-db.npy")
        np.save(src, xb)
        self.root = os.path.join(self.workdir, f"compare-vsearch-{self.index_kind}-{self.traffic}")
        opts = BuildOptions(
            metric=self.metric, index=self.index_kind, traffic=self.traffic, progress=False
        )
        build_index(VectorSource(src), self.root, opts)
        self.index = ShardedIndex.open(self.root)

    def settings(self):
        return [{"target_recall": t} for t in TARGETS]

    def search(self, xq, k, setting):
        return self.index.search(xq, k, target_recall=setting["target_recall"])[1]


class VsearchHandle(System):
    name = "vsearch handle"
    kind = "service"

    def __init__(self, local: VsearchInProcess) -> None:
        self.local = local

    def build(self, xb):
        from deployments.client import VsearchClient
        from deployments.local import deploy, start_local

        self.url = start_local() + "/compare"
        deploy("compare", {"index_uri": self.local.root, "shard": {"omp_threads": 2}})
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
        body = {
            "vectors_b64": encode_vectors_b64(xq),
            "k": k,
            "params": dict(setting),
            "deadline_ms": 30_000,
        }
        r = self.http.post("/v1/search", json=body)
        r.raise_for_status()
        return np.array(r.json()["ids"], dtype=np.int64)


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


def rss_mib() -> float:
    """Resident memory of this process and its children (engines that run a server)."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def measure(system: System, xq: np.ndarray, gt: np.ndarray, setting: dict, singles: int):
    system.search(xq[:BATCH], K, setting)  # warm-up
    t0 = time.perf_counter()
    I = np.vstack([system.search(xq[i : i + BATCH], K, setting) for i in range(0, len(xq), BATCH)])
    t_batch = time.perf_counter() - t0
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
    t_single = time.perf_counter() - t0
    return {
        "recall": float((I[:, :K, None] == gt[:, None, :K]).any(axis=2).mean()),
        "qps_batch": len(xq) / t_batch,
        "qps_single_c8": len(lat) / t_single,
        "singles": len(lat),
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(lat, 99)),
    }


def run(args, dataset: str) -> dict:
    if dataset == "minilm":
        from bench import minilm

        ds, metric = minilm.load(), "l2"  # normalised: L2, cosine and inner product rank alike
    else:
        ds, metric = (load(n_db=50_000, n_queries=2_000) if args.quick else load()), "ip"
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
        *([] if args.no_service else [handle, VsearchHttp(handle), VsearchHttpDirect(handle)]),
        *peers(1024),
    ]
    wanted = set(args.systems.split(",")) if args.systems else None
    rows: list[dict[str, Any]] = []
    built: list[System] = []
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
            try:
                stats = measure(system, xq, gt, setting, singles)
            except Exception as exc:
                stats = {"error": f"search failed: {exc!r}"[:300]}
            rows.append(
                {
                    "system": system.name,
                    "kind": system.kind,
                    "setting": setting,
                    "build_s": build_s,
                    "build_rss_mib": mem,
                    **stats,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
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
        "cpus": os.cpu_count(),
        "http_front": http_front(),
        "rows": rows,
    }


def http_front() -> str:
    """What answers on the main HTTP port: HAProxy (``RAY_SERVE_ENABLE_HA_PROXY=1``, as `make
    serve` runs it) or Serve's Python proxy."""
    return "HAProxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Serve proxy"


def best_at(rows: list[dict], system: str, key: str, floor: float = 0.95) -> dict | None:
    ok = [r for r in rows if r["system"] == system and r.get("recall", 0) >= floor]
    return max(ok, key=lambda r: r[key]) if ok else None


def markdown(r: dict) -> str:
    systems = list(dict.fromkeys(x["system"] for x in r["rows"]))
    lines = [
        f"# vsearch against its peers: `{r['command']}`",
        "",
        f"{r['dataset']} (normalised vectors, {r.get('metric', 'ip')} for vsearch), "
        f"{r['queries']:,} held-out queries (batches of {BATCH}), "
        f"{r['singles']} single queries from {CONCURRENCY} concurrent callers; {r['cpus']} CPUs, "
        "every system in the same run. Best QPS among each system's settings with "
        "recall@10 >= 0.95. `vsearch HTTP` is the main port, served by "
        f"{r.get('http_front', 'Serve proxy')}; `HTTP direct` is the router replica's own port:",
        "",
        "| system | batched QPS | recall | setting | single-query QPS (c8) | recall | p50 ms | "
        "p99 ms | build s | build RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in systems:
        errors = [x["error"] for x in r["rows"] if x["system"] == name and "error" in x]
        b = best_at(r["rows"], name, "qps_batch")
        s = best_at(r["rows"], name, "qps_single_c8")
        if b is None or s is None:
            why = errors[0] if errors else "no setting reached recall 0.95"
            lines.append(f"| {name} | - | - | - | - | - | - | - | - | {why} |")
            continue
        lines.append(
            f"| {name} | {b['qps_batch']:,.0f} | {b['recall']:.3f} | {b['setting'] or '-'} | "
            f"{s['qps_single_c8']:,.0f} | {s['recall']:.3f} | {s['p50_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {b['build_s']:.1f} | {b['build_rss_mib']:,.0f} |"
        )
    png = r.get("plot", "compare.png")
    if r["dataset"].startswith("minilm"):
        lines += [
            "",
            "MiniLM: real sentences (6-40 words) from the docstrings of the installed Python "
            "packages, embedded offline with all-MiniLM-L6-v2 (384-d, normalised; "
            "bench/minilm.py); the texts are cached beside the vectors.",
        ]
    lines += ["", f"![recall against QPS]({png})", ""]
    lines += [f"![latency by system]({png[: -len('.png')]}-latency.png)", ""]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, title in (
        (axes[0], "qps_batch", f"batches of {BATCH}"),
        (axes[1], "qps_single_c8", f"single queries, {CONCURRENCY} callers"),
    ):
        names = list(dict.fromkeys(x["system"] for x in r["rows"]))
        for i, name in enumerate(names):
            pts = sorted(
                (x["recall"], x[key]) for x in r["rows"] if x["system"] == name and key in x
            )
            if pts:
                style = "-o" if name.startswith("vsearch") else "--."
                color = plt.cm.tab20(i / max(1, len(names) - 1))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=name)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second")
        ax.set_yscale("log")
        ax.axvline(0.95, color="grey", lw=0.5)
        ax.set_title(f"{r['dataset']}: {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def latency_plot(r: dict, path: str) -> None:
    """Single-query latency p50 and p99 per system, at its fastest setting with recall >= 0.95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, p50, p99 = [], [], []
    for name in dict.fromkeys(x["system"] for x in r["rows"]):
        best = best_at(r["rows"], name, "qps_single_c8")
        if best is not None:
            names.append(name)
            p50.append(best["p50_ms"])
            p99.append(best["p99_ms"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y - 0.2, p50, height=0.4, label="p50")
    ax.barh(y + 0.2, p99, height=0.4, label="p99")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds per single query (8 concurrent callers)")
    ax.set_title(f"{r['dataset']}: latency at recall@10 >= 0.95")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plots(r: dict, base: str) -> None:
    """Both plots of a result: ``base``.png (recall against QPS), ``base``-latency.png."""
    plot(r, base + ".png")
    latency_plot(r, base + "-latency.png")


def replot(json_path: str) -> None:
    """Redraw a results file's plots (``python -c 'from bench.compare import replot; ...'``)."""
    with open(json_path) as f:
        plots(json.load(f), json_path[: -len(".json")])


def main() -> int:
    ap = parser(__doc__, workdir="compare")
    ap.add_argument("--queries", type=int, default=2_000, help="held-out queries to use")
    ap.add_argument("--singles", type=int, default=500, help="single queries per setting")
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


PEER = ("hnswlib", "hnswlib M32")


def ratios(r: dict) -> list[dict]:
    """vsearch in process (each traffic shape) against the best hnswlib, at recall >= 0.95."""
    out = []
    for key in ("qps_batch", "qps_single_c8"):
        peer = [b for p in PEER if (b := best_at(r["rows"], p, key))]
        top = max(peer, key=lambda b: b[key]) if peer else None
        for name in dict.fromkeys(x["system"] for x in r["rows"]):
            if not name.startswith("vsearch in-process"):
                continue
            mine = best_at(r["rows"], name, key)
            if mine and top:
                out.append(
                    {
                        "shape": "batched" if key == "qps_batch" else "single (8 callers)",
                        "system": name,
                        "qps": mine[key],
                        "recall": mine["recall"],
                        "peer": top["system"],
                        "peer_qps": top[key],
                        "peer_recall": top["recall"],
                        "ratio": mine[key] / top[key],
                    }
                )
    return out


def summary(s: dict) -> str:
    lines = [
        f"# vsearch in process against hnswlib: `{s['results'][0]['command']}`",
        "",
        "One run, 2 CPUs; best QPS of each system's settings at recall@10 >= 0.95; the peer is "
        "the faster of hnswlib M 16 and M 32 (ef_construction 200) for each shape.",
        "",
        "| dataset | shape | vsearch | QPS | recall | peer | peer QPS | peer recall | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in s["results"]:
        for x in ratios(r):
            lines.append(
                f"| {r['dataset']} | {x['shape']} | {x['system']} | {x['qps']:,.0f} | "
                f"{x['recall']:.3f} | {x['peer']} | {x['peer_qps']:,.0f} | "
                f"{x['peer_recall']:.3f} | {x['ratio']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
