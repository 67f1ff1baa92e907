"""How many bytes an index takes: in RAM and on disk (the choice's budget) and on a GPU.

One place for the estimates: ``shards.choice`` checks a memory budget with them, ``shards.gpu``
refuses a clone that does not fit, and the swap states what a transition needs (two clones).
"""

from __future__ import annotations

from typing import Any

from shards._faiss import faiss, faiss_ext
from shards.anatomy import Anatomy
from shards.errors import GpuOutOfMemory

HEADROOM = 1.2  # free memory needed per byte of index (temporary buffers while cloning)


def index_bytes(index: faiss.Index, n: int) -> int:
    """Estimated size in bytes of ``index``'s kind holding ``n`` vectors (RAM or serialised)."""
    a = Anatomy.of(index)
    total = sum(4 * t.d_in * t.d_out for t in a.transforms)
    if a.refine is not None:
        total += index_bytes(a.refine.refine_index, n)
    return int(total + _core_bytes(a.core, n))


def _core_bytes(core: Any, n: int) -> float:
    if isinstance(core, faiss.IndexHNSW):
        m = core.hnsw.nb_neighbors(1)  # type: ignore[attr-defined]  # stub gap
        links = n * (2 * m + m / max(1, m - 1)) * 4
        return links + n * 12 + index_bytes(core.storage, n)
    if isinstance(core, faiss.IndexIVF):
        nlist = core.nlist
        total = float(index_bytes(core.quantizer, nlist))
        if isinstance(core, faiss.IndexIVFPQFastScan):
            pq = core.pq
            total += pq.M * pq.ksub * pq.dsub * 4
            # codes are stored in blocks of bbs vectors; on average half a block is padding
            codes = (n + nlist * core.bbs / 2) * core.code_size
        else:
            if isinstance(core, faiss.IndexIVFPQ):
                total += core.pq.M * core.pq.ksub * core.pq.dsub * 4
            codes = n * core.code_size
        return total + codes + n * 8
    if isinstance(core, faiss.IndexFlatCodes):
        return n * core.code_size
    return n * core.d * 4


def gpu_bytes(index: faiss.Index, float16: bool = False) -> int:
    """Device memory ``index`` (a GPU-servable core, no refine) takes once cloned."""
    index = faiss.downcast_index(index)
    n, d = index.ntotal, index.d
    if isinstance(index, faiss_ext.IndexHNSWCagra):
        degree = index.hnsw.nb_neighbors(0)
        return n * d * 4 + n * degree * 8  # vectors + the graph (int64 while converted)
    if isinstance(index, faiss.IndexFlat):
        return n * d * (2 if float16 else 4)
    ivf = faiss.extract_index_ivf(index)
    # cuVS pads each list to a multiple of 32 vectors (interleaved layout)
    return index_bytes(index, n) + ivf.nlist * 32 * ivf.code_size


def check_fits(required: int, free: int, device: str) -> None:
    """Raise GpuOutOfMemory unless ``required`` bytes (with headroom) fit in ``free``."""
    need = int(required * HEADROOM)
    if need > free:
        raise GpuOutOfMemory(
            f"shard needs about {need / 2**20:,.0f} MiB on {device} (index "
            f"{required / 2**20:,.0f} MiB + {HEADROOM - 1:.0%} headroom) but only "
            f"{free / 2**20:,.0f} MiB is free; use more shards, float16 or a smaller index"
        )
