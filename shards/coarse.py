"""Shared coarse quantization: assign queries to IVF lists once for all shards of a process.

Every shard of an index is a copy of one trained IVF index, so their quantizers are equal and
the assignment of a query is the same on every shard. Computing it once and calling
``search_preassigned`` on each shard returns the same results as searching each shard
on its own (faiss's ``IndexShardsIVF`` does the same), without S-1 quantizer searches.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from shards._faiss import faiss
from shards.anatomy import Anatomy
from shards.params import HNSW_PARAMS, SearchOverrides, make_params


def ivf_layout(index: faiss.Index) -> tuple[Any, Any, Any] | None:
    """``(refine, ivf, flat)`` for ``IVF`` or ``Refine(IVF)`` with a flat refine index (``flat``
    its refine vectors, found once: a downcast per search cost 2% of a batch's time in the
    service), else None."""
    a = Anatomy.of(index)
    if not a.preassignable:
        return None
    flat = None if a.refine is None else faiss.downcast_index(a.refine.refine_index)
    return a.refine, a.ivf, flat


SMALL_LISTS = 200  # average vectors per list below which fast-scan implementation 10 wins


def tune_fastscan(index: faiss.Index) -> None:
    """Pick the fast-scan search implementation for the index's list sizes (bench/README.md).

    Measured on GloVe: with ~95 vectors per list (4 shards) implementation 10 is 17% faster
    than faiss's default choice; with ~380 (1 shard) it is 12% slower.
    """
    a = Anatomy.of(index)
    if not (a.preassignable and a.fast_scan):
        return
    ivf = a.ivf
    if ivf.ntotal / max(1, ivf.nlist) < SMALL_LISTS:
        ivf.implem = 10


def quantizer_digest(index: faiss.Index) -> str | None:
    """sha256 of the serialised coarse quantizer, or None when ``index`` has no usable layout."""
    layout = ivf_layout(index)
    if layout is None:
        return None
    raw = faiss.serialize_index(layout[1].quantizer)
    return hashlib.sha256(raw.tobytes()).hexdigest()


def coarse_assign(index: faiss.Index, xq: np.ndarray, ov: SearchOverrides, layout=None):
    """``(Dq, Iq)``, each (nq, nprobe): the lists every shard would probe for ``xq``
    (``layout``: ``ivf_layout(index)`` if the caller holds it)."""
    layout = layout or ivf_layout(index)
    assert layout is not None
    ivf = layout[1]
    nprobe = int(ov.nprobe if ov.nprobe is not None else ivf.nprobe)
    qparams = None
    if ov.quantizer_ef_search is not None:
        qparams = HNSW_PARAMS()
        qparams.efSearch = ov.quantizer_ef_search
    return ivf.quantizer.search(xq, nprobe, params=qparams)


def search_preassigned(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    ov: SearchOverrides,
    sel,
    coarse,
    layout=None,
    cache: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Same as ``index.search`` with per-call params, given ``coarse = coarse_assign(...)``.

    ``layout``: ``ivf_layout(index)`` if the caller holds it; ``cache``: where the parameter
    object for ``ov`` (and ``sel``) is kept between calls (a shard state's): building it
    took about a third of a lone query's time."""
    found = layout or ivf_layout(index)
    assert found is not None, "search_preassigned needs an IVF layout (ivf_layout)"
    refine, ivf, flat = found
    Dq, Iq = coarse
    key = ("preassigned", ov)
    made = None if cache is None else cache.get(key)
    if made is None:
        made = make_params(ivf, ov, sel)
        if cache is not None:
            if len(cache) >= 256:
                cache.clear()
            cache[key] = made
    params = made[0]  # ``made`` keeps what it points to alive until the search returns
    kb = k if refine is None else int(k * (ov.k_factor or refine.k_factor))
    n = len(xq)
    D = np.empty((n, kb), dtype=np.float32)
    I = np.empty((n, kb), dtype=np.int64)
    sp = faiss.swig_ptr
    ivf.search_preassigned_c(n, sp(xq), kb, sp(Iq), sp(Dq), sp(D), sp(I), False, params)
    if refine is None:
        return D, I
    flat.compute_distance_subset(n, sp(xq), kb, sp(D), sp(I))
    keep_max = index.metric_type == faiss.METRIC_INNER_PRODUCT
    worst = -np.inf if keep_max else np.inf
    D = np.where(I >= 0, D, worst).astype(np.float32)
    order = np.argsort(-D if keep_max else D, axis=1, kind="stable")[:, :k]
    D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
    fill = -np.finfo(np.float32).max if keep_max else np.finfo(np.float32).max
    return np.where(I >= 0, D, fill).astype(np.float32), I
