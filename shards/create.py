"""An empty index: a collection defined by its dimension, metric and metadata columns.

Every write then goes to the shards' delta (searched exactly) through the mutation log;
a compaction turns them into a built version.
"""

from __future__ import annotations

import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from shards.build import BuildOptions, build_index
from shards.errors import InvalidInput
from shards.manifest import Manifest
from shards.source import VectorSource


def parse_columns(spec: str) -> dict[str, pa.DataType]:
    """``"text:string,year:int64,tags:list<string>"`` as column types (Arrow aliases)."""
    out: dict[str, pa.DataType] = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, kind = item.partition(":")
        name, kind = name.strip(), kind.strip()
        if not name or not kind:
            raise InvalidInput(f"metadata column {item!r}: expected NAME:TYPE (e.g. text:string)")
        if name in ("id", "vector") or name in out:
            raise InvalidInput(f"metadata column name {name!r} is reserved or repeated")
        out[name] = column_type(kind)
    return out


def column_type(kind: str) -> pa.DataType:
    """An Arrow type from its alias (``string``, ``int64``, ``timestamp[us]``...), or
    ``list<alias>``."""
    if kind.startswith("list<") and kind.endswith(">"):
        return pa.list_(column_type(kind[5:-1].strip()))
    try:
        return pa.type_for_alias(kind)
    except ValueError:
        raise InvalidInput(
            f"unknown column type {kind!r}: use an Arrow alias such as string, int64, "
            "float64, bool, date32, timestamp[us], or list<string>"
        ) from None


def create_index(
    out_uri: str,
    dim: int,
    columns: dict[str, pa.DataType] | None = None,
    opts: BuildOptions | None = None,
) -> Manifest:
    """Write a new, empty version under ``out_uri`` (a Flat index of dimension ``dim``,
    ``opts``' metric and shard count) whose metadata columns are ``columns``."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise InvalidInput(f"the dimension must be a positive integer, got {dim!r}")
    columns = dict(columns or {})
    fields = [pa.field("vector", pa.list_(pa.float32(), dim)), *columns.items()]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "empty.parquet")
        pq.write_table(pa.schema(fields).empty_table(), path)
        source = VectorSource(path, metadata_columns=list(columns))
        return build_index(source, out_uri, opts or BuildOptions())
