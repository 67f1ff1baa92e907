"""Import faiss once, with one clear message when neither faiss build is installed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import faiss
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "vsearch needs faiss: install the 'cpu' extra (pip install 'vsearch[cpu]', faiss-cpu) "
        "or, on a CUDA machine, the 'gpu' extra (pip install 'vsearch[gpu]', faiss-gpu-cuvs); "
        "never both, they install the same module"
    ) from exc

# The stubs shipped with faiss lack the GPU classes and some CPU ones (IndexHNSWCagra...):
# code that uses those goes through this untyped handle to the same module.
faiss_ext: Any = faiss

BLAS_MIN_QUERIES = 8


def use_blas_from(queries: int, d: int) -> None:
    """Make faiss's exact search use BLAS from ``queries`` queries of dimension ``d`` up.

    faiss 1.15 switches from its SIMD loop to BLAS only when nq * d >= 128,000 (2,560
    queries at d=50), yet BLAS is faster from about 8 queries on (measured: 4x at 64 queries,
    docs/INDEX_CHOICE.md). This is a process-wide faiss setting; it also speeds up the
    coarse quantizer of IVF indexes.
    """
    faiss.cvar.distance_compute_blas_threshold = max(1, queries * d)


@contextmanager
def one_omp_thread() -> Iterator[None]:
    """Run faiss with one OpenMP thread in the calling thread only, then restore its setting.

    A single query gains nothing from a parallel region (faiss splits work over queries), but
    opening one wakes the OpenMP team, whose threads then spin waiting; with several callers
    searching at once those spinning threads take the cores. Measured at 8 concurrent single
    queries on 2 cores (medians of 5 alternating runs, IVF-PQ fast-scan + refine): GloVe 1.09x
    and 1.25x, MiniLM 1.14x and 1.21x the throughput; one caller alone: unchanged. OpenMP's
    thread count is per calling thread, so other callers are unaffected.
    """
    before = faiss.omp_get_max_threads()
    if before == 1:
        yield
        return
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


_one_thread = threading.local()  # set in threads seen running one OpenMP thread


def runs_one_omp_thread() -> bool:
    """Whether the calling thread runs faiss with one OpenMP thread, asked of OpenMP until it
    says so, then remembered for the thread. Each faiss call lets go of Python's lock, and
    with more callers than cores every extra let-go queues them (8 lone-query callers on 2
    cores); a thread that raises its count later only runs its lone queries with more
    threads, which changes their speed, not their answers."""
    if getattr(_one_thread, "seen", False):
        return True
    if faiss.omp_get_max_threads() == 1:
        _one_thread.seen = True
        return True
    return False


__all__ = [
    "BLAS_MIN_QUERIES",
    "faiss",
    "faiss_ext",
    "one_omp_thread",
    "runs_one_omp_thread",
    "use_blas_from",
]
