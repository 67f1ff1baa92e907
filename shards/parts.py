"""A build in steps that parallel workers can run: partition, then assemble each shard.

``write_parts`` takes a chunk of input rows (already prepared for the metric) and writes one
part file per shard it touches: ``<parts>/shard-00003/r000000065536.parquet`` holds the rows
of shard 3 from the chunk starting at input row 65536, with columns ``row``, ``id``,
``vector`` and ``meta`` (a struct of the metadata columns, so that no metadata column can
collide with the others). ``assemble`` then reads one shard's parts in input-row order and
adds them to a copy of the trained template, exactly as ``build_index`` adds them in one
process: the same rows in the same order give the same shard, byte for byte.

Part files are scratch: they live under the build's work folder and mean nothing to readers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards._faiss import faiss
from shards.artefact import ShardData, shard_name
from shards.build import with_id
from shards.errors import CorruptFile
from shards.source import Chunk
from shards.storage import Store

PART_PREFIX = "r"


def part_name(shard: int, start: int) -> str:
    return f"{shard_name(shard)}/{PART_PREFIX}{start:012d}.parquet"


def write_parts(store: Store, chunk: Chunk, x: np.ndarray, owner: np.ndarray) -> dict[int, int]:
    """Write the rows of ``chunk`` (prepared vectors ``x``) into one part file per shard in
    ``owner``; returns ``{shard: rows written}``. Rewriting a chunk replaces its files."""
    rows = np.arange(chunk.start, chunk.start + len(x), dtype=np.int64)
    counts: dict[int, int] = {}
    for s in np.unique(owner).tolist():
        mask = owner == s
        columns = {
            "row": pa.array(rows[mask]),
            "id": pa.array(chunk.ids[mask], pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x[mask].ravel()), x.shape[1]),
        }
        if chunk.metadata is not None and chunk.metadata.num_columns:
            picked = chunk.metadata.filter(pa.array(mask))
            columns["meta"] = pa.StructArray.from_arrays(
                [c.combine_chunks() for c in picked.columns], names=picked.column_names
            )
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), sink)
        store.write_bytes(part_name(s, chunk.start), sink.getvalue().to_pybytes())
        counts[s] = int(mask.sum())
    return counts


def read_parts(
    store: Store, shard: int
) -> Iterator[tuple[np.ndarray, np.ndarray, pa.Table | None]]:
    """Shard ``shard``'s rows in input order, one part at a time: ``(x, ids, metadata)``.

    Part names carry their chunk's first row and chunks are disjoint, so name order is row
    order; a part whose rows are out of order is refused (a corrupt work folder).
    """
    folder = shard_name(shard)
    last = -1
    for name in store.list_files(folder):
        if not (name.startswith(PART_PREFIX) and name.endswith(".parquet")):
            continue
        table = pq.read_table(pa.BufferReader(store.read_bytes(f"{folder}/{name}")))
        rows = table.column("row").to_numpy()
        if len(rows) and (rows[0] <= last or (np.diff(rows) <= 0).any()):
            raise CorruptFile(f"{store.path(folder)}/{name}: rows out of order", store.path(name))
        last = int(rows[-1]) if len(rows) else last
        vec = table.column("vector").combine_chunks()
        d = vec.type.list_size
        x = np.ascontiguousarray(vec.flatten().to_numpy().reshape(len(table), d), np.float32)
        ids = table.column("id").to_numpy().astype(np.int64)
        meta = None
        if "meta" in table.column_names:
            struct = table.column("meta").combine_chunks()
            meta = pa.Table.from_arrays(struct.flatten(), names=[f.name for f in struct.type])
        yield x, ids, meta


def assemble(
    template: faiss.Index,
    store: Store,
    shard: int,
    held_ids: np.ndarray,
    schema: pa.Schema | None = None,
) -> tuple[ShardData, list[tuple]]:
    """Shard ``shard`` from its parts: a copy of ``template`` with every row added except the
    held-out tuning ids (returned as ``[(x, ids, metadata), ...]`` to add after tuning).
    ``schema``: the input's metadata columns, for a shard no row went to."""
    index = faiss.clone_index(template)
    id_parts: list[np.ndarray] = []
    meta_parts: list[pa.Table] = []
    held: list[tuple] = []
    for x, ids, meta in read_parts(store, shard):
        is_held = np.isin(ids, held_ids)
        for hold in (False, True):
            mask = is_held == hold
            if not mask.any():
                continue
            part_meta = None if meta is None else with_id(meta.filter(pa.array(mask)), ids[mask])
            if hold:
                held.append((x[mask], ids[mask], part_meta))
                continue
            index.add(x[mask])
            id_parts.append(ids[mask])
            if part_meta is not None:
                meta_parts.append(part_meta)
    shard_ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.int64)
    metadata = pa.concat_tables(meta_parts) if meta_parts else None
    if metadata is None and schema is not None and len(schema):
        metadata = with_id(schema.empty_table(), np.empty(0, np.int64))
    return ShardData(index, shard_ids, metadata), held


def vector_blocks(
    store: Store, shard: int, held_ids: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(vectors, ids)`` of the shard's rows that are not held out: the exact answer's
    candidates when tuning (``autotune.ground_truth``)."""
    for x, ids, _ in read_parts(store, shard):
        keep = ~np.isin(ids, held_ids)
        yield x[keep], ids[keep]
