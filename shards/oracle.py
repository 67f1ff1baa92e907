"""Exact answers over one shard state: the ground truth of the online recall monitor.

A replica answers a query from a snapshot of its shards (``LiveState``: tombstones, delta,
log position). ``exact_over`` searches the same snapshot by brute force, over exactly the
rows the answer could come from (live, and matching the filter), so that the two differ only
by what the ANN index missed. It needs the exact vectors the index keeps for its refine
step, its flat storage or its IVF-Flat lists (``unmeasurable`` says when it has none).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shards._faiss import faiss
from shards.anatomy import Anatomy
from shards.errors import UnsupportedOperation
from shards.filtered import _knn, _with_selector, flat_storage, matches
from shards.filters import Filter
from shards.live import LiveState
from shards.merge import merge_results, translate_ids


def unmeasurable(index: faiss.Index) -> str | None:
    """Why exact answers cannot be had from ``index``'s own files, or None when they can."""
    if index.ntotal == 0:
        return None
    anatomy = Anatomy.of(index)
    if flat_storage(anatomy) is not None or _ivf_flat(anatomy) is not None:
        return None
    return (
        "the index keeps no exact vectors (quantised codes without a refine step): "
        "recall cannot be measured online; build with a refine step (e.g. ',RFlat')"
    )


def exact_search(
    shard: Any, st: LiveState, xq: np.ndarray, k: int, filt: Filter | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of prepared queries ``xq`` among the rows of ``shard`` under state ``st``
    (main rows not deleted, then the delta; only those ``filt`` matches): D, I (ids).

    Raises:
        UnsupportedOperation: the index keeps no exact vectors (``unmeasurable``).
    """
    index = shard.index
    if filt is not None:
        found = _with_selector(st, filt, matches(shard, st, filt), index.ntotal)
        selector, in_delta = found.selector, found.delta
    else:
        selector, in_delta = st.selector, None
    if index.ntotal == 0:
        result = _knn(xq, np.empty((0, index.d), np.float32), k, index.metric_type)
    else:
        result = _main(shard, xq, k, selector)
    delta = st.delta.x if in_delta is None else st.delta.x[in_delta]
    if len(delta):
        ids = st.delta.ids if in_delta is None else st.delta.ids[in_delta]
        D, R = _knn(xq, delta, k, index.metric_type)
        result = merge_results([result, (D, translate_ids(R, ids))], shard.keep_max)
    return result


def exact_over(
    index: Any, xq: np.ndarray, k: int, filt: Filter | None, states: list[LiveState]
) -> tuple[np.ndarray, np.ndarray]:
    """``exact_search`` over every shard of ``index`` (a ``ShardedIndex``), under the
    ``states`` its answer read (``applied.states()`` order), merged."""
    parts = [
        exact_search(shard, st, xq, k, filt)
        for shard, st in zip(index.shards.values(), states, strict=True)
    ]
    return merge_results(parts, index.metric.keep_max)


def _main(shard: Any, xq: np.ndarray, k: int, selector: Any) -> tuple[np.ndarray, np.ndarray]:
    anatomy = Anatomy.of(shard.index)
    storage = flat_storage(anatomy)
    if storage is not None:
        params = faiss.SearchParameters()
        params.sel = selector
        D, R = storage.search(xq, k, params=params)
        return D, translate_ids(R, shard.ids)
    ivf = _ivf_flat(anatomy)
    if ivf is None:
        raise UnsupportedOperation(unmeasurable(shard.index) or "no exact vectors")
    # every list assigned to every query (no quantizer search, which an HNSW quantizer would
    # answer approximately): IVF-Flat's distances over all its vectors, exact
    nlist, n = int(ivf.nlist), len(xq)
    params = faiss.SearchParametersIVF()
    params.nprobe, params.sel = nlist, selector
    Iq = np.ascontiguousarray(np.broadcast_to(np.arange(nlist, dtype=np.int64), (n, nlist)))
    Dq = np.zeros((n, nlist), np.float32)
    D = np.empty((n, k), np.float32)
    R = np.empty((n, k), np.int64)
    sp = faiss.swig_ptr
    ivf.search_preassigned_c(n, sp(xq), k, sp(Iq), sp(Dq), sp(D), sp(R), False, params)
    return D, translate_ids(R, shard.ids)


def _ivf_flat(anatomy: Anatomy) -> Any:
    """The IVF-Flat core (exact vectors in its lists, searched without transforms), or None."""
    core = anatomy.core
    plain = anatomy.refine is None and not anatomy.transforms
    return core if plain and isinstance(core, faiss.IndexIVFFlat) else None
