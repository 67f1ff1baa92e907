"""Read build input (``.npy`` or Parquet) in bounded chunks: vectors, ids and metadata."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards.errors import InvalidInput
from shards.ids import check_ids


@dataclass
class Chunk:
    """Rows ``[start, start + len(vectors))`` of the input."""

    start: int
    vectors: np.ndarray  # (m, d) float32, C-contiguous
    ids: np.ndarray  # (m,) int64
    metadata: pa.Table | None


class VectorSource:
    """Vectors from a ``.npy`` file (ids = row numbers) or a Parquet file."""

    def __init__(
        self,
        path: str,
        *,
        vector_column: str = "vector",
        id_column: str | None = None,
        metadata_columns: list[str] | None = None,
    ) -> None:
        if not os.path.exists(path):
            raise InvalidInput(f"input file {path} does not exist")
        self.path = path
        self.vector_column, self.id_column = vector_column, id_column
        self.metadata_columns = list(metadata_columns or [])
        self.kind = "npy" if path.endswith(".npy") else "parquet"
        if self.kind == "npy":
            if id_column or self.metadata_columns:
                raise InvalidInput("--id-column/--metadata-columns need Parquet input, not .npy")
            try:
                self._x = np.load(path, mmap_mode="r")
            except ValueError as exc:
                raise InvalidInput(f"{path}: not a readable .npy file ({exc})") from None
            if self._x.ndim != 2 or not np.issubdtype(self._x.dtype, np.floating):
                raise InvalidInput(f"{path}: expected a 2-d float array, got {self._x.shape}")
            self.n, self.d = self._x.shape
        else:
            self._open_parquet()

    def _open_parquet(self) -> None:
        try:
            self._pf = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(f"{self.path}: not a readable Parquet file ({exc})") from None
        schema = self._pf.schema_arrow
        wanted = [self.vector_column, *([self.id_column] if self.id_column else [])]
        for col in wanted + self.metadata_columns:
            if col not in schema.names:
                raise InvalidInput(f"{self.path}: no column {col!r} (columns: {schema.names})")
        vtype = schema.field(self.vector_column).type
        if not (pa.types.is_list(vtype) or pa.types.is_fixed_size_list(vtype)) or not (
            pa.types.is_floating(vtype.value_type)
        ):
            raise InvalidInput(f"vector column {self.vector_column!r} must be a list of floats")
        if self.id_column and not pa.types.is_integer(schema.field(self.id_column).type):
            raise InvalidInput(f"id column {self.id_column!r} must be integers")
        self.n = self._pf.metadata.num_rows
        first = next(self._pf.iter_batches(batch_size=1, columns=[self.vector_column]), None)
        if first is None or self.n == 0:
            raise InvalidInput(f"{self.path}: no rows")
        self.d = len(first.column(0)[0])

    def chunks(self, rows: int = 65536) -> Iterator[Chunk]:
        """Yield the whole input in order, ``rows`` rows at a time."""
        if self.kind == "npy":
            for start in range(0, self.n, rows):
                x = np.ascontiguousarray(self._x[start : start + rows], dtype=np.float32)
                yield Chunk(start, x, np.arange(start, start + len(x), dtype=np.int64), None)
            return
        cols = [self.vector_column, *([self.id_column] if self.id_column else [])]
        start = 0
        for batch in self._pf.iter_batches(batch_size=rows, columns=cols + self.metadata_columns):
            x = self._vectors(batch.column(self.vector_column), start)
            if self.id_column:
                id_col = batch.column(self.id_column)
                if id_col.null_count:
                    raise InvalidInput(f"id column {self.id_column!r} has nulls near row {start}")
                ids = check_ids(id_col.to_numpy(), f"ids near row {start}", InvalidInput)
            else:
                ids = np.arange(start, start + len(x), dtype=np.int64)
            meta = None
            if self.metadata_columns:
                meta = pa.Table.from_batches([batch.select(self.metadata_columns)])
            yield Chunk(start, x, ids, meta)
            start += len(x)

    def _vectors(self, col: pa.Array, start: int) -> np.ndarray:
        if col.null_count:
            raise InvalidInput(f"vector column has nulls near row {start}")
        if pa.types.is_list(col.type):
            lengths = pc.list_value_length(col).to_numpy()
            if (lengths != self.d).any():
                bad = start + int(np.flatnonzero(lengths != self.d)[0])
                raise InvalidInput(f"row {bad} has a vector of length != {self.d}")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat.reshape(len(col), self.d), dtype=np.float32)

    def sample(self, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A uniform random sample of ``min(size, n)`` rows: ((m, d) float32, (m,) int64 ids)."""
        rng = np.random.default_rng(seed)
        if self.kind == "npy":
            rows = np.sort(rng.choice(self.n, min(size, self.n), replace=False))
            return np.ascontiguousarray(self._x[rows], dtype=np.float32), rows.astype(np.int64)
        keep = np.zeros(self.n, dtype=bool)
        keep[rng.choice(self.n, min(size, self.n), replace=False)] = True
        xs, ids = [], []
        for c in self.chunks():
            mask = keep[c.start : c.start + len(c.vectors)]
            xs.append(c.vectors[mask])
            ids.append(c.ids[mask])
        return np.concatenate(xs), np.concatenate(ids)
