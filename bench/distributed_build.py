"""The distributed build against the single-process build, in the same run.

    python -m bench.distributed_build [--n 10000000] [--d 96] [--shards 8] [--nodes 3]

A synthetic clustered set (``--n`` x ``--d``, written once to ``bench/cache/`` in chunks)
is built twice with the same flags: by ``python -m shards build`` in one process, and by
``python -m jobs build`` on a local cluster of ``--nodes`` Ray nodes
(``ray.cluster_utils.Cluster``, one CPU each) on this machine. For each: wall time, peak
resident memory of the build process and (distributed) of every Ray worker, memory left
resident after the build, and recall@10 at the tuned defaults on held-out queries against
brute force. On one 2-core machine the nodes share the same two cores, so the time ratio
says what the distribution costs, not what more machines would gain; the memory per
worker is what a cluster node needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np

from bench.results import CACHE, parser, write
from shards._faiss import faiss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 2**30
ROLES = {"_train": "train", "ReadVsearchInput": "partition", "_add": "add", "_ShardTuner": "tune"}


def clustered_file(n: int, d: int, seed: int = 0, chunk: int = 1_000_000) -> str:
    """A (n, d) float32 .npy of clustered vectors on a 16-d latent subspace, made in chunks."""
    path = os.path.join(CACHE, f"clustered-{n}x{d}.npy")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    out = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, chunk):
        out[start : start + chunk] = _clustered(min(chunk, n - start), d, seed + start)
    out.flush()
    del out
    os.replace(path + ".tmp", path)
    return path


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((16, d)).astype(np.float32)
    centers = np.random.default_rng(1).standard_normal((1000, 16)).astype(np.float32) * 3
    z = centers[rng.integers(0, 1000, n)] + rng.standard_normal((n, 16)).astype(np.float32)
    return (z @ basis + 0.3 * rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def ground_truth(path: str, xq: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k of ``xq`` over the file (cached beside it)."""
    from shards.autotune import ground_truth as exact

    cached = path.replace(".npy", f"-gt{len(xq)}.npy")
    if os.path.exists(cached):
        return np.load(cached)
    x = np.load(path, mmap_mode="r")
    blocks = (
        (np.ascontiguousarray(x[s : s + 500_000]), np.arange(s, min(len(x), s + 500_000)))
        for s in range(0, len(x), 500_000)
    )
    gt = exact(xq, blocks, k, faiss.METRIC_L2)
    np.save(cached, gt)
    return gt


def _anon(mem) -> int:
    """Resident memory less file-backed pages: the memory-mapped input is page cache the
    kernel can drop, not memory the build holds."""
    return int(mem.rss - mem.shared)


class Sampler:
    """Peak anonymous resident memory of a process tree and of every Ray worker process,
    sampled every 0.2 s."""

    def __init__(self, pid: int, workers: bool) -> None:
        import psutil

        self.psutil, self.root, self.workers = psutil, psutil.Process(pid), workers
        self.peak_tree = 0
        self.peak_root = 0
        self.peak_worker: dict[str, int] = {}  # role at the peak -> bytes
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ps = self.psutil
        while not self.stop.is_set():
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                rss = {p.pid: _anon(p.memory_info()) for p in tree}
                self.peak_root = max(self.peak_root, rss[self.root.pid])
                self.peak_tree = max(self.peak_tree, sum(rss.values()))
            except ps.Error:
                pass
            if self.workers:
                for p in ps.process_iter(["cmdline", "memory_info"]):
                    title = " ".join(p.info["cmdline"] or [])
                    if not title.startswith("ray::") or not p.info["memory_info"]:
                        continue
                    role = title.split()[0][5:].split("(")[0].split("->")[0].split(".")[0]
                    if role in ROLES:  # the build's own tasks, not Ray's service actors
                        rss_w = _anon(p.info["memory_info"])
                        self.peak_worker[role] = max(self.peak_worker.get(role, 0), rss_w)
            time.sleep(0.2)

    def done(self) -> None:
        self.stop.set()
        self.thread.join()


def run_build(cmd: list[str], workers: bool) -> dict:
    env = {**os.environ, "VSEARCH_PROGRESS": "0", "RAY_AUTH_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = Sampler(proc.pid, workers)
    out, err = proc.communicate()
    sampler.done()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed: {err.decode()[-3000:]}")
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(sampler.peak_root / GB, 3),
        "peak_worker_rss_gb": {k: round(v / GB, 3) for k, v in sorted(sampler.peak_worker.items())},
        "printed": out.decode().strip().splitlines()[-1],
    }


