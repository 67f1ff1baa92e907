"""The lone-query path of ShardedIndex.search: the same answers and errors as the full path."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, InvalidQuery, ShardedIndex, VectorSource, build_index
from tests.conftest import clustered
from tests.shards.helpers import brute_force, build


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize(
    ("factory", "shards"),
    [("Flat", 2), ("IVF32,PQ8x4fs,RFlat", 3), ("HNSW16,Flat", 1), ("PCA8,HNSW16,Flat,RFlat", 1)],
)
def test_lone_queries_equal_the_full_path(tmp_path, monkeypatch, metric, factory, shards):
    xb, xq = clustered(3000, 16, seed=4), clustered(40, 16, seed=5)
    index = build(tmp_path, xb, index=factory, metric=metric, num_shards=shards)
    answers = {}
    for path in ("lone", "full"):
        if path == "full":
            monkeypatch.setattr(index.lone, "search", lambda *args: None)  # the full path
        for target in (None, 0.9):
            for i in range(len(xq)):
                answers[path, target, i] = index.search(xq[i : i + 1], 7, target_recall=target)
    for (path, target, i), (D, I) in answers.items():
        if path == "lone":
            D2, I2 = answers["full", target, i]
            np.testing.assert_array_equal(I, I2)
            np.testing.assert_allclose(D, D2, rtol=1e-5, atol=1e-6)
    if factory == "Flat":  # exact: also the brute-force answer
        lone = np.vstack([answers["lone", None, i][1] for i in range(len(xq))])
        _, gt = brute_force(xb, xq, 7, metric)
        assert (lone == gt).mean() > 0.99  # ties may order differently


def test_lone_path_refuses_what_the_full_path_refuses(tmp_path):
    xb = clustered(2000, 8, seed=6)
    index = build(tmp_path, xb, index="Flat", metric="cosine")
    q = xb[:1].copy()
    index.search(q, 5)  # the defaults are resolved: the lone path is taken from now on
    for bad, match in (
        (np.full((1, 8), np.nan, np.float32), "NaN"),
        (np.zeros((1, 8), np.float32), "zero vector"),
        (np.full((1, 8), 1e-30, np.float32), "zero vector"),  # its squares underflow
        (np.ones((1, 9), np.float32), "dimension"),
    ):
        with pytest.raises(InvalidQuery, match=match):
            index.search(bad, 5)
    for k in (0, 5000, 2.5, True):
        with pytest.raises(InvalidQuery, match="k must be"):
            index.search(q, k)
    # float64 and non-contiguous queries take the full path and get the same answer
    wide = q.astype(np.float64)
    strided = np.repeat(q, 2, axis=1)[:, ::2]
    for other in (wide, strided):
        np.testing.assert_array_equal(index.search(other, 5)[1], index.search(q, 5)[1])
    # finite values whose squared norm overflows float32: the full path answers them
    big = q * np.float32(1e25)
    assert not np.isfinite(np.float32(np.dot(big[0], big[0])))
    np.testing.assert_array_equal(index.search(big, 5)[1], index.search(q, 5)[1])
    assert q[0, 0] == xb[0, 0]  # a cosine query is normalised on a copy


@pytest.mark.parametrize("shards", [1, 2])  # one shard: its own plan
def test_lone_queries_see_writes_at_once(tmp_path, shards):
    xb = clustered(2000, 8, seed=7)
    index = build(tmp_path, xb, index="IVF16,Flat", num_shards=shards, tune=False)
    q = xb[10:11] + 0.0001
    index.search(q, 3, {"nprobe": 16})
    first = index.search(q, 3)[1][0, 0]
    index.delete([first])
    for _ in range(2):  # the first search after a write makes the new state's parameters
        assert first not in index.search(q, 3)[1]
    index.upsert(q, [77_777])
    for _ in range(2):
        assert index.search(q, 3)[1][0, 0] == 77_777
    index.delete([77_777])
    index.upsert(q * 0 + 50, [88_888])  # far away: the delta holds a row, not this answer
    for _ in range(2):
        I = index.search(q, 3)[1]
        assert 77_777 not in I and 88_888 not in I
        I2 = index.search(q.astype(np.float64), 3)[1]  # the full path
        np.testing.assert_array_equal(I, I2)


def test_lone_query_translates_ids_of_one_shard(tmp_path):
    xb = clustered(1500, 8, seed=8)
    ids = np.arange(len(xb), dtype=np.int64)[::-1] * 3 + 10  # not the rows
    src = tmp_path / "in.parquet"
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), 8)
    pq.write_table(pa.table({"id": ids, "vector": vectors}), src)
    opts = BuildOptions(index="HNSW16,Flat", tune=False, progress=False)
    build_index(VectorSource(str(src), id_column="id"), str(tmp_path / "idx"), opts)
    index = ShardedIndex.open(str(tmp_path / "idx"))
    _, gt = brute_force(xb, xb[:20], 1, "l2")
    for i in range(20):
        for _ in range(2):
            assert index.search(xb[i : i + 1], 1, {"ef_search": 64})[1][0, 0] == ids[gt[i, 0]]
            assert index.search(xb[i : i + 1], 1)[1][0, 0] == ids[gt[i, 0]]


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize(
    "factory",
    ["Flat", "HNSW16,Flat", "PCA8,HNSW16,Flat,RFlat", "IVF32,PQ8x4fs,RFlat", "IVF32,PQ8x4fs"],
)
def test_lone_path_refuses_every_non_finite_query(tmp_path, metric, factory):
    """On indexes whose distances are exact the lone path checks the answer instead of the
    query: a NaN or an infinity anywhere must still raise, never answer."""
    xb = clustered(3000, 16, seed=9)
    index = build(tmp_path, xb, index=factory, metric=metric, tune=False)
    q = xb[:1] + np.float32(0.01)
    index.search(q, 5)  # the defaults are resolved: the lone path is taken from now on
    bad = []
    for value in (np.nan, np.inf, -np.inf):
        for where in (slice(None), slice(0, 1), slice(15, 16)):
            x = q.copy()
            x[0, where] = value
            bad.append(x)
    mixed = q.copy()
    mixed[0, 0], mixed[0, 1] = np.inf, -np.inf
    for x in [*bad, mixed]:
        for _ in range(2):  # the second search goes through the plan the first one made
            with pytest.raises(InvalidQuery, match="NaN or Inf"):
                index.search(x, 5)
    # finite queries the full path answers get its answer: zero, tiny, overflowing squares
    for x in (q * 0, q * np.float32(1e-30), q * np.float32(1e25)):
        lone = index.search(x, 5)
        index.lone.search = lambda *args: None
        full = index.search(x, 5)
        del index.lone.search
        np.testing.assert_array_equal(lone[1], full[1])


def test_placing_the_shards_again_drops_the_lone_plans(tmp_path):
    """A plan holds the search of the shard's device then: after ``place`` a lone query must
    search where the shards are now, not where they were."""
    xb = clustered(1000, 8, seed=10)
    index = build(tmp_path, xb, index="HNSW16,Flat", tune=False)
    q = xb[:1] + np.float32(0.01)
    index.search(q, 3)
    first = index.search(q, 3)
    (plan,) = index.lone._plans.values()
    index.place("cpu")  # a new placement (the only one a machine without a GPU has)
    assert not index.lone._plans
    again = index.search(q, 3)
    np.testing.assert_array_equal(again[1], first[1])
    (plan2,) = index.lone._plans.values()
    assert plan2 is not plan and plan2.search is not None
