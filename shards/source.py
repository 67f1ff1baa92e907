"""Read build input (``.npy`` or Parquet) in bounded chunks: vectors, ids and metadata.

The input is a local path or any ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``...).
Besides streaming it in order (``chunks``), a source reads any row range (``read``), so
that parallel workers can each read their own ``pieces`` of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
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


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``min(size, n)`` distinct row numbers drawn uniformly with ``seed``, sorted (int64).

    Every builder draws its training and tuning rows here, so that builds of the same input
    with the same seed train and tune on the same rows.
    """
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(size, n), replace=False)).astype(np.int64)


class _RemoteNpy:
    """Row ranges of a ``.npy`` file on a ``pyarrow.fs`` filesystem, read with ranged reads."""

    def __init__(self, fs: pafs.FileSystem, path: str) -> None:
        self._file = fs.open_input_file(path)
        version = np.lib.format.read_magic(self._file)
        header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, self.dtype = header(self._file)
        self.shape: tuple[int, ...] = tuple(int(v) for v in shape)
        if fortran:
            raise InvalidInput(f"{path}: Fortran-ordered .npy is not supported")
        self._offset = self._file.tell()
        self.ndim = len(self.shape)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            return self._range(start, max(start, stop))
        return np.stack([self._range(int(r), int(r) + 1)[0] for r in rows])

    def _range(self, start: int, stop: int) -> np.ndarray:
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        data = self._file.read_at((stop - start) * row_bytes, self._offset + start * row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(stop - start, *self.shape[1:])


def _open(path: str) -> tuple[pafs.FileSystem | None, str]:
    """``(filesystem, path)`` of a URI; ``(None, path)`` for a local path."""
    if "://" not in path:
        if not os.path.exists(path):
            raise InvalidInput(f"input file {path} does not exist")
        return None, path
    try:
        fs, inner = pafs.FileSystem.from_uri(path)
    except (pa.ArrowException, ValueError) as exc:
        raise InvalidInput(f"cannot open {path}: {exc}") from None
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise InvalidInput(f"input file {path} does not exist")
    return fs, inner


class VectorSource:
    """Vectors from a ``.npy`` file (ids = row numbers) or a Parquet file, local or a URI."""

    def __init__(
        self,
        path: str,
        *,
        vector_column: str = "vector",
        id_column: str | None = None,
        metadata_columns: list[str] | None = None,
    ) -> None:
        self._fs, self._inner = _open(path)
        self.path = path
        self.vector_column, self.id_column = vector_column, id_column
        self.metadata_columns = list(metadata_columns or [])
        self.kind = "npy" if path.endswith(".npy") else "parquet"
        self.metadata_schema: pa.Schema  # the metadata columns' types (empty when none)
        if self.kind == "npy":
            if id_column or self.metadata_columns:
                raise InvalidInput("--id-column/--metadata-columns need Parquet input, not .npy")
            try:
                self._x = (
                    np.load(path, mmap_mode="r")
                    if self._fs is None
                    else _RemoteNpy(self._fs, self._inner)
                )
            except ValueError as exc:
                raise InvalidInput(f"{path}: not a readable .npy file ({exc})") from None
            if self._x.ndim != 2 or not np.issubdtype(self._x.dtype, np.floating):
                raise InvalidInput(f"{path}: expected a 2-d float array, got {self._x.shape}")
            self.n, self.d = int(self._x.shape[0]), int(self._x.shape[1])
            self.metadata_schema = pa.schema([])
        else:
            self._open_parquet()

    def _open_parquet(self) -> None:
        try:
            where = self.path if self._fs is None else self._fs.open_input_file(self._inner)
            self._pf = pq.ParquetFile(where)
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
        self.metadata_schema = pa.schema([schema.field(c) for c in self.metadata_columns])
        if pa.types.is_fixed_size_list(vtype):
            self.d = vtype.list_size
            return
        first = next(self._pf.iter_batches(batch_size=1, columns=[self.vector_column]), None)
        if first is None or self.n == 0:
            raise InvalidInput(
                f"{self.path}: no rows, and its vector column is not a fixed-size list that "
                "would give the dimension (an empty index needs one: see `shards create`)"
            )
        self.d = len(first.column(0)[0])

    def chunks(self, rows: int = 65536) -> Iterator[Chunk]:
        """Yield the whole input in order, ``rows`` rows at a time."""
        if self.kind == "npy":
            for start in range(0, self.n, rows):
                yield self.read(start, min(self.n, start + rows))
            return
        start = 0
        for batch in self._pf.iter_batches(batch_size=rows, columns=self._columns()):
            yield self._chunk(pa.Table.from_batches([batch]), start)
            start += batch.num_rows

    def pieces(self, rows: int = 65536) -> list[tuple[int, int]]:
        """The input as ``(start, stop)`` row ranges of about ``rows`` rows, in order.

        Parquet ranges follow row-group boundaries (a worker reads whole row groups), merging
        small groups up to ``rows``; a larger group is one piece.
        """
        if self.kind == "npy":
            return [(s, min(self.n, s + rows)) for s in range(0, self.n, rows)]
        out: list[tuple[int, int]] = []
        start = stop = 0
        for g in range(self._pf.metadata.num_row_groups):
            size = self._pf.metadata.row_group(g).num_rows
            if stop > start and stop - start + size > rows:
                out.append((start, stop))
                start = stop
            stop += size
        if stop > start:
            out.append((start, stop))
        return out

    def read(self, start: int, stop: int) -> Chunk:
        """Rows ``[start, stop)`` of the input."""
        if not 0 <= start <= stop <= self.n:
            raise InvalidInput(f"rows [{start}, {stop}) are outside the input's {self.n} rows")
        if self.kind == "npy":
            x = np.ascontiguousarray(self._x[start:stop], dtype=np.float32)
            return Chunk(start, x, np.arange(start, stop, dtype=np.int64), None)
        meta, first, groups = self._pf.metadata, 0, []
        for g in range(meta.num_row_groups):
            size = meta.row_group(g).num_rows
            if first + size > start and first < stop:
                groups.append((g, first))
            first += size
        if not groups:
            return self._chunk(self._pf.schema_arrow.empty_table().select(self._columns()), start)
        table = self._pf.read_row_groups([g for g, _ in groups], columns=self._columns())
        table = table.slice(start - groups[0][1], stop - start)
        return self._chunk(table, start)

    def _columns(self) -> list[str]:
        ids = [self.id_column] if self.id_column else []
        return [self.vector_column, *ids, *self.metadata_columns]

    def _chunk(self, table: pa.Table, start: int) -> Chunk:
        """A chunk from Parquet rows ``[start, start + len(table))``."""
        x = self._vectors(table.column(self.vector_column).combine_chunks(), start)
        if self.id_column:
            id_col = table.column(self.id_column)
            if id_col.null_count:
                raise InvalidInput(f"id column {self.id_column!r} has nulls near row {start}")
            ids = check_ids(id_col.to_numpy(), f"ids near row {start}", InvalidInput)
        else:
            ids = np.arange(start, start + len(x), dtype=np.int64)
        meta = table.select(self.metadata_columns) if self.metadata_columns else None
        return Chunk(start, x, ids, meta)

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
        """A uniform random sample of ``min(size, n)`` rows (``sample_rows``), in row order:
        ((m, d) float32, (m,) int64 ids)."""
        rows = sample_rows(self.n, size, seed)
        if self.kind == "npy":
            return np.ascontiguousarray(self._x[rows], dtype=np.float32), rows
        keep = np.zeros(self.n, dtype=bool)
        keep[rows] = True
        xs, ids = [], []
        for c in self.chunks():
            mask = keep[c.start : c.start + len(c.vectors)]
            xs.append(c.vectors[mask])
            ids.append(c.ids[mask])
        return np.concatenate(xs), np.concatenate(ids)
