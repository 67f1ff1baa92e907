"""One shard in memory: its faiss index, row->id map, tombstones and a delta index of adds."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards import hugepages
from shards._faiss import faiss
from shards.anatomy import Anatomy
from shards.artefact import ShardData
from shards.coarse import ivf_layout, search_preassigned, tune_fastscan
from shards.errors import UnknownId, UnsupportedOperation
from shards.filtered import search_filtered
from shards.filters import Filter
from shards.gpu import GpuOptions, Placed, Placement, place
from shards.live import LiveState
from shards.log import Mutation
from shards.merge import id_lookup, merge_results
from shards.params import SearchOverrides, make_params


class Shard:
    """Searches one shard: main index (minus tombstones) plus the delta index, merged."""

    def __init__(self, data: ShardData, metric_keep_max: bool, base_sequence: int = 0) -> None:
        self.index = data.index
        tune_fastscan(self.index)  # before any search: not a per-request knob
        hugepages.advise(self.index)  # random reads over the vectors: fewer TLB misses
        self.layout = ivf_layout(self.index)  # found once: each search would walk it again
        self._distances_exact = Anatomy.of(self.index).distances_exact
        self.ids = data.ids
        self.metadata = _aligned(data.metadata, self.ids)
        self.keep_max = metric_keep_max
        # ids 0..n-1 in row order (one shard built from an array): rows need no translation
        self._rows_are_ids = bool(np.array_equal(self.ids, np.arange(len(self.ids))))
        self._id_of_row = id_lookup(self.ids)  # .take(rows): ids, -1 padding kept
        order = np.argsort(self.ids, kind="stable")
        self._sorted_ids, self._sorted_rows = self.ids[order], order
        self._lock = threading.Lock()
        schema = None if self.metadata is None else self.metadata.schema
        # the version's files include the log up to ``base_sequence``: apply what follows
        self._state = LiveState.empty(self.index.d, base_sequence, schema)
        self.placed = Placed([self.index], Placement("cpu"))

    def place(self, device: str | GpuOptions) -> Placement:
        """Search from ``device`` ("cpu", "cuda:N" or GpuOptions); the CPU index stays the
        source of truth for reconstruction, updates and compaction."""
        self.placed = place(self.index, device)
        return self.placed.placement

    @property
    def ntotal(self) -> int:
        """Live vectors: main rows not deleted plus delta vectors."""
        st = self._state
        return st.live_main(self.index.ntotal) + len(st.delta)

    @property
    def sequence(self) -> int:
        """The mutation log position this shard has applied (0: none)."""
        return self._state.sequence

    @property
    def state(self) -> LiveState:
        """The current snapshot (immutable: a mutation publishes a new one)."""
        return self._state

    def search(
        self,
        xq: np.ndarray,
        k: int,
        ov: SearchOverrides,
        coarse=None,
        st: LiveState | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of prepared queries ``xq`` (nq, d) float32: D (nq, k) float32, I (nq, k) ids.

        ``coarse``: the IVF assignment from ``coarse.coarse_assign``, shared by all shards;
        ``st``: the state to search (the current one by default).
        """
        st = self._state if st is None else st
        if self.placed.placement.on_gpu:
            D, I = self.placed.search(xq, k, ov, st.selector)
        elif coarse is not None:
            D, I = search_preassigned(
                self.index, xq, k, ov, st.selector, coarse, self.layout, st.params
            )
        else:
            made = self._cpu_params(ov, k, st)  # held until the search returns
            D, I = search_c(self.index, xq, k, made[0])
        result = (D, self._ids_of(I))
        if len(st.delta):
            delta = st.delta.search(xq, k, self.index.metric_type)
            result = merge_results([result, delta], self.keep_max)
        return result

    def plan_lone(self, ov: SearchOverrides, k: int) -> LonePlan | None:
        """What a lone query needs to search the current state straight in faiss, or None
        when that state has a delta (answers merge two searches) or the shard searches on a
        GPU (``search`` serialises there)."""
        st = self._state
        if len(st.delta) or self.placed.placement.on_gpu:
            return None
        made = self._cpu_params(ov, k, st)
        ids = None if self._rows_are_ids else self._id_of_row
        search = self.index.search_c  # type: ignore[attr-defined]
        return LonePlan(self, st, search, made, ids, self._distances_exact)

    def _ids_of(self, rows: np.ndarray) -> np.ndarray:
        """External ids of main-index ``rows`` (-1 padding kept)."""
        return rows if self._rows_are_ids else self._id_of_row.take(rows)

    def search_filtered(
        self, xq: np.ndarray, k: int, ov: SearchOverrides, filt: Filter, st: LiveState
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Top-k among the live rows ``filt`` matches under state ``st``: D, I and the plan
        taken (``shards.filtered``)."""
        return search_filtered(self, st, xq, k, ov, filt)

    def reconstruct_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of main-index ``rows`` (n, d) float32."""
        with self._lock:
            return _reconstruct_rows(self.index, rows)

    def _cpu_params(self, ov: SearchOverrides, k: int, st: LiveState) -> tuple:
        """The faiss parameter object for these overrides and k under state ``st`` (its delete
        selector), made once: building it costs about a sixth of a single-query search. faiss
        only reads it, so concurrent searches share it. The cache belongs to the state, so a
        delete (a new state) drops every entry that points to the old tombstones."""
        key = (ov, k)
        made = st.params.get(key)
        if made is None:
            if len(st.params) >= 256:
                st.params.clear()  # callers hold what they took until their search returns
            made = st.params[key] = make_params(self.index, ov, st.selector, k)
        return made

    def rows_of(self, ids: np.ndarray, st: LiveState | None = None) -> np.ndarray:
        """Main-index row of each id, -1 where the id is not a live main row under state
        ``st`` (the current one by default)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self._sorted_ids) == 0:  # no main rows (an empty index, a shard no row went to)
            return np.full(len(ids), -1, np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, len(self._sorted_ids) - 1)
        found = self._sorted_ids[pos] == ids
        rows = np.where(found, self._sorted_rows[pos], -1)
        live = (self._state if st is None else st).live
        if live is not None:
            rows = np.where((rows >= 0) & live[np.maximum(rows, 0)], rows, -1)
        return rows

    def contains(self, ids: np.ndarray, st: LiveState | None = None) -> np.ndarray:
        """Bool per id: live in this shard (main or delta) under state ``st`` (the current
        one by default)."""
        st = self._state if st is None else st  # one state for both parts
        return (self.rows_of(ids, st) >= 0) | (st.delta.position(ids) >= 0)

    def reconstruct(self, ids: np.ndarray, st: LiveState | None = None) -> np.ndarray:
        """Stored vectors of ``ids``, (n, d) float32, under state ``st`` (the current one by
        default).

        Raises:
            UnknownId: an id is not live in this shard.
        """
        ids = np.asarray(ids, dtype=np.int64)
        st = self._state if st is None else st  # one state for the main rows and the delta
        rows = self.rows_of(ids, st)
        out = np.empty((len(ids), self.index.d), dtype=np.float32)
        main = rows >= 0
        if main.any() and not Anatomy.of(self.index).reconstructable:
            raise UnsupportedOperation(
                "this index (IVF fast-scan PQ without a refine step) cannot return stored "
                "vectors: search by vectors, or build with a refine step (e.g. ',RFlat')"
            )
        if main.any():
            with self._lock:
                out[main] = _reconstruct_rows(self.index, rows[main])
        if (~main).any():
            pos = st.delta.position(ids[~main])
            if (pos < 0).any():
                raise UnknownId(f"id {int(ids[~main][pos < 0][0])} is not in the index")
            out[~main] = st.delta.x[pos]
        return out

    def apply(self, m: Mutation, owned: np.ndarray | None = None) -> int:
        """Apply mutation ``m``: its ids leave this shard (main rows tombstoned, delta rows
        dropped), then for an upsert the rows where ``owned`` (bool, (n,); None: all) join
        the delta. Returns how many of the ids were live here. A mutation at or below the
        applied sequence was applied already: nothing changes and 0 is returned."""
        seq = m.sequence or None
        with self._lock:
            st = self._state
            if not st.after(seq):
                return 0
            rows = self.rows_of(m.ids)
            rows = rows[rows >= 0]
            in_delta = np.isin(st.delta.ids, m.ids)
            gone = len(rows) + int(in_delta.sum())
            st = st.with_deletes(rows, in_delta, self.index.ntotal)
            if m.op == "upsert":
                assert m.x is not None
                keep = np.ones(len(m), bool) if owned is None else owned
                if keep.any():
                    meta = None if m.metadata is None else m.metadata.filter(pa.array(keep))
                    st = st.with_adds(m.x[keep], m.ids[keep], meta)
            self._state = st.with_sequence(seq)
            return gone

    def live_rows(self) -> np.ndarray:
        """Main-index rows not deleted, ascending (int64)."""
        live = self._state.live
        return np.arange(self.index.ntotal) if live is None else np.flatnonzero(live)

    @property
    def delta_ids(self) -> np.ndarray:
        """Ids in the delta index, in insertion order."""
        return self._state.delta.ids

    @property
    def tombstones(self) -> int:
        """Main rows deleted or replaced since the version was built."""
        return self.index.ntotal - self._state.live_main(self.index.ntotal)

    @property
    def delta_metadata(self) -> pa.Table | None:
        """Metadata rows of the delta ("id" first), aligned with ``delta_ids``."""
        return self._state.delta.meta

    @property
    def dirty(self) -> bool:
        return self._state.dirty

    def live_metadata(self) -> pa.Table | None:
        """The metadata rows of every live id (main rows first, then the delta's)."""
        if self.metadata is None:
            return None
        st = self._state
        main = self.metadata
        if st.live is not None:
            live_ids = pa.array(self.ids[self.live_rows()], pa.int64())
            main = main.filter(pc.is_in(main["id"], value_set=live_ids))
        delta = st.delta.meta
        return main if delta is None or delta.num_rows == 0 else pa.concat_tables([main, delta])

    def live_contents(self) -> tuple[np.ndarray, np.ndarray]:
        """All live vectors and ids, main rows first: ((n, d) float32, (n,) int64)."""
        st, rows = self._state, self.live_rows()
        if not Anatomy.of(self.index).lossless:
            raise UnsupportedOperation(
                "compaction needs the exact vectors, but this index stores them lossily "
                "(PQ without refinement): rebuild it from the source data"
            )
        with self._lock:
            x = _reconstruct_rows(self.index, rows)
        return np.concatenate([x, st.delta.x]), np.concatenate([self.ids[rows], st.delta.ids])


class LonePlan:
    """One shard's search of one (overrides, k) under one state, made once: its faiss search
    function, parameter object (``made``: it and what it holds), row -> id map (None: rows
    are ids) and whether its distances are exact (``Anatomy.distances_exact``). Valid while
    ``state`` is the shard's current state and the shard is not placed anew
    (``ShardedIndex.place`` drops the plans)."""

    __slots__ = ("exact", "ids", "made", "params", "search", "shard", "state")

    def __init__(self, shard: Shard, state: LiveState, search, made: tuple, ids, exact) -> None:
        self.shard, self.state, self.search, self.made, self.ids = shard, state, search, made, ids
        self.params, self.exact = made[0], exact


def search_c(index: faiss.Index, xq: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` without faiss's Python wrapper (its checks and attribute reads cost a
    lone query about 7 us): ``xq`` is prepared (C-contiguous float32, the index's d)."""
    n = len(xq)
    D = np.empty((n, k), dtype=np.float32)
    I = np.empty((n, k), dtype=np.int64)
    sp = faiss.swig_ptr
    index.search_c(n, sp(xq), k, sp(D), sp(I), params)  # type: ignore[attr-defined]
    return D, I


def _aligned(metadata: pa.Table | None, ids: np.ndarray) -> pa.Table | None:
    """``metadata`` with row i describing main row i (filters read it by row): reordered
    once here if its file keeps another order."""
    if metadata is None or np.array_equal(metadata["id"].to_numpy(), ids):
        return metadata
    order = pc.index_in(pa.array(ids, pa.int64()), value_set=metadata["id"])
    return metadata.take(order)


def _reconstruct_rows(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
        ivf.make_direct_map()  # once per loaded index; needed to reconstruct IVF rows
    return index.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))
