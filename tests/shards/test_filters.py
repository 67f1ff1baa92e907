"""Filters: the operator form checked against the schema, evaluated like a row-by-row oracle."""

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from shards.errors import InvalidQuery
from shards.filters import MAX_DEPTH, MAX_TERMS, MAX_VALUES, parse_filter

N = 400


def table() -> pa.Table:
    rng = np.random.default_rng(0)

    def maybe(values, p=0.1):  # some rows miss the field
        return [None if rng.random() < p else v for v in values]

    tags = [
        list(rng.choice(["a", "b", "c", "d"], rng.integers(0, 3), replace=False)) for _ in range(N)
    ]
    return pa.table(
        {
            "cat": pa.array(maybe(rng.choice(["x", "y", "z"], N).tolist()), pa.string()),
            "year": pa.array(maybe(rng.integers(1990, 2030, N).tolist()), pa.int32()),
            "score": pa.array(maybe(rng.random(N).round(3).tolist()), pa.float64()),
            "flag": pa.array(maybe(rng.random(N).__lt__(0.5).tolist()), pa.bool_()),
            "day": pa.array(
                maybe(
                    [
                        dt.date(2020, 1, 1) + dt.timedelta(days=int(d))
                        for d in rng.integers(0, 400, N)
                    ]
                ),
                pa.date32(),
            ),
            "when": pa.array(
                maybe(
                    [
                        dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=int(h))
                        for h in rng.integers(0, 2000, N)
                    ]
                ),
                pa.timestamp("us", "UTC"),
            ),
            "tags": pa.array(maybe(tags), pa.list_(pa.string())),
        }
    )


def oracle(expr, row) -> bool:
    """Row-by-row semantics, written independently of the Arrow evaluation."""
    ok = True
    for key, value in expr.items():
        if key == "$and":
            ok &= all(oracle(e, row) for e in value)
        elif key == "$or":
            ok &= any(oracle(e, row) for e in value)
        elif key == "$not":
            ok &= not oracle(value, row)
        else:
            ops = value if isinstance(value, dict) else {"$eq": value}
            ok &= all(term(row[key], op, v) for op, v in ops.items())
    return ok


def term(have, op, want) -> bool:
    if op == "$exists":
        present = have is not None and have != []
        return present if want else not present
    if isinstance(have, list):
        wanted = set(want) if op in ("$in", "$nin") else {want}
        hit = bool(wanted & set(have))
        return hit if op in ("$eq", "$in") else not hit
    want = [convert(have, w) for w in want] if op in ("$in", "$nin") else convert(have, want)
    if have is None:
        return op in ("$ne", "$nin")
    return {
        "$eq": lambda: have == want,
        "$ne": lambda: have != want,
        "$gt": lambda: have > want,
        "$gte": lambda: have >= want,
        "$lt": lambda: have < want,
        "$lte": lambda: have <= want,
        "$in": lambda: have in want,
        "$nin": lambda: have not in want,
    }[op]()


def convert(have, want):
    if isinstance(want, str) and isinstance(have, dt.datetime):
        return dt.datetime.fromisoformat(want.replace("Z", "+00:00"))
    if isinstance(want, str) and isinstance(have, dt.date):
        return dt.date.fromisoformat(want)
    return want


GOOD = [
    {"cat": "x"},
    {"cat": {"$eq": "y"}},
    {"cat": {"$ne": "x"}},
    {"cat": {"$in": ["x", "z"]}},
    {"cat": {"$nin": ["x", "z"]}},
    {"cat": {"$exists": False}},
    {"year": {"$gte": 2000, "$lt": 2010}},
    {"year": {"$gt": 2020}},
    {"year": {"$lte": 1995.0}},
    {"year": {"$in": [1990, 2000, 2029]}},
    {"score": {"$lt": 0.25}},
    {"score": {"$gte": 1}},
    {"flag": True},
    {"flag": {"$ne": True}},
    {"day": {"$gte": "2020-06-01"}},
    {"day": {"$in": ["2020-01-01", "2020-01-02"]}},
    {"when": {"$lt": "2024-02-01T00:00:00Z"}},
    {"when": {"$gte": "2024-02-01T12:00:00+02:00"}},
    {"tags": "a"},
    {"tags": {"$in": ["b", "c"]}},
    {"tags": {"$nin": ["a"]}},
    {"tags": {"$ne": "d"}},
    {"tags": {"$exists": True}},
    {"cat": "x", "year": {"$gte": 2000}},
    {"$or": [{"cat": "x"}, {"tags": "a"}]},
    {"$and": [{"cat": {"$ne": "y"}}, {"$not": {"year": {"$lt": 2000}}}]},
    {"$not": {"$or": [{"flag": True}, {"score": {"$gt": 0.5}}]}},
    {"$or": [{"$and": [{"cat": "z"}, {"flag": False}]}, {"year": 2010}]},
]


@pytest.mark.parametrize("expr", GOOD, ids=[str(g) for g in GOOD])
def test_filters_match_the_row_by_row_oracle(expr):
    t = table()
    f = parse_filter(expr, t.schema)
    got = f.mask(t)
    rows = t.to_pylist()
    want = np.array([oracle(expr, r) for r in rows])
    assert got.dtype == bool and len(got) == N
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < N or expr in ({"score": {"$gte": 1}},)  # the cases discriminate


