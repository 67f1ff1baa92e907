"""What bounds exact (Flat) search here: its FLOP rate against this machine's sgemm rate.

Flat search = inner products (an sgemm, 2*nq*nb*d FLOP) + top-k selection over nq*nb scores.
"""

from __future__ import annotations

import time

import numpy as np

from shards._faiss import faiss

FAISS_DEFAULT_BLAS_THRESHOLD = 128_000  # faiss 1.15: BLAS only when nq * d >= this


def best_of(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sgemm_gflops(m: int, n: int, k: int, reps: int = 3) -> float:
    """numpy float32 (m, k) @ (k, n) rate in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    return 2 * m * n * k / best_of(lambda: a @ b, reps) / 1e9


def measure(xb: np.ndarray, xq: np.ndarray, k: int = 10) -> dict:
    """GFLOP/s of peak sgemm, of Flat's sgemm work alone (numpy), and of faiss Flat itself."""
    xq = np.ascontiguousarray(xq[:2048])
    nq, d = xq.shape
    nb = len(xb)
    index = faiss.IndexFlatIP(d)
    index.add(xb)
    flop = 2 * nq * nb * d
    out: dict = {"nb": nb, "nq": nq, "d": d, "threads": faiss.omp_get_max_threads()}
    dbs = int(faiss.cvar.distance_compute_blas_database_bs)
    out["faiss_database_bs"] = dbs
    sweep = {}
    for bs in (1024, 4096, 16384, 65536):
        faiss.cvar.distance_compute_blas_database_bs = bs
        sweep[bs] = flop / best_of(lambda: index.search(xq, k)) / 1e9
    faiss.cvar.distance_compute_blas_database_bs = dbs
    out["flat_gflops_by_database_bs"] = sweep
    ours = int(faiss.cvar.distance_compute_blas_threshold)
    out["blas_threshold"] = {"faiss_default": FAISS_DEFAULT_BLAS_THRESHOLD, "vsearch": ours}
    for name, threshold in (("faiss_default", FAISS_DEFAULT_BLAS_THRESHOLD), ("vsearch", ours)):
        faiss.cvar.distance_compute_blas_threshold = threshold
        by_nq = {}
        for n in (1, 4, 16, 64, 256, nq):
            calls = max(1, 256 // n)
            t = best_of(
                lambda n=n, calls=calls: [
                    index.search(xq[i * n : (i + 1) * n], k) for i in range(calls)
                ]
            )
            by_nq[n] = 2 * n * calls * nb * d / t / 1e9
        out[f"flat_gflops_by_nq_{name}"] = by_nq
    faiss.cvar.distance_compute_blas_threshold = ours
    # faiss first: numpy's OpenBLAS threads spin for a while after a GEMM and would slow it
    index.search(xq, k)  # warm-up: thread pool and page faults
    t_flat = best_of(lambda: index.search(xq, k))
    # the same sgemm work as faiss's BLAS path: query block x database blocks of dbs rows
    xbt = [np.ascontiguousarray(xb[i : i + dbs].T) for i in range(0, nb, dbs)]
    buf = np.empty((nq, dbs), dtype=np.float32)
    t_gemm = best_of(lambda: [np.matmul(xq, b, out=buf[:, : b.shape[1]]) for b in xbt])
    out["sgemm_peak_gflops"] = sgemm_gflops(2048, 2048, 2048)
    out["gemm_only_gflops"] = flop / t_gemm / 1e9
    out["flat_gflops"] = flop / t_flat / 1e9
    out["flat_fraction_of_peak"] = out["flat_gflops"] / out["sgemm_peak_gflops"]
    out["non_gemm_share_of_flat_time"] = max(0.0, 1 - t_gemm / t_flat)
    return out
