"""Rows read back by id and by filter (``shards.fetch``) over main rows, deletes and the
delta, against the expected live set."""

import threading

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


def test_a_reader_never_sees_an_upsert_half_applied_across_range_shards(tmp_path):
    """An upsert of a live id under range partition moves it to the last shard (tombstone
    in its shard, add in the last). A reader in another thread while the upsert is between
    the two shards must see the id where it was or where it went, never in neither."""
    x = clustered(100, 4, seed=3)
    np.save(tmp_path / "xb.npy", x)
    opts = BuildOptions(num_shards=2, partition="range", index="Flat", progress=False)
    build_index(VectorSource(str(tmp_path / "xb.npy")), str(tmp_path / "i"), opts)
    index = ShardedIndex.open(str(tmp_path / "i"), log=False)
    last = index.shards[1]
    real, seen, readers = last.apply, {}, []

    def read():
        seen["contains"] = bool(index.contains([7])[0])
        seen["get"] = by_ids(index, [7], vectors=True).ids.tolist()

    def apply(m, owned=None):  # the first shard has applied it: a reader starts now
        readers.append(threading.Thread(target=read))
        readers[0].start()
        readers[0].join(0.3)  # it waits for the upsert to finish (or reads a half)
        return real(m, owned)

    last.apply = apply
    index.upsert(x[7:8] + 1, [7])  # id 7 (range shard 0) moves to the last shard
    readers[0].join()
    assert seen == {"contains": True, "get": [7]}


def test_rows_and_sequence_come_from_one_snapshot(index):
    """``by_ids`` / ``matching`` over ``index.snapshot()``'s states: a write that lands
    after the snapshot is in neither the rows nor the sequence read with them."""
    index, x, live = index
    sequence, states = index.snapshot()
    index.delete([8])
    index.upsert(x[5:6], [10], [{"n": 99}])  # 10 was n 3
    rows = by_ids(index, [8, 10], vectors=True, states=states)
    assert rows.ids.tolist() == [8, 10] and sequence == index.sequence - 2
    assert rows.metadata.to_pylist() == [{"id": 8, "n": 1}, {"id": 10, "n": 3}]
    np.testing.assert_allclose(rows.vectors, x[[4, 5]], rtol=1e-6)
    page = matching(index, index.parse_filter({"n": 3}), 5, states=states)
    assert page.ids.tolist() == sorted(i for i, n in live.items() if n == 3)[:5]
    assert 10 in page.ids.tolist()
    assert by_ids(index, [8, 10]).metadata.to_pylist() == [{"id": 10, "n": 99}]  # now
