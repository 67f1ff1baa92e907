"""Filtered search in one shard: a plan per query batch from the filter's selectivity.

The filter's row mask (``shards.filters``) is AND-ed with the tombstones. Then:

- ``exact``: few rows match (``exact_max_rows``: 32,000 at 50-d), or the index is Flat, and
  the index keeps exact vectors:
  brute force over exactly those rows. The answer is exact.
- ``ann``: the ANN index searched with the mask as an ``IDSelectorBitmap`` in the per-call
  parameters, the search widened by 1 / selectivity (nprobe, efSearch, CAGRA's candidate
  list, capped by what the index has) so that as many matching candidates are reached as an
  unfiltered search reaches. Never a post-filter: a selector returns k results whenever k
  rows match and are reached.
- ``ann-cpu``: the same on the CPU index of a GPU replica (the GPU clone takes no selector).

Rows in the delta are searched exactly over those that match. Masks, selectors and the
vectors of an exact plan are cached in the shard's state (a write makes a new state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shards._faiss import BLAS_MIN_QUERIES, faiss
from shards.anatomy import Anatomy
from shards.filters import Filter
from shards.live import LiveState
from shards.merge import merge_results, translate_ids
from shards.params import EF_SEARCH_MAX, ITOPK_MAX, SearchOverrides, make_params

# brute force over the matching rows while rows x dimension is at most this: on GloVe (50-d,
# 97,500 rows per shard, 2 cores) the exact plan outran the ANN one up to about 36,000 rows
# per shard (bench/results/filters.md); a little below, since it is also exact
EXACT_MAX_FLOATS = 1_600_000
CACHED = 32  # filters whose matches a state keeps (a bitmap of ntotal / 8 bytes each)
VECTOR_BYTES = 2 << 20  # an exact plan's vectors kept with its matches up to this size
EXACT_BLOCK = 65_536  # rows of flat storage copied for one brute-force step


@dataclass(frozen=True, eq=False)
class Matches:
    """The rows of one shard state that a filter matches (the live state also marks the
    delta rows it matches)."""

    count: int  # main-index rows that match
    live: int  # live main rows (the selectivity's denominator)
    bitmap: np.ndarray  # the matching main rows, packed (little bit order): ntotal / 8 bytes
    delta: np.ndarray  # bool per delta row
    rows: np.ndarray | None = None  # the matching rows, when few enough for the exact plan
    selector: Any = None  # IDSelectorBitmap over ``bitmap`` (made for the ann plan)
    vectors: np.ndarray | None = None  # of ``rows``, kept when at most VECTOR_BYTES

    @property
    def selectivity(self) -> float:
        return self.count / self.live if self.live else 0.0


def exact_max_rows(d: int) -> int:
    """Matching rows of a shard searched by brute force, for vectors of dimension ``d``."""
    return EXACT_MAX_FLOATS // max(d, 1)


def matches(shard: Any, st: LiveState, filt: Filter) -> Matches:
    """The rows of ``shard`` under state ``st`` that ``filt`` matches (cached in ``st``)."""
    key = ("filter", filt.key)
    found: Matches | None = st.params.get(key)
    if found is None:
        meta = shard.metadata
        mask = filt.mask(meta) if meta is not None else np.zeros(shard.index.ntotal, bool)
        if st.live is not None:
            mask &= st.live
        delta_meta = st.delta.meta
        delta = filt.mask(delta_meta) if delta_meta is not None and len(st.delta) else None
        count = int(mask.sum())
        found = Matches(
            count,
            st.live_main(shard.index.ntotal),
            np.packbits(mask, bitorder="little"),
            np.zeros(len(st.delta), bool) if delta is None else delta,
            np.flatnonzero(mask) if count <= exact_max_rows(shard.index.d) else None,
        )
        _keep(st, key, found)
    return found


def search_filtered(
    shard: Any, st: LiveState, xq: np.ndarray, k: int, ov: SearchOverrides, filt: Filter
) -> tuple[np.ndarray, np.ndarray, str]:
    """Top-k of ``xq`` among the rows ``filt`` matches: D, I (ids), and the plan taken."""
    found = matches(shard, st, filt)
    anatomy = Anatomy.of(shard.index)
    metric = shard.index.metric_type
    stored = flat_vectors(anatomy)
    few = found.rows is not None  # kept only when few enough for the exact plan
    # a Flat index is brute force anyway: faiss's Flat search with a selector skips BLAS
    if (few and anatomy.lossless) or (stored is not None and anatomy.flat):
        plan = "exact"
        rows = found.rows if found.rows is not None else _rows(found, shard.index.ntotal)
        large = found.vectors is None and len(rows) * shard.index.d * 4 > VECTOR_BYTES
        if stored is not None and large and len(xq) < BLAS_MIN_QUERIES:
            # faiss scans a few queries without BLAS anyway: skip the other rows, copy none
            found = _with_selector(st, filt, found, shard.index.ntotal)
            selected = faiss.SearchParameters()
            selected.sel = found.selector
            D, R = flat_storage(anatomy).search(xq, k, params=selected)
            I = translate_ids(R, shard.ids)
        elif stored is not None and large:  # in blocks, read from the flat storage
            D, R = _knn_rows(xq, stored, rows, k, metric, shard.keep_max)
            I = translate_ids(R, shard.ids)
        else:  # gathered (or reconstructed) once, kept with the matches when small
            vectors = _vectors(shard, st, filt, found, rows, stored)
            D, R = _knn(xq, vectors, k, metric)
            I = translate_ids(R, shard.ids[rows])
    else:
        plan = "ann-cpu" if shard.placed.placement.on_gpu else "ann"
        found = _with_selector(st, filt, found, shard.index.ntotal)
        wide = widen(ov, anatomy, found.selectivity)
        params, keep = make_params(shard.index, wide, found.selector, k)
        D, rows = shard.index.search(xq, k, params=params)
        del keep  # held until the search returned
        I = translate_ids(rows, shard.ids)
    result = (D, I)
    if found.delta.any():
        Dd, Rd = _knn(xq, st.delta.x[found.delta], k, metric)
        result = merge_results(
            [result, (Dd, translate_ids(Rd, st.delta.ids[found.delta]))], shard.keep_max
        )
    return result[0], result[1], plan


def flat_storage(anatomy: Anatomy) -> Any:
    """The IndexFlat holding the index's exact vectors (a Flat index, an exact refine, HNSW
    over flat storage), or None."""
    node: Any = None
    if anatomy.refine_exact:
        node = faiss.downcast_index(anatomy.refine.refine_index)
    elif not anatomy.transforms and anatomy.flat:
        node = anatomy.core
    elif not anatomy.transforms and anatomy.hnsw:
        node = faiss.downcast_index(anatomy.core.storage)
    if not isinstance(node, faiss.IndexFlat) or node.ntotal == 0:
        return None
    return node


def flat_vectors(anatomy: Anatomy) -> np.ndarray | None:
    """The index's exact vectors, (ntotal, d) float32, as a view of its flat storage, or
    None (``flat_storage``)."""
    node = flat_storage(anatomy)
    if node is None:
        return None
    return faiss.rev_swig_ptr(node.get_xb(), node.ntotal * node.d).reshape(node.ntotal, node.d)


def _rows(found: Matches, ntotal: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(found.bitmap, count=ntotal, bitorder="little"))


def _knn_rows(
    xq: np.ndarray, xb: np.ndarray, rows: np.ndarray, k: int, metric: int, keep_max: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over ``xb[rows]``, in blocks of ``EXACT_BLOCK`` rows: D and row numbers."""
    parts = []
    for start in range(0, max(len(rows), 1), EXACT_BLOCK):
        block = rows[start : start + EXACT_BLOCK]
        D, R = _knn(xq, xb[block], k, metric)
        parts.append((D, translate_ids(R, block)))
    return merge_results(parts, keep_max)


