"""Metadata filters: the operator form LangChain's Pinecone and Chroma stores use, checked
against an index's metadata schema and evaluated to a row mask with ``pyarrow.compute``.

``{"lang": "en"}`` (equality), ``{"year": {"$gte": 2000, "$lt": 2010}}``,
``{"tag": {"$in": ["a", "b"]}}``; operators ``$eq $ne $gt $gte $lt $lte $in $nin $exists``;
combinators ``$and``, ``$or`` (lists) and ``$not`` (an expression); an object of several
fields means ``$and``. Dates and timestamps are ISO strings in JSON. On a list column
(e.g. tags) ``$eq`` / ``$in`` match a row holding any of the values, ``$ne`` / ``$nin`` a
row holding none of them.

Two-valued logic: a missing (null) value fails every comparison, so ``$ne``, ``$nin`` and
``$not`` match rows where the field is missing (as a reader of ``{"lang": {"$ne": "en"}}``
expects); ``{"$exists": false}`` matches exactly those.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import InvalidQuery

MAX_DEPTH = 8  # nesting of $and / $or / $not
MAX_TERMS = 256  # comparisons in one filter
MAX_VALUES = 4096  # values of one $in / $nin
COMPARE = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"}
SETS = {"$in", "$nin"}
OPERATORS = COMPARE | SETS | {"$exists"}
ORDERED = {"$gt", "$gte", "$lt", "$lte"}


@dataclass(frozen=True)
class Term:
    """One comparison: ``column op value`` (values: a tuple for $in / $nin)."""

    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class Node:
    """``$and`` / ``$or`` of children, or ``$not`` of one."""

    op: str
    children: tuple[Term | Node, ...]


@dataclass(frozen=True)
class Filter:
    """A checked filter: its expression tree and a canonical text (cache and batch key)."""

    root: Term | Node
    key: str
    columns: tuple[str, ...]

    def mask(self, table: pa.Table) -> np.ndarray:
        """Bool per row of ``table`` (which holds the filter's columns): it matches."""
        return _eval(self.root, table).to_numpy(zero_copy_only=False)


def parse_filter(raw: Any, schema: pa.Schema | None) -> Filter | None:
    """Check ``raw`` (a JSON object) against ``schema`` (the metadata columns); None for no
    filter (None or ``{}``, as LangChain passes when a caller gives none).

    Raises:
        InvalidQuery: not an object, an unknown column or operator, a value that does not
            fit the column's type, an empty or malformed combinator, too deep or too large.
    """
    if raw is None or (isinstance(raw, Mapping) and not raw):
        return None
    if schema is None or len(schema) == 0:
        raise InvalidQuery("filter: this index has no metadata columns to filter on")
    counter = [0]
    root = _expression(raw, schema, "filter", 1, counter)
    key = json.dumps(raw, sort_keys=True, default=str, separators=(",", ":"))
    return Filter(root, key, tuple(sorted(_columns(root))))


def _expression(raw: Any, schema: pa.Schema, where: str, depth: int, n: list[int]):
    if depth > MAX_DEPTH:
        raise InvalidQuery(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, Mapping):
        raise InvalidQuery(f"{where}: expected an object, got {_kind(raw)}")
    if not raw:
        raise InvalidQuery(f"{where}: an empty expression; give a field or a combinator")
    parts: list[Term | Node] = []
    for name, value in raw.items():
        at = f"{where}.{name}"
        if name in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidQuery(f"{at}: expected a non-empty list of expressions")
            kids = tuple(
                _expression(v, schema, f"{at}[{i}]", depth + 1, n) for i, v in enumerate(value)
            )
            parts.append(Node(name, kids))
        elif name == "$not":
            parts.append(Node("$not", (_expression(value, schema, at, depth + 1, n),)))
        elif name.startswith("$"):
            raise InvalidQuery(f"{at}: unknown combinator (use $and, $or, $not)")
        else:
            parts.extend(_field(name, value, schema, at, n))
    return parts[0] if len(parts) == 1 else Node("$and", tuple(parts))


def _field(name: str, raw: Any, schema: pa.Schema, where: str, n: list[int]) -> list[Term]:
    index = schema.get_field_index(name)
    if index < 0:
        raise InvalidQuery(
            f"{where}: unknown metadata column {name!r}; this index has {schema.names}"
        )
    field = schema.field(index)
    if isinstance(raw, Mapping) and not raw:
        raise InvalidQuery(f"{where}: expected a value or an operator object")
    ops = raw if isinstance(raw, Mapping) and any(str(k).startswith("$") for k in raw) else None
    if ops is None:
        ops = {"$eq": raw}
    out = []
    for op, value in ops.items():
        at = f"{where}.{op}"
        if op not in OPERATORS:
            raise InvalidQuery(f"{at}: unknown operator; use one of {sorted(OPERATORS)}")
        n[0] += 1
        if n[0] > MAX_TERMS:
            raise InvalidQuery(f"filter: more than {MAX_TERMS} comparisons")
        out.append(Term(name, op, _operand(field, op, value, at)))
    return out


def _operand(field: pa.Field, op: str, value: Any, where: str) -> Any:
    if op == "$exists":
        if not isinstance(value, bool):
            raise InvalidQuery(f"{where}: expected true or false, got {_kind(value)}")
        return value
    kind = _plain_type(field.type)
    kind = kind.value_type if _is_list(kind) else kind
    if op in ORDERED and (_is_list(_plain_type(field.type)) or pa.types.is_boolean(kind)):
        raise InvalidQuery(
            f"{where}: {op} does not apply to column {field.name!r} of type {field.type}"
        )
    if op in SETS:
        if not isinstance(value, list):
            raise InvalidQuery(f"{where}: expected a list of values, got {_kind(value)}")
        if len(value) > MAX_VALUES:
            raise InvalidQuery(f"{where}: more than {MAX_VALUES} values")
        return tuple(_scalar(kind, field.name, v, f"{where}[{i}]") for i, v in enumerate(value))
    return _scalar(kind, field.name, value, where)


def _scalar(kind: pa.DataType, column: str, value: Any, where: str) -> pa.Scalar:
    """``value`` as a scalar of ``kind``, refusing what would only match by accident."""
    bad = InvalidQuery(
        f"{where}: column {column!r} holds {kind}, got {_kind(value)} "
        f"{json.dumps(value, default=str)[:60]}"
    )
    if value is None:
        raise InvalidQuery(f'{where}: null is not a value; use {{"$exists": false}}')
    if pa.types.is_boolean(kind):
        if not isinstance(value, bool):
            raise bad
    elif pa.types.is_integer(kind):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if isinstance(value, float) and not value.is_integer():
            raise bad
        value = int(value)
    elif pa.types.is_floating(kind):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise bad
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if not isinstance(value, str):
            raise bad
    elif pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        value = _temporal(kind, value, bad, where)
    else:
        raise InvalidQuery(f"{where}: column {column!r} of type {kind} cannot be filtered on")
    try:
        return pa.scalar(value, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        raise bad from None


def _temporal(kind: pa.DataType, value: Any, bad: InvalidQuery, where: str) -> Any:
    if not isinstance(value, str):
        raise bad
    try:
        if pa.types.is_date(kind):
            return dt.date.fromisoformat(value)
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise bad from None
    tz = kind.tz
    if tz is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)  # naive times in a zoned column: UTC
    elif tz is None and stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    step = {"s": 1_000_000, "ms": 1_000}.get(kind.unit, 1)
    if stamp.microsecond % step:  # it would compare as the time cut to the unit
        raise InvalidQuery(
            f"{where}: {value!r} is finer than the column's unit "
            f"({kind.unit}): give a time in whole {kind.unit}"
        )
    return stamp


def _eval(node: Term | Node, table: pa.Table) -> pa.BooleanArray:
    if isinstance(node, Node):
        kids = [_eval(c, table) for c in node.children]
        if node.op == "$not":
            return pc.invert(kids[0])
        out = kids[0]
        for kid in kids[1:]:
            out = pc.and_(out, kid) if node.op == "$and" else pc.or_(out, kid)
        return out
    column = table[node.column]
    if pa.types.is_dictionary(column.type):  # categorical columns: compared by value
        column = column.cast(column.type.value_type)
    if _is_list(column.type):
        return _eval_list(node, column)
    op, value = node.op, node.value
    if op == "$exists":
        present = pc.is_valid(column)
        return _plain(present if value else pc.invert(present))
    if op in SETS:
        hit = pc.is_in(column, value_set=pa.array(value, column.type))
        hit = pc.fill_null(hit, False)
        return _plain(hit if op == "$in" else pc.invert(hit))
    if op == "$ne":
        return _plain(pc.invert(pc.fill_null(pc.equal(column, value), False)))
    fn = {
        "$eq": pc.equal,
        "$gt": pc.greater,
        "$gte": pc.greater_equal,
        "$lt": pc.less,
        "$lte": pc.less_equal,
    }[op]
    return _plain(pc.fill_null(fn(column, value), False))


def _eval_list(node: Term, column: pa.ChunkedArray) -> pa.BooleanArray:
    """Any-element semantics over a list column."""
    column = column.combine_chunks()
    op, value = node.op, node.value
    if op == "$exists":
        present = pc.and_(pc.is_valid(column), pc.greater(pc.list_value_length(column), 0))
        present = pc.fill_null(present, False)
        return _plain(present if value else pc.invert(present))
    values = value if op in SETS else (value,)
    flat = pc.list_flatten(column)
    parents = pc.list_parent_indices(column).to_numpy()
    hit = pc.fill_null(pc.is_in(flat, value_set=pa.array(values, flat.type)), False)
    rows = np.zeros(len(column), bool)
    rows[parents[hit.to_numpy(zero_copy_only=False)]] = True
    any_hit = pa.array(rows)
    return any_hit if op in ("$eq", "$in") else pc.invert(any_hit)


def _plain(mask: Any) -> pa.BooleanArray:
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def _columns(node: Term | Node) -> set[str]:
    if isinstance(node, Term):
        return {node.column}
    return set().union(*(_columns(c) for c in node.children))


def _plain_type(t: pa.DataType) -> pa.DataType:
    """A dictionary (categorical) column's value type; any other type as it is."""
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
