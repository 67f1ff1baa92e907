"""Checked writes: an upsert or a delete turned into a ``Mutation``, or a 400 naming the fault.

One set of checks for the library, the CLI and the service's router, applied before
anything is logged: a rejected request changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import InvalidInput
from shards.ids import check_ids
from shards.log import Mutation
from shards.metric import Metric, prepare_vectors

MAX_WRITE_ROWS = 65536  # one request; larger loads are a build (python -m shards build)
MAX_KEY_CHARS = 200  # an idempotency key (a UUID has 36)


def metadata_schema(table_schema: pa.Schema | None) -> pa.Schema | None:
    """The metadata columns of a shard's metadata table (without ``id``), or None."""
    if table_schema is None:
        return None
    return pa.schema([f for f in table_schema if f.name != "id"])


def upsert_of(
    x: Any,
    ids: Any,
    metadata: Any = None,
    *,
    dim: int,
    metric: Metric,
    schema: pa.Schema | None,
    max_rows: int = MAX_WRITE_ROWS,
    key: str | None = None,
) -> Mutation:
    """The upsert of vectors ``x`` (n, d) with ``ids`` (n,) and optional ``metadata`` rows;
    ``key``: an idempotency key (see ``check_key``).

    ``metadata``: a list of n mappings, a mapping of columns, or an Arrow table, with
    columns of ``schema`` (missing ones are null).

    Raises:
        InvalidInput: bad ids (outside [0, 2**63), repeated), vectors (dimension, NaN/inf,
            count), metadata (unknown column, wrong type, row count), or too many rows.
    """
    ids = _checked_ids(ids, max_rows)
    x = prepare_vectors(x, dim, metric, what="vectors", error=InvalidInput)
    if len(x) != len(ids):
        raise InvalidInput(f"upsert needs one vector per id: {len(x)} vectors, {len(ids)} ids")
    meta = metadata_table(metadata, schema, len(ids))
    return Mutation("upsert", ids, x, meta, key=check_key(key))


def delete_of(ids: Any, max_rows: int = MAX_WRITE_ROWS, key: str | None = None) -> Mutation:
    """The delete of ``ids``; ids not present are no error (they count as not deleted)."""
    return Mutation("delete", _checked_ids(ids, max_rows), key=check_key(key))


def check_key(key: Any) -> str | None:
    """An idempotency key: None, or a string of 1 to ``MAX_KEY_CHARS`` printable characters
    that the client makes unique per write (a UUID) and sends again on a retry.

    Raises:
        InvalidInput: anything else.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise InvalidInput(
            f"idempotency_key must be a string of 1 to {MAX_KEY_CHARS} printable characters"
        )
    return key


def _checked_ids(ids: Any, max_rows: int) -> np.ndarray:
    ids = check_ids(ids, what="ids", error=InvalidInput)
    if len(ids) == 0:
        raise InvalidInput("ids must not be empty")
    if len(ids) > max_rows:
        raise InvalidInput(f"at most {max_rows} rows per write, got {len(ids)}")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise InvalidInput(f"id {int(uniq[counts > 1][0])} appears more than once in one write")
    return ids


def metadata_table(metadata: Any, schema: pa.Schema | None, n: int) -> pa.Table | None:
    """``metadata`` as an Arrow table of ``schema`` with ``n`` rows (None when not given)."""
    if metadata is None:
        return None
    columns = _columns(metadata, n)
    if schema is None or len(schema) == 0:
        if any(columns):
            raise InvalidInput("this index has no metadata columns; leave metadata out")
        return None
    unknown = sorted(set(columns) - set(schema.names))
    if unknown:
        raise InvalidInput(f"unknown metadata column(s) {unknown}; this index has {schema.names}")
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        arrays.append(pa.nulls(n, field.type) if values is None else _array(field, values))
    return pa.Table.from_arrays(arrays, schema=schema)


def _columns(metadata: Any, n: int) -> dict[str, Any]:
    if isinstance(metadata, pa.Table):
        if metadata.num_rows != n:
            raise InvalidInput(f"metadata has {metadata.num_rows} rows for {n} ids")
        return {name: metadata[name] for name in metadata.column_names if name != "id"}
    if isinstance(metadata, Mapping):
        out = {}
        for name, values in metadata.items():
            if len(values) != n:
                raise InvalidInput(f"metadata column {name!r} has {len(values)} values for {n} ids")
            out[str(name)] = values
        return out
    if isinstance(metadata, Sequence) and not isinstance(metadata, str | bytes):
        if len(metadata) != n:
            raise InvalidInput(f"metadata has {len(metadata)} rows for {n} ids")
        names: dict[str, None] = {}
        for row in metadata:
            if row is not None and not isinstance(row, Mapping):
                raise InvalidInput("each metadata row must be an object (or null)")
            names.update(dict.fromkeys(row or ()))
        names.pop("id", None)
        return {name: [(row or {}).get(name) for row in metadata] for name in names}
    raise InvalidInput("metadata must be a list of rows (objects), one per id")


def _array(field: pa.Field, values: Any) -> pa.Array:
    """``values`` as an array of ``field``'s type; ISO strings for dates and timestamps.
    Numbers are stored exactly or refused: 2.7 is not an integer, true is not a number, and
    1e300 does not fit a float32 (a filter would otherwise match the value stored, not the
    value written)."""
    try:
        if isinstance(values, pa.ChunkedArray | pa.Array):
            return _exact(field, values, values.cast(field.type))
        if pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
            raw = pa.array(values)  # its own type first: the cast says what does not fit
            return _exact(field, raw, raw.cast(field.type))
        try:
            return pa.array(values, type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            if not pa.types.is_temporal(field.type):
                raise
            return pa.array(values, type=pa.string()).cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
        raise InvalidInput(
            f"metadata column {field.name!r} needs values of type {field.type}: {exc}"
        ) from None


def _exact(field: pa.Field, raw: Any, out: Any) -> Any:
    """``out`` (``raw`` cast to ``field``'s type, where Arrow refuses a fraction cut off or
    an integer out of range), unless a boolean became a number or a finite float an
    infinity."""
    numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
    if numeric and pa.types.is_boolean(raw.type):
        raise InvalidInput(f"metadata column {field.name!r} holds {field.type}: got true/false")
    if pa.types.is_floating(field.type) and pa.types.is_floating(raw.type):
        finite = pc.sum(pc.is_finite(raw)).as_py() or 0
        if (pc.sum(pc.is_finite(out)).as_py() or 0) < finite:
            raise InvalidInput(
                f"metadata column {field.name!r} holds {field.type}: a value is out of its range"
            )
    return out
