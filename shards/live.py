"""What changed in a shard since its version was built: tombstones, the delta, the sequence.

A ``LiveState`` is an immutable snapshot: a search takes the current one and uses it to the
end, a mutation publishes a new one. ``sequence`` is the mutation log position the state
has applied (0: none); a mutation at or below it was applied already and is skipped, so a
replayed log is idempotent.

Adds go to an append buffer that grows by doubling (amortised O(1) per added row): every
state holds a view of its first ``n`` rows, and a later add writes only past them, so no
reader sees a row change. Deletes in the main index flip bits of a bitmap that faiss reads
through ``IDSelectorBitmap``; deletes in the delta copy the delta without those rows. An
upsert of an id already present is a delete of it, then an add, in one new state. The
metadata of delta rows is an Arrow table aligned with them (chunks appended, no copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from shards._faiss import faiss
from shards.merge import translate_ids

MIN_CAPACITY = 1024


@dataclass(frozen=True, eq=False)
class Delta:
    """Rows added since the version was built: (n, d) float32 vectors and (n,) int64 ids."""

    x: np.ndarray
    ids: np.ndarray
    meta: pa.Table | None = None  # one row per delta row ("id" first), when the index has any
    _buffer: tuple[np.ndarray, np.ndarray] | None = None  # (capacity rows) x and ids
    _used: list[int] = field(default_factory=lambda: [0])  # rows of the buffer handed out
    _order: list[np.ndarray] = field(default_factory=list)  # argsort of ids, made once

    @classmethod
    def empty(cls, d: int, schema: pa.Schema | None = None) -> Delta:
        meta = None if schema is None else schema.empty_table()
        return cls(np.empty((0, d), np.float32), np.empty(0, np.int64), meta)

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, x: np.ndarray, ids: np.ndarray, meta: pa.Table | None = None) -> Delta:
        """A delta with ``x``/``ids`` (and their ``meta`` rows, in this delta's schema) after
        these rows (this one is left as it is)."""
        n, m = len(self.ids), len(ids)
        buf = self._buffer
        if buf is None or self._used[0] != n or n + m > len(buf[1]):
            cap = max(MIN_CAPACITY, 2 * (n + m))
            buf = (np.empty((cap, self.x.shape[1]), np.float32), np.empty(cap, np.int64))
            buf[0][:n], buf[1][:n] = self.x, self.ids
            used = [n]
        else:
            used = self._used  # the same buffer: rows past n are nobody's yet
        buf[0][n : n + m], buf[1][n : n + m] = x, ids
        used[0] = n + m
        return Delta(buf[0][: n + m], buf[1][: n + m], self._meta_after(meta, ids), buf, used)

    def _meta_after(self, meta: pa.Table | None, ids: np.ndarray) -> pa.Table | None:
        if self.meta is None:
            return None
        schema = self.meta.schema
        if meta is None:
            meta = pa.table({f.name: pa.nulls(len(ids), f.type) for f in schema})
        if "id" in meta.column_names:
            meta = meta.drop_columns(["id"])
        rows = meta.add_column(0, "id", pa.array(ids, pa.int64()))
        return pa.concat_tables([self.meta, rows.select(schema.names).cast(schema)])

    def without(self, drop: np.ndarray) -> Delta:
        """A delta without the rows where ``drop`` (bool, (n,)) is true (a copy)."""
        keep = ~drop
        meta = None if self.meta is None else self.meta.filter(pa.array(keep))
        return Delta(np.ascontiguousarray(self.x[keep]), self.ids[keep].copy(), meta)

    def position(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this delta, -1 where absent (ids sorted once per delta)."""
        if len(self.ids) == 0:
            return np.full(len(ids), -1, np.int64)
        if not self._order:
            self._order.append(np.argsort(self.ids, kind="stable"))
        order = self._order[0]
        pos = np.minimum(np.searchsorted(self.ids[order], ids), len(order) - 1)
        return np.where(self.ids[order][pos] == ids, order[pos], -1)

    def search(self, xq: np.ndarray, k: int, metric_type: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the delta: D (nq, k) float32, I (nq, k) ids, -1 padded."""
        D, rows = faiss.knn(xq, self.x, k, metric=metric_type)
        return D, translate_ids(rows, self.ids)


@dataclass(frozen=True, eq=False)
class LiveState:
    """Tombstones of main rows, the delta and the log position, as one snapshot."""

    delta: Delta
    sequence: int = 0
    live: np.ndarray | None = None  # (ntotal,) bool per main row; None: nothing deleted
    selector: faiss.IDSelector | None = None  # keeps live rows; None when nothing is deleted
    bitmap: np.ndarray | None = None  # the bytes the selector points into (kept alive here)
    # faiss parameter objects made under this state, by (overrides, k): they point to its
    # selector, so they live and die with it (a new state starts with none)
    params: dict[tuple, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, d: int, sequence: int = 0, schema: pa.Schema | None = None) -> LiveState:
        """``schema``: the index's metadata table schema ("id" first), or None."""
        return cls(Delta.empty(d, schema), sequence)

    @property
    def dirty(self) -> bool:
        return self.live is not None or len(self.delta) > 0

    def live_main(self, ntotal: int) -> int:
        return ntotal if self.live is None else int(self.live.sum())

    def after(self, sequence: int | None) -> bool:
        """True when a mutation at ``sequence`` is new to this state (None: unsequenced)."""
        return sequence is None or sequence > self.sequence

    def with_sequence(self, sequence: int | None) -> LiveState:
        return self if sequence is None else replace(self, sequence=sequence, params={})

    def with_adds(self, x: np.ndarray, ids: np.ndarray, meta: pa.Table | None = None) -> LiveState:
        return replace(self, delta=self.delta.append(x, ids, meta), params={})

    def with_deletes(self, rows: np.ndarray, in_delta: np.ndarray, ntotal: int) -> LiveState:
        """Main rows ``rows`` tombstoned and delta rows where ``in_delta`` removed."""
        st = self
        if len(rows):
            live = np.ones(ntotal, bool) if st.live is None else st.live.copy()
            live[rows] = False
            bitmap = np.packbits(live, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(bitmap))
            st = replace(st, live=live, selector=sel, bitmap=bitmap)
        if in_delta.any():
            st = replace(st, delta=st.delta.without(in_delta))
        return replace(st, params={})
