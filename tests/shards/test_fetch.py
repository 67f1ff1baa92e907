"""Rows read back by id and by filter (``shards.fetch``) over main rows, deletes and the
delta, against the expected live set."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, InvalidQuery, ShardedIndex, VectorSource, build_index
from shards.fetch import by_ids, matching
from tests.conftest import clustered


@pytest.fixture
def index(tmp_path):
    x = clustered(500, 8, seed=1)
    ids = np.arange(500) * 2
    src = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {"id": ids, "vector": pa.array(x.tolist(), pa.list_(pa.float32(), 8)), "n": ids % 7}
        ),
        src,
    )
    opts = BuildOptions(num_shards=3, index="Flat", progress=False)
    build_index(
        VectorSource(str(src), id_column="id", metadata_columns=["n"]), str(tmp_path / "i"), opts
    )
    index = ShardedIndex.open(str(tmp_path / "i"))
    index.delete(ids[::3])  # main rows gone
    index.upsert(clustered(20, 8, seed=2), np.arange(1001, 1041, 2))  # delta rows, no metadata
    index.upsert(x[:2] + 1, [2, 4], [{"n": 100}, {"n": 100}])  # replaced: now in the delta
    live = {int(i): int(i) % 7 for i in ids if i % 6}
    live.update({int(i): None for i in range(1001, 1041, 2)})
    live.update({2: 100, 4: 100})
    return index, x, live


def test_by_ids_keeps_the_order_asked_and_leaves_out_missing(index):
    index, x, _ = index
    rows = by_ids(index, [8, 0, 4, 3, 1003], vectors=True)  # 0 deleted, 3 never written
    assert rows.ids.tolist() == [8, 4, 1003]
    assert rows.metadata.to_pylist() == [
        {"id": 8, "n": 1},
        {"id": 4, "n": 100},
        {"id": 1003, "n": None},
    ]
    np.testing.assert_allclose(rows.vectors[:2], [x[4], x[1] + 1], rtol=1e-6)


@pytest.mark.parametrize(
    "filt, want",
    [
        (None, lambda n: True),
        ({"n": {"$gte": 5}}, lambda n: n is not None and n >= 5),
        ({"n": {"$exists": False}}, lambda n: n is None),
        ({"n": {"$ne": 3}}, lambda n: n != 3),
    ],
)
def test_pages_of_matching_rows_equal_the_expected_set(index, filt, want):
    index, _, live = index
    expected = sorted(i for i, n in live.items() if want(n))
    got, after = [], -1
    while True:
        page = matching(index, index.parse_filter(filt), 37, after)
        got += page.ids.tolist()
        if len(page.ids) < 37:
            break
        after = int(page.ids[-1])
    assert got == expected


def test_bad_pages_are_refused(index):
    index, _, _ = index
    for limit in (0, 10_001, 2.5, True):
        with pytest.raises(InvalidQuery, match="limit"):
            matching(index, None, limit)
    with pytest.raises(InvalidQuery, match="after"):
        matching(index, None, 5, "x")