def evaluate(index_dir: str, xq: np.ndarray, gt: np.ndarray) -> dict:
    import psutil

    from shards import ShardedIndex

    before = psutil.Process().memory_info().rss
    index = ShardedIndex.open(index_dir)
    _, I = index.search(xq, 10)
    recall = float((I[:, :, None] == gt[:, None, :]).any(2).mean())
    m = index.manifest
    return {
        "recall_at_10": round(recall, 4),
        "factory": m.factory,
        "defaults": m.default_params,
        "train_seconds": m.build.get("train_seconds"),
        "add_seconds": m.build.get("add_seconds"),
        "total_seconds": m.build.get("total_seconds"),
        "index_bytes": sum(s.files["index"].size for s in m.shards),
        "loaded_rss_gb": round((psutil.Process().memory_info().rss - before) / GB, 3),
    }


def main() -> None:
    ap = parser(__doc__, "distributed")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--d", type=int, default=96)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--name", default="distributed_build")
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-read the indexes the last run built (and its results file): recall, timings",
    )
    args = ap.parse_args()
    if args.evaluate_only:
        return reevaluate(args)
    if args.quick:
        args.n, args.shards = 200_000, 4
    t0 = time.perf_counter()
    path = clustered_file(args.n, args.d)
    xq = _clustered(1000, args.d, seed=10**9)
    gt = ground_truth(path, xq)
    made = round(time.perf_counter() - t0, 1)
    work = args.workdir
    flags = ["--shards", str(args.shards)]
    single_dir, dist_dir = os.path.join(work, "single"), os.path.join(work, "dist")
    for folder in (single_dir, dist_dir):
        subprocess.run(["rm", "-rf", folder], check=True)
    single = run_build(
        [sys.executable, "-m", "shards", "build", path, "--out", single_dir, *flags], False
    )
    single.update(evaluate(single_dir, xq, gt))

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        cmd = [sys.executable, "-m", "jobs", "build", path, "--out", dist_dir, *flags]
        dist = run_build([*cmd, "--address", cluster.address], True)
    finally:
        cluster.shutdown()
    dist.update(evaluate(dist_dir, xq, gt))
    chunk_gb = 65536 * args.d * 4 / GB
    result = {
        "command": f"python -m bench.distributed_build --n {args.n} --d {args.d} "
        f"--shards {args.shards} --nodes {args.nodes}",
        "n": args.n,
        "d": args.d,
        "shards": args.shards,
        "nodes": args.nodes,
        "cpus": os.cpu_count(),
        "data_seconds": made,
        "raw_gb": round(args.n * args.d * 4 / GB, 3),
        "chunk_gb": round(chunk_gb, 4),
        "shard_raw_gb": round(args.n * args.d * 4 / args.shards / GB, 3),
        "single": single,
        "distributed": dist,
        "time_ratio": round(dist["seconds"] / single["seconds"], 2),
    }
    print(write(args.out, args.name, result, markdown))


def reevaluate(args) -> None:
    """Recall and the build's own timings again, from the indexes the last run left."""
    import json

    path = os.path.join(args.out, f"{args.name}.json")
    with open(path) as f:
        result = json.load(f)
    xq = _clustered(1000, result["d"], seed=10**9)
    gt = ground_truth(clustered_file(result["n"], result["d"]), xq)
    for key, folder in (("single", "single"), ("distributed", "dist")):
        result[key].update(evaluate(os.path.join(args.workdir, folder), xq, gt))
    print(write(args.out, args.name, result, markdown))


def markdown(r: dict) -> str:
    s, d = r["single"], r["distributed"]
    workers = ", ".join(f"{ROLES[k]} {v:.2f} GB" for k, v in d["peak_worker_rss_gb"].items())
    return f"""# Distributed build vs single-process build

`{r["command"]}` ({r["cpus"]} cores; the {r["nodes"]} Ray nodes are local processes sharing
them). Data: {r["n"]:,} x {r["d"]} synthetic clustered float32 ({r["raw_gb"]:.2f} GB raw,
{r["shard_raw_gb"]:.2f} GB per shard), {r["shards"]} shards; 1,000 held-out queries.

| build | wall s | peak memory of the build process | recall@10 at defaults | index |
| --- | ---: | ---: | ---: | --- |
| `python -m shards build` (one process) | {s["seconds"]} | {s["peak_rss_gb"]:.2f} GB | \
{s["recall_at_10"]:.4f} | {s["factory"]} {s["defaults"]} |
| `python -m jobs build` ({r["nodes"]} nodes) | {d["seconds"]} | {d["peak_rss_gb"]:.2f} GB \
(driver) | {d["recall_at_10"]:.4f} | {d["factory"]} {d["defaults"]} |

Distributed / single-process wall time: **{r["time_ratio"]}x** (the same two cores: the
ratio is the cost of distributing, not the gain of more machines).

Peak memory per Ray worker, by the task it ran at its peak: {workers}. Memory is resident
memory less file-backed pages (the memory-mapped input is page cache, not held memory). A chunk is
{r["chunk_gb"]:.3f} GB and a shard's raw vectors {r["shard_raw_gb"]:.2f} GB: a worker holds
about one shard (its index and the part it reads), never the whole input.
"""


if __name__ == "__main__":
    main()
