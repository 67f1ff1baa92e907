"""Stored rows read back: by id (``by_ids``) or every live row matching a filter, in id
order and a page at a time (``matching``). What LangChain's ``get_by_ids``, LlamaIndex's
``delete(ref_doc_id)`` and a "scroll" of Qdrant or Chroma's ``get`` need.

Every shard is read under one snapshot of all their states (``ShardedIndex.snapshot``), so
an answer never mixes two states of a shard, nor sees a write applied to some shards only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from shards.errors import InvalidQuery
from shards.filters import Filter
from shards.index import ShardedIndex
from shards.live import LiveState
from shards.metadata import lookup_metadata

MAX_PAGE = 10_000  # rows of one page of ``matching``


@dataclass
class Rows:
    """Live rows: ``ids`` (n,) int64, their ``metadata`` (an ``id`` column first) and their
    stored ``vectors`` (n, d) float32, each None when not asked for (or no metadata)."""

    ids: np.ndarray
    metadata: pa.Table | None = None
    vectors: np.ndarray | None = None


def by_ids(
    index: ShardedIndex,
    ids,
    columns: list[str] | None = None,
    vectors: bool = False,
    states: list[LiveState] | None = None,
) -> Rows:
    """The live rows among ``ids``, in the order asked; ids not live here are left out.
    ``states``: the shards' states to read (``index.snapshot()``; taken now by default)."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    states = index.applied.states() if states is None else states
    return _rows(index, ids[index.contains(ids, states)], columns, vectors, states)


def matching(
    index: ShardedIndex,
    filt: Filter | None,
    limit: int,
    after: int = -1,
    columns: list[str] | None = None,
    vectors: bool = False,
    states: list[LiveState] | None = None,
) -> Rows:
    """The first ``limit`` live rows with an id above ``after`` that match ``filt`` (every
    live row when None), in ascending id order: pass the last id back as ``after`` for the
    next page. Scans each shard's metadata (a filter costs O(rows), like an exact plan).
    ``states``: as for ``by_ids``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidQuery(f"limit must be an integer in [1, {MAX_PAGE}], got {limit!r}")
    if isinstance(after, bool) or not isinstance(after, int):
        raise InvalidQuery(f"after must be an integer id, got {after!r}")
    found = []
    states = index.applied.states() if states is None else states
    for shard, st in zip(index.shards.values(), states, strict=True):
        rows = np.arange(len(shard.ids)) if st.live is None else np.flatnonzero(st.live)
        live = np.concatenate([shard.ids[rows], st.delta.ids])
        if filt is not None:
            if shard.metadata is None:
                raise InvalidQuery("filter: this index has no metadata columns to filter on")
            cols = list(filt.columns)
            main = shard.metadata.select(cols).take(pa.array(rows, pa.int64()))
            delta = st.delta.meta
            if delta is None:  # rows written without metadata: every column null
                n = len(st.delta.ids)
                delta = pa.table({c: pa.nulls(n, main.schema.field(c).type) for c in cols})
            live = live[np.concatenate([filt.mask(main), filt.mask(delta.select(cols))])]
        live = live[live > after]
        found.append(np.sort(live)[:limit])
    chosen = np.sort(np.concatenate(found))[:limit] if found else np.empty(0, np.int64)
    return _rows(index, chosen, columns, vectors, states)


def _rows(index: ShardedIndex, ids: np.ndarray, columns, vectors: bool, states) -> Rows:
    has_meta = index.metadata_schema is not None and len(index.metadata_schema) > 0
    meta = lookup_metadata(index, ids, columns, states) if has_meta else None
    x = index.reconstruct(ids, states) if vectors and len(ids) else None
    if vectors and x is None:
        x = np.empty((0, index.dim), np.float32)
    return Rows(ids, meta, x)