def widen(ov: SearchOverrides, anatomy: Anatomy, selectivity: float) -> SearchOverrides:
    """``ov`` with the ANN search widened by 1 / ``selectivity`` (capped by the index)."""
    if selectivity >= 1.0:
        return ov
    grow = 1.0 / max(selectivity, 1e-9)
    ivf = anatomy.ivf
    if ivf is not None:
        nprobe = ov.nprobe if ov.nprobe is not None else ivf.nprobe
        ov = replace(ov, nprobe=min(int(ivf.nlist), math.ceil(nprobe * grow)))
    if anatomy.hnsw:
        ef = ov.ef_search if ov.ef_search is not None else anatomy.core.hnsw.efSearch
        ov = replace(ov, ef_search=min(EF_SEARCH_MAX, math.ceil(ef * grow)))
    if anatomy.cagra:
        itopk = ov.itopk_size if ov.itopk_size is not None else 64
        ov = replace(ov, itopk_size=min(ITOPK_MAX, math.ceil(itopk * grow)))
    return ov


def _knn(xq: np.ndarray, xb: np.ndarray, k: int, metric: int) -> tuple[np.ndarray, np.ndarray]:
    if len(xb) == 0:  # padded as faiss pads: the worst score, id -1
        worst = np.finfo(np.float32).max * (-1 if metric == faiss.METRIC_INNER_PRODUCT else 1)
        return np.full((len(xq), k), worst, np.float32), np.full((len(xq), k), -1, np.int64)
    D, R = faiss.knn(xq, xb, k, metric=metric)
    return D, R


def _vectors(
    shard: Any, st: LiveState, filt: Filter, found: Matches, rows, stored=None
) -> np.ndarray:
    """The stored vectors of ``rows`` (from flat storage, else reconstructed), kept with the
    matches when small (``VECTOR_BYTES``)."""
    if found.vectors is not None:
        return found.vectors
    vectors = stored[rows] if stored is not None else shard.reconstruct_rows(rows)
    if vectors.nbytes <= VECTOR_BYTES:
        _keep(st, ("filter", filt.key), replace(found, vectors=vectors))
    return vectors


def _with_selector(st: LiveState, filt: Filter, found: Matches, ntotal: int) -> Matches:
    if found.selector is None:
        sel = faiss.IDSelectorBitmap(ntotal, faiss.swig_ptr(found.bitmap))
        found = replace(found, selector=sel)
        _keep(st, ("filter", filt.key), found)
    return found


def _keep(st: LiveState, key: tuple, found: Matches) -> None:
    filters = [k for k in st.params if k[0] == "filter"]
    if key not in st.params and len(filters) >= CACHED:
        st.params.pop(filters[0], None)
    st.params[key] = found
