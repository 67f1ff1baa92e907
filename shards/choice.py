"""Automatic index choice and the memory estimate of an index before it is built.

The rules come from ``bench/choice_sweep.py`` (GloVe, MiniLM, synthetic sets) and the side-by-side
runs of ``bench/compare.py`` (docs/INDEX_CHOICE.md has both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shards import cagra
from shards._faiss import faiss
from shards.errors import InvalidInput
from shards.metric import Metric
from shards.sizing import index_bytes

# Up to this many vectors per shard, exact search is within about 2x of the best ANN index
# at recall@10 0.95 (batched and single queries) and is chosen (docs/INDEX_CHOICE.md).
FLAT_MAX = 20_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200  # candidates kept while inserting, for the graphs chosen here
# From this many dimensions the CPU choice is an HNSW graph over the vectors projected by PCA
# to half their dimensions, with an exact re-rank on the full vectors: on MiniLM 100k x 384 it
# answered 1.3x the batched queries of the IVF fast-scan index and of hnswlib, and 1.3x the
# IVF index's lone queries (docs/INDEX_CHOICE.md); below it (GloVe, 50-d) IVF wins both. L2
# and cosine (MiniLM as cosine: recall 0.958 at efSearch 32, k_factor 2, as fast as L2), not
# raw inner products: HNSW under inner products of vectors of any norm misses neighbours
# (0.92 where L2 finds 0.99 in tests/shards/test_ann.py) and no real set of them was measured.
PCA_HNSW_MIN_D = 256
# ... up to this many vectors per shard: a graph of 1M x 96 took 277 s to build on 2 cores,
# where the IVF index took a fraction, and at that size the IVF index won on the synthetic set
PCA_HNSW_MAX_N = 1_000_000
TRAFFIC = ("mixed", "single", "batch")  # the query shapes a build can be chosen for
TUNED_ON = {"batch": "batches", "single": "lone queries", "mixed": "both"}  # what each times
# On a GPU, exact search stays the choice up to this many vectors per shard: a Flat scan of
# 250,000 x 96 floats is under 0.1 GB per query batch (docs/GPU.md has the measurements).
GPU_FLAT_MAX = 250_000


@dataclass(frozen=True)
class Choice:
    """An index decision: the faiss factory string and why it was picked."""

    factory: str
    reason: str
    estimated_bytes: int


def nlist_for(n_total: int) -> int:
    """Number of IVF lists for ``n_total`` vectors: a power of two near 1.6 * sqrt(n)."""
    return int(min(65536, max(16, 2 ** round(math.log2(max(1.0, 1.6 * math.sqrt(n_total)))))))


def pq_m_for(d: int) -> int:
    """Sub-quantizer count for 4-bit fast-scan PQ: one dim each up to d=64, else two or more."""
    if d <= 64:
        return d
    for dsub in (2, 3, 4, 5, 6, 8):
        if d % dsub == 0:
            return d // dsub
    return d


def pq8_m_for(d: int) -> int:
    """Sub-quantizers of 8-bit PQ for the GPU: 2 dims each up to d=128, else 4 (or near)."""
    want = 2 if d <= 128 else 4
    for dsub in range(want, d + 1):
        if d % dsub == 0:
            return d // dsub
    return 1


def template_index(factory: str, d: int, metric_type: int = faiss.METRIC_L2) -> faiss.Index:
    """An empty index for ``factory``: a faiss factory string or ``CAGRA[<degree>]``.

    Raises:
        InvalidInput: the string is neither.
    """
    degree = cagra.parse_factory(factory)
    if degree is not None:
        return cagra.empty(d, degree, metric_type)
    try:
        return faiss.index_factory(d, factory, metric_type)
    except RuntimeError as exc:
        raise InvalidInput(f"invalid faiss factory string {factory!r}: {exc}") from None


def choose_index(
    n_per_shard: int,
    d: int,
    metric: Metric | str = Metric.L2,
    *,
    num_shards: int = 1,
    memory_budget: int | None = None,
    prefer_hnsw: bool = False,
    target: str = "cpu",
    gpu_build: bool = False,
    traffic: str = "mixed",
) -> Choice:
    """Pick a factory string for shards of ``n_per_shard`` vectors of dimension ``d``.

    ``memory_budget`` is in bytes per shard; the quantizer is trained on all shards' data,
    so IVF list counts follow the total size ``n_per_shard * num_shards``.

    ``target="gpu"`` picks indexes a GPU serves: Flat, then CAGRA when ``gpu_build`` (a GPU
    with cuVS builds the graph), else 8-bit IVF-PQ with the exact re-rank on the CPU.

    Raises:
        InvalidInput: nothing fits ``memory_budget``, or sizes are not positive.
    """
    if n_per_shard <= 0 or d <= 0 or num_shards <= 0:
        raise InvalidInput(f"sizes must be positive (n={n_per_shard}, d={d}, shards={num_shards})")
    metric = Metric.parse(metric)
    nlist = nlist_for(n_per_shard * num_shards)
    quantizer = f"IVF{nlist}" if nlist <= 8192 else f"IVF{nlist}_HNSW32"
    m = pq_m_for(d)
    if target not in ("cpu", "gpu"):
        raise InvalidInput(f"target must be 'cpu' or 'gpu', got {target!r}")
    if traffic not in TRAFFIC:
        raise InvalidInput(f"traffic must be one of {TRAFFIC}, got {traffic!r}")
    if target == "gpu":
        return _choose_gpu(n_per_shard, d, quantizer, memory_budget, gpu_build)
    hnsw = (f"HNSW{HNSW_M},Flat", f"HNSW{HNSW_M} graph, efConstruction {HNSW_EF_CONSTRUCTION}")
    fast_scan = (f"{quantizer},PQ{m}x4fs,RFlat", "IVF fast-scan PQ + exact refine")
    if prefer_hnsw:
        candidates = [(hnsw[0], "HNSW asked for")]
    elif n_per_shard <= FLAT_MAX:
        candidates = [("Flat", f"n <= {FLAT_MAX:,} per shard: exact search")]
    elif d >= PCA_HNSW_MIN_D and metric is not Metric.IP and n_per_shard <= PCA_HNSW_MAX_N:
        # every traffic shape: the graph over half the dimensions won batches and lone
        # queries alike; the shape decides how it is tuned (docs/INDEX_CHOICE.md)
        candidates = [
            (
                f"PCA{d // 2},HNSW{HNSW_M},Flat,RFlat",
                f"{metric.value}, d >= {PCA_HNSW_MIN_D}: HNSW{HNSW_M} graph over PCA to "
                f"{d // 2} dimensions + exact refine, the fastest batched and for lone queries "
                f"on 384-d sentence embeddings; traffic {traffic}: tuned on {TUNED_ON[traffic]}",
            ),
            (fast_scan[0], f"memory budget: {fast_scan[1]}"),
        ]
    else:
        # one index for every traffic shape: the shape decides how it is tuned (lone queries,
        # batches, or their geometric mean), not which index it is (docs/INDEX_CHOICE.md)
        why = {
            "batch": "the fastest batched in every sweep but L2 at 384-d",
            "single": "the fastest for lone queries in the side-by-side runs",
            "mixed": "the fastest batched in every sweep but L2 at 384-d and for lone queries "
            "in the side-by-side runs",
        }[traffic]
        candidates = [
            (
                fast_scan[0],
                f"{fast_scan[1]}: traffic {traffic}: {why}, tuned on {TUNED_ON[traffic]}",
            )
        ]
    if not prefer_hnsw and n_per_shard > FLAT_MAX:
        candidates.append((f"{quantizer},Flat", "memory budget: IVF-Flat (no PQ codes)"))
    # Under a tight memory budget, fall back to the compressed codes alone (lossy).
    candidates.append((f"{quantizer},PQ{m}x4fs", "memory budget: PQ codes without refinement"))
    return _first_fitting(candidates, n_per_shard, d, memory_budget)


def _choose_gpu(
    n: int, d: int, quantizer: str, memory_budget: int | None, gpu_build: bool
) -> Choice:
    if n <= GPU_FLAT_MAX:
        candidates = [("Flat", f"GPU, n <= {GPU_FLAT_MAX:,}: exact search")]
    else:
        candidates = []
        if gpu_build:
            candidates.append(("CAGRA64", f"GPU, n > {GPU_FLAT_MAX:,}: CAGRA graph (cuVS)"))
        candidates.append(
            (f"{quantizer},PQ{pq8_m_for(d)},RFlat", "GPU: IVF-PQ, exact re-rank on the CPU")
        )
    candidates.append((f"{quantizer},PQ{pq8_m_for(d)}", "memory budget: IVF-PQ codes only"))
    return _first_fitting(candidates, n, d, memory_budget)


def _first_fitting(candidates, n: int, d: int, memory_budget: int | None) -> Choice:
    for factory, reason in candidates:
        need = estimate_bytes(factory, n, d)
        if memory_budget is None or need <= memory_budget:
            return Choice(factory, reason, need)
    raise InvalidInput(
        f"no index fits the memory budget of {memory_budget:,} bytes per shard "
        f"(smallest needs {need:,}); use more shards or a larger budget"
    )


def estimate_bytes(factory: str, n: int, d: int) -> int:
    """Estimated size in bytes of ``factory`` holding ``n`` vectors (as serialised/in RAM)."""
    return index_bytes(template_index(factory, d), n)
