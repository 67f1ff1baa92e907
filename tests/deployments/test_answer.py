"""The router's answer from shard parts, without Ray: exact merge, the state and the plans."""

import numpy as np
import pyarrow as pa
import pytest

from deployments.answer import merged_answer, metadata_rows
from shards.errors import VsearchError
from shards.filters import parse_filter
from shards.query import Query


def part(scores, ids, version="v1", sequence=5, plans=None):
    D = np.array([scores], np.float32)
    return (D, np.array([ids], np.int64), version, sequence, plans or {})


def test_parts_merge_exactly_with_the_least_sequence_and_the_plans():
    filt = parse_filter({"tag": "a"}, pa.schema([("tag", pa.string())]))
    query = Query(3, version="v1", filter=filt)
    parts = [
        part([0.1, 0.4, 0.9], [10, 11, 12], sequence=7, plans={0: "exact"}),
        part([0.2, 0.3, 5.0], [20, 21, 22], sequence=6, plans={1: "ann"}),
    ]
    out = merged_answer(parts, query, keep_max=False, threshold=0.35)
    assert out["I"].tolist() == [[10, 20, 21]] and out["sequence"] == 6
    assert out["plan"] == "mixed" and out["shard_plans"] == {0: "exact", 1: "ann"}
    out = merged_answer(parts, Query(3, version="v1"), keep_max=False, threshold=0.25)
    assert out["I"].tolist() == [[10, 20, -1]] and "plan" not in out


def test_a_part_from_another_version_is_an_error_not_an_answer():
    with pytest.raises(VsearchError, match="v2"):
        merged_answer(
            [part([0.1], [1]), part([0.2], [2], version="v2")],
            Query(1, version="v1"),
            keep_max=False,
        )


def test_metadata_rows_follow_the_results_and_a_missing_row_is_an_error():
    a = pa.table({"id": pa.array([4, 9], pa.int64()), "tag": ["x", None]})
    b = pa.table({"id": pa.array([7], pa.int64()), "tag": ["y"]})
    I = np.array([[9, 7, -1], [4, 4, 9]])
    assert metadata_rows([a, b], I) == [
        [{"id": 9, "tag": None}, {"id": 7, "tag": "y"}, None],
        [{"id": 4, "tag": "x"}, {"id": 4, "tag": "x"}, {"id": 9, "tag": None}],
    ]
    assert metadata_rows([a.slice(0, 0)], np.full((1, 2), -1)) == [[None, None]]
    with pytest.raises(VsearchError, match="without its metadata row"):
        metadata_rows([b], I)
