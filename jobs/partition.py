"""Step 1 of the distributed build: stream the input with Ray Data into per-shard parts.

The input is read as Ray Data read tasks over the source's row-range ``pieces`` (a Parquet
row group or a block of ``.npy`` rows each, local or on object storage), so no worker holds
more than a piece. Each block is prepared for the metric, routed to its shard by the same
``assign_shards`` as the single-process build, and written as part files
(``shards.parts``). Ray Data's own ``write_parquet(partition_cols=...)`` would do the
routing, but not keep the input order within a shard that makes the artefact identical to
the single-process build's.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from shards import parts
from shards.build import BuildOptions
from shards.errors import VsearchError
from shards.metric import Metric, prepare_vectors
from shards.partition import assign_shards
from shards.source import Chunk, VectorSource
from shards.storage import Store


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """How to open the input on any worker (a VectorSource does not travel: it holds files)."""

    path: str
    vector_column: str = "vector"
    id_column: str | None = None
    metadata_columns: tuple[str, ...] = ()

    @classmethod
    def of(cls, source: VectorSource) -> SourceSpec:
        return cls(
            source.path, source.vector_column, source.id_column, tuple(source.metadata_columns)
        )

    def open(self) -> VectorSource:
        return VectorSource(
            self.path,
            vector_column=self.vector_column,
            id_column=self.id_column,
            metadata_columns=list(self.metadata_columns),
        )


class InputDatasource(Datasource):
    """The input as one read task per piece; each yields a block of ``row``, ``id``,
    ``vector`` and ``meta`` (the metadata columns as a struct)."""

    def __init__(self, spec: SourceSpec, pieces: list[tuple[int, int]], n: int, d: int) -> None:
        super().__init__()
        self.spec, self.pieces, self.n, self.d = spec, pieces, n, d

    def get_name(self) -> str:
        return "VsearchInput"

    def estimate_inmemory_data_size(self) -> int:
        return self.n * (self.d * 4 + 16)

    def get_read_tasks(self, parallelism: int, **_: Any) -> list[ReadTask]:
        spec = self.spec
        tasks = []
        for start, stop in self.pieces:
            meta = BlockMetadata(
                num_rows=stop - start,
                size_bytes=(stop - start) * (self.d * 4 + 16),
                input_files=(spec.path,),
                exec_stats=None,
            )
            tasks.append(ReadTask(lambda a=start, b=stop: [_read(spec, a, b)], meta))
        return tasks


def _read(spec: SourceSpec, start: int, stop: int) -> pa.Table:
    chunk = spec.open().read(start, stop)
    columns = {
        "row": pa.array(np.arange(start, stop, dtype=np.int64)),
        "id": pa.array(chunk.ids, pa.int64()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(chunk.vectors.ravel()), chunk.vectors.shape[1]
        ),
    }
    if chunk.metadata is not None and chunk.metadata.num_columns:
        columns["meta"] = pa.StructArray.from_arrays(
            [c.combine_chunks() for c in chunk.metadata.columns], names=chunk.metadata.column_names
        )
    return pa.table(columns)


class _WriteParts:
    """The Ray Data map step: prepare, route and write one block; returns per-shard counts."""

    def __init__(self, parts_uri: str, opts: BuildOptions, n: int, d: int) -> None:
        self.parts_uri, self.opts, self.n, self.d = parts_uri, opts, n, d

    def __call__(self, block: pa.Table) -> pa.Table:
        """Per-shard counts; a mistake in the input comes back as a row (Ray Data would
        drop the exception's type and message on its way to the driver)."""
        try:
            counts = self._write(block)
        except VsearchError as exc:
            error = pa.array([pickle.dumps(exc)], pa.binary())
            return pa.table({"shard": pa.array([-1], pa.int64()), "rows": [0], "error": error})
        return pa.table(
            {
                "shard": pa.array(list(counts), pa.int64()),
                "rows": pa.array(list(counts.values()), pa.int64()),
                "error": pa.nulls(len(counts), pa.binary()),
            }
        )

    def _write(self, block: pa.Table) -> dict[int, int]:
        rows = block.column("row").to_numpy()
        start = int(rows[0])
        if not np.array_equal(rows, np.arange(start, start + len(rows))):
            raise RuntimeError("a Ray Data block is not a contiguous row range")  # never merged
        vec = block.column("vector").combine_chunks()
        x = vec.flatten().to_numpy().reshape(len(rows), self.d)
        metric = Metric.parse(self.opts.metric)
        x = prepare_vectors(x, self.d, metric, what=f"vectors near row {start}")
        ids = block.column("id").to_numpy().astype(np.int64)
        meta = None
        if "meta" in block.column_names:
            struct = block.column("meta").combine_chunks()
            meta = pa.Table.from_arrays(struct.flatten(), names=[f.name for f in struct.type])
        owner = assign_shards(ids, rows, self.opts.num_shards, self.opts.partition, self.n)
        return parts.write_parts(Store(self.parts_uri), Chunk(start, x, ids, meta), x, owner)


def partition(
    source: VectorSource, parts_uri: str, opts: BuildOptions, cpus: float = 1.0
) -> dict[int, int]:
    """Stream the input into per-shard parts under ``parts_uri``; returns rows per shard."""
    spec = SourceSpec.of(source)
    pieces = source.pieces(opts.chunk_rows)
    ds = ray.data.read_datasource(
        InputDatasource(spec, pieces, source.n, source.d), override_num_blocks=len(pieces)
    )
    written = ds.map_batches(
        _WriteParts(parts_uri, opts, source.n, source.d),
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=cpus,
    )
    counts: dict[int, int] = {}
    for row in written.iter_rows():
        if row["error"] is not None:
            raise pickle.loads(row["error"])  # the first mistake found in the input
        counts[int(row["shard"])] = counts.get(int(row["shard"]), 0) + int(row["rows"])
    return counts
