"""Cold start: seconds from process start to the first answer, for a persisted GloVe index.

    python -m bench.cold_start [--quick] [--runs 3]

Each system's index is built once and saved; then a fresh Python process is started that
imports the library, loads the index and answers one query (for the vsearch service: starts a
local Ray, deploys, and answers over HTTP). The wall time of that whole process is the cold
start; the median of ``--runs`` is reported. Peers that are not installed are skipped.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np

from bench.glove import QUICK, load
from bench.results import parser, write
from bench.systems import LanceDB, MilvusLite, QdrantLocal

PROBES = {
    "vsearch in-process": (
        "from shards import ShardedIndex; import numpy as np; "
        "ShardedIndex.open(ROOT).search(np.load(Q)[:1], 10)"
    ),
    "vsearch service (local Ray + HTTP)": (
        "import numpy as np, httpx; from deployments.local import start_local, deploy; "
        "url = start_local(); deploy('cold', {'index_uri': ROOT}); "
        "r = httpx.post(url + '/cold/v1/search', "
        "json={'vectors': np.load(Q)[:1].tolist(), 'k': 10}, timeout=60); "
        "assert r.status_code == 200, r.text"
    ),
    "faiss HNSW32": (
        "import faiss, numpy as np; faiss.read_index(ROOT).search(np.load(Q)[:1], 10)"
    ),
    "hnswlib": (
        "import hnswlib, numpy as np; q = np.load(Q); "
        "i = hnswlib.Index(space='ip', dim=q.shape[1]); i.load_index(ROOT); "
        "i.knn_query(q[:1], k=10)"
    ),
    "usearch": (
        "import numpy as np; from usearch.index import Index; "
        "Index.restore(ROOT).search(np.load(Q)[0], 10)"
    ),
    "qdrant local": (
        "import numpy as np; from qdrant_client import QdrantClient; "
        "QdrantClient(path=ROOT).query_points('bench', query=np.load(Q)[0].tolist(), limit=10)"
    ),
    "milvus lite": (
        "import numpy as np; from pymilvus import MilvusClient; c = MilvusClient(ROOT); "
        "c.load_collection('bench'); "
        "c.search('bench', data=np.load(Q)[:1].tolist(), limit=10, "
        "search_params={'params': {'nprobe': 16}})"
    ),
    "lancedb": (
        "import numpy as np, lancedb; t = lancedb.connect(ROOT).open_table('bench'); "
        "t.search(np.load(Q)[0]).metric('dot').nprobes(20).refine_factor(10).limit(10)"
        ".to_arrow()"
    ),
}

# embedded engines: the adapter that builds and persists each, and its file under the workdir
ENGINES = {
    "qdrant local": (QdrantLocal, "qdrant"),
    "milvus lite": (MilvusLite, "milvus.db"),
    "lancedb": (LanceDB, "lance"),
}


def prepare(ds, workdir: str, peers: bool = True) -> dict[str, str]:
    """Build and save each system's index once; returns system -> path (installed ones only;
    vsearch and FAISS only without ``peers``)."""
    import faiss

    from shards import BuildOptions, VectorSource, build_index

    os.makedirs(workdir, exist_ok=True)
    paths: dict[str, str] = {}
    root = os.path.join(workdir, "vsearch")
    if not os.path.exists(os.path.join(root, "CURRENT")):
        np.save(os.path.join(workdir, "db.npy"), ds.xb)
        src = VectorSource(os.path.join(workdir, "db.npy"))
        build_index(src, root, BuildOptions(metric="ip", progress=False))
    paths["vsearch in-process"] = paths["vsearch service (local Ray + HTTP)"] = root
    path = os.path.join(workdir, "hnsw.faiss")
    if not os.path.exists(path):
        index = faiss.index_factory(ds.xb.shape[1], "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
        index.add(ds.xb)
        faiss.write_index(index, path)
    paths["faiss HNSW32"] = path
    if not peers:
        return paths
    try:
        import hnswlib

        path = os.path.join(workdir, "hnswlib.bin")
        if not os.path.exists(path):
            index = hnswlib.Index(space="ip", dim=ds.xb.shape[1])
            index.init_index(max_elements=len(ds.xb), M=16, ef_construction=200)
            index.add_items(ds.xb)
            index.save_index(path)
        paths["hnswlib"] = path
    except ImportError:
        pass
    try:
        from usearch.index import Index

        path = os.path.join(workdir, "usearch.usearch")
        if not os.path.exists(path):
            index = Index(ndim=ds.xb.shape[1], metric="ip", connectivity=16, expansion_add=128)
            index.add(np.arange(len(ds.xb)), ds.xb)
            index.save(path)
        paths["usearch"] = path
    except ImportError:
        pass
    for name, (system, file) in ENGINES.items():
        path = os.path.join(workdir, file)
        if not os.path.exists(path + ".done"):
            try:
                engine = system(path)
                engine.build(ds.xb)
                engine.close()
            except ImportError:
                continue
            open(path + ".done", "w").close()
        paths[name] = path
    return paths


def run(args) -> dict:
    ds = load(**QUICK) if args.quick else load()
    paths = prepare(ds, args.workdir, peers=not args.quick)
    queries = os.path.join(args.workdir, "q.npy")
    np.save(queries, ds.xq[:10])
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    }
    rows = []
    for name, probe in PROBES.items():
        if name not in paths:
            rows.append(
                {
                    "system": name,
                    "error": "not measured (--quick)" if args.quick else "not installed",
                }
            )
            continue
        code = f"ROOT = {paths[name]!r}; Q = {queries!r}\n{probe}\nprint('FIRST ANSWER')"
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
            )
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0 or "FIRST ANSWER" not in proc.stdout:
                rows.append({"system": name, "error": proc.stderr[-300:]})
                break
            times.append(elapsed)
        else:
            rows.append({"system": name, "cold_start_s": statistics.median(times), "runs": times})
        print(rows[-1], file=sys.stderr, flush=True)
    return {
        "command": "python -m bench.cold_start " + " ".join(sys.argv[1:]),
        "dataset": ds.name,
        "cpus": os.cpu_count(),
        "rows": rows,
    }


def markdown(r: dict) -> str:
    lines = [
        f"# Cold start: `{r['command']}`",
        "",
        f"{r['dataset']}, a persisted index per system; a fresh Python process imports, loads "
        f"and answers one query ({r['cpus']} CPUs; median of the runs).",
        "",
        "| system | process start to first answer, s | runs |",
        "| --- | --- | --- |",
    ]
    for x in r["rows"]:
        if "error" in x:
            lines.append(f"| {x['system']} | - | {x['error'][:120]} |")
        else:
            runs = ", ".join(f"{t:.2f}" for t in x["runs"])
            lines.append(f"| {x['system']} | {x['cold_start_s']:.2f} | {runs} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__, workdir="cold-start")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(write(args.out, "cold_start", run(args), markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
