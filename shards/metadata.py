"""Metadata lookup by id across shards, and export of the id map (all vectorised in Arrow)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.errors import InvalidQuery
from shards.index import ShardedIndex
from shards.live import LiveState


def check_columns(columns, schema: pa.Schema | None) -> tuple[str, ...] | None:
    """A request's metadata ``columns`` (None: all of them) as a tuple, each one the
    version's metadata ``schema`` has (``id`` is always given, never named)."""
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise InvalidQuery("metadata columns must be a list of column names")
    unknown = sorted(set(columns) - set(schema.names if schema is not None else ()))
    if unknown:
        raise InvalidQuery(f"unknown metadata column(s) {unknown}")
    return tuple(columns)


def lookup_metadata(
    index: ShardedIndex,
    ids,
    columns: list[str] | None = None,
    states: list[LiveState] | None = None,
) -> pa.Table:
    """One row per id, in order, with an ``id`` column; nulls where an id has no live row
    under ``states`` (from ``index.snapshot()``; taken now by default).

    Each shard finds the ids among its live main rows (sorted ids, binary search; metadata
    rows are aligned with main rows) and its delta (sorted once per state): nothing per
    request is proportional to the index's size.
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    states = index.applied.states() if states is None else states
    shards = [
        (s, s.metadata, st)
        for s, st in zip(index.shards.values(), states, strict=True)
        if s.metadata is not None
    ]
    if not shards:
        return pa.table({"id": pa.array(ids, pa.int64())})
    names = shards[0][1].column_names
    if columns is not None:
        missing = sorted(set(columns) - set(names))
        if missing:
            raise InvalidQuery(f"unknown metadata column(s) {missing}")
        names = ["id", *columns]
    pieces, where = [], []
    for shard, meta, st in shards:  # one state for the main rows and the delta
        rows = shard.rows_of(ids, st)
        pos = st.delta.position(ids)
        main, delta = np.flatnonzero(rows >= 0), np.flatnonzero(pos >= 0)
        if len(main):
            pieces.append(meta.select(names).take(rows[main]))
            where.append(main)
        if len(delta) and st.delta.meta is not None:
            pieces.append(st.delta.meta.select(names).take(pos[delta]))
            where.append(delta)
    schema = shards[0][1].select(names).schema
    found = pa.concat_tables(pieces) if pieces else schema.empty_table()
    at = np.full(len(ids), -1, np.int64)
    if where:
        at[np.concatenate(where)] = np.arange(found.num_rows)
    out = found.take(pa.array(at, pa.int64(), mask=at < 0))
    return out.set_column(0, "id", pa.array(ids, pa.int64()))


def id_map(index: ShardedIndex) -> pa.Table:
    """Every live id with its shard and row (row -1 for ids in the delta index)."""
    parts = []
    for number, shard in index.shards.items():
        rows, delta = shard.live_rows(), shard.delta_ids
        parts.append(
            pa.table(
                {
                    "id": np.concatenate([shard.ids[rows], delta]),
                    "shard": np.full(len(rows) + len(delta), number, np.int32),
                    "row": np.concatenate([rows, np.full(len(delta), -1)]).astype(np.int64),
                }
            )
        )
    return pa.concat_tables(parts)


def export_id_map(index: ShardedIndex, path: str) -> int:
    """Write ``id_map`` to a Parquet file; returns the number of ids."""
    table = id_map(index)
    pq.write_table(table, path)
    return table.num_rows