def test_no_filter_and_the_key_is_canonical():
    schema = table().schema
    assert parse_filter(None, schema) is None and parse_filter({}, schema) is None
    a = parse_filter({"cat": "x", "year": {"$lt": 3, "$gt": 1}}, schema)
    b = parse_filter({"year": {"$gt": 1, "$lt": 3}, "cat": "x"}, schema)
    assert a.key == b.key and a.columns == ("cat", "year")


deep: dict = {"cat": "x"}
for _ in range(MAX_DEPTH):
    deep = {"$not": deep}

BAD = [
    ("not an object", [1, 2], "expected an object"),
    ("a string", "cat = x", "expected an object"),
    ("unknown column", {"colour": "red"}, "unknown metadata column 'colour'"),
    ("unknown operator", {"cat": {"$like": "x%"}}, "unknown operator"),
    ("unknown combinator", {"$xor": [{"cat": "x"}]}, "unknown combinator"),
    ("and not a list", {"$and": {"cat": "x"}}, "non-empty list"),
    ("empty and", {"$and": []}, "non-empty list"),
    ("empty or", {"$or": []}, "non-empty list"),
    ("empty nested", {"$or": [{}]}, "empty expression"),
    ("not of a list", {"$not": [{"cat": "x"}]}, "expected an object"),
    ("empty operators", {"cat": {}}, "a value or an operator"),
    ("string for int", {"year": "2000"}, "holds int32"),
    ("fraction for int", {"year": 2000.5}, "holds int32"),
    ("bool for int", {"year": True}, "holds int32"),
    ("int too large", {"year": 2**40}, "holds int32"),
    ("number for string", {"cat": 5}, "holds string"),
    ("bool for string", {"cat": False}, "holds string"),
    ("string for float", {"score": "high"}, "holds double"),
    ("nan for float", {"score": float("nan")}, "holds double"),
    ("number for bool", {"flag": 1}, "holds bool"),
    ("bad date", {"day": "2020-13-01"}, "holds date32"),
    ("number for date", {"day": 20200101}, "holds date32"),
    ("bad timestamp", {"when": {"$gt": "yesterday"}}, "holds timestamp"),
    ("null value", {"cat": None}, "$exists"),
    ("null in", {"cat": {"$in": ["x", None]}}, "$exists"),
    ("in not a list", {"cat": {"$in": "x"}}, "expected a list"),
    ("nin not a list", {"year": {"$nin": 2000}}, "expected a list"),
    ("exists not bool", {"cat": {"$exists": 1}}, "true or false"),
    ("order on bool", {"flag": {"$gt": False}}, "does not apply"),
    ("order on list", {"tags": {"$lt": "b"}}, "does not apply"),
    ("wrong element type", {"tags": {"$in": [1]}}, "holds string"),
    ("too deep", {"$not": deep}, "deeper than"),
    ("too many values", {"year": {"$in": list(range(MAX_VALUES + 1))}}, "more than"),
    ("too many terms", {"$or": [{"year": i} for i in range(MAX_TERMS + 1)]}, "comparisons"),
    ("mixed operator object", {"cat": {"$eq": "x", "y": 1}}, "unknown operator"),
]


@pytest.mark.parametrize(("expr", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_filters_are_refused_with_what_is_wrong(expr, words):
    with pytest.raises(InvalidQuery) as err:
        parse_filter(expr, table().schema)
    assert words in err.value.message and "filter" in err.value.message
    assert err.value.status_code == 400


def test_categorical_columns_filter_by_value():
    t = table()
    cat = t.set_column(0, "cat", t["cat"].dictionary_encode())
    for expr in (
        {"cat": "x"},
        {"cat": {"$in": ["y", "z"]}},
        {"cat": {"$ne": "x"}},
        {"cat": {"$gt": "x"}},
    ):
        np.testing.assert_array_equal(
            parse_filter(expr, cat.schema).mask(cat), parse_filter(expr, t.schema).mask(t)
        )
    with pytest.raises(InvalidQuery, match="holds string"):
        parse_filter({"cat": 1}, cat.schema)


def test_a_filter_on_an_index_without_metadata_is_refused():
    with pytest.raises(InvalidQuery, match="no metadata columns"):
        parse_filter({"cat": "x"}, None)


@pytest.mark.parametrize("unit", ["s", "ms"])
@pytest.mark.parametrize("op", ["$eq", "$gt", "$gte", "$lt", "$lte"])
def test_a_time_finer_than_its_columns_unit_is_refused_not_cut(unit, op):
    """Cut to the column's unit, 00:00:00.5 compared as 00:00:00: $gte matched a row at
    00:00:00 and $lt did not. Whole units still compare exactly."""
    schema = pa.schema([("t", pa.timestamp(unit))])
    fine = "2020-01-01T00:00:00.0005" if unit == "ms" else "2020-01-01T00:00:00.5"
    with pytest.raises(InvalidQuery, match=f"finer than the column's unit \\({unit}\\)"):
        parse_filter({"t": {op: fine}}, schema)
    rows = pa.table({"t": pa.array([dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, 0, 0, 1)])})
    whole = parse_filter({"t": {op: "2020-01-01T00:00:01"}}, schema)
    want = {"$eq": [0, 1], "$gt": [0, 0], "$gte": [0, 1], "$lt": [1, 0], "$lte": [1, 1]}[op]
    assert whole.mask(rows.cast(schema)).astype(int).tolist() == want
