"""Metadata lookup by id across shards, and export of the id map (all vectorised in Arrow)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards.errors import InvalidQuery
from shards.index import ShardedIndex


def lookup_metadata(index: ShardedIndex, ids, columns: list[str] | None = None) -> pa.Table:
    """One row per id, in order, with an ``id`` column; nulls where an id has no metadata."""
    ids = pa.array(np.asarray(ids, dtype=np.int64).ravel(), pa.int64())
    # delta rows first: an upserted id's new row wins over its tombstoned main row
    # (``index_in`` finds the first match)
    deltas = [s.delta_metadata for s in index.shards.values() if s.delta_metadata is not None]
    tables = deltas + [s.metadata for s in index.shards.values() if s.metadata is not None]
    if not tables:
        return pa.table({"id": ids})
    table = pa.concat_tables(tables)
    if columns is not None:
        missing = sorted(set(columns) - set(table.column_names))
        if missing:
            raise InvalidQuery(f"unknown metadata column(s) {missing}")
        table = table.select(["id", *columns])
    rows = pc.index_in(ids, value_set=table["id"])
    out = table.take(rows)
    return out.set_column(0, "id", ids)


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
