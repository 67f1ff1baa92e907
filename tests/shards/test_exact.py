"""Sharded exact search equals unsharded exact search and brute force."""

import numpy as np
import pytest

from shards import ShardedIndex
from tests.shards.helpers import assert_same_knn, brute_force, build, float_tolerance


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("partition", ["hash", "range"])
def test_sharded_flat_equals_brute_force(tmp_path, data, metric, partition):
    xb, xq = data
    index = build(tmp_path, xb, index="Flat", metric=metric, num_shards=4, partition=partition)
    assert index.manifest.num_shards == 4
    assert sorted(s.ntotal for s in index.shards.values())[0] > 0
    D, I = index.search(xq, 20)
    Dref, Iref = brute_force(xb, xq, 20, metric)
    assert_same_knn(Dref, Iref, D, I, float_tolerance(xb, xq, metric))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_four_shards_equal_one_shard(tmp_path, data, metric):
    xb, xq = data
    one = build(tmp_path, xb, "one", index="Flat", metric=metric, num_shards=1)
    four = build(tmp_path, xb, "four", index="Flat", metric=metric, num_shards=4)
    D1, I1 = one.search(xq, 10)
    D4, I4 = four.search(xq, 10)
    assert_same_knn(D1, I1, D4, I4, float_tolerance(xb, xq, metric))


def test_more_shards_than_results_pads_with_minus_one(tmp_path):
    xb = np.random.default_rng(0).standard_normal((5, 8)).astype("float32")
    index = build(tmp_path, xb, index="Flat", num_shards=3)
    D, I = index.search(xb[:2], 8)
    assert I.shape == (2, 8) and D.dtype == np.float32 and I.dtype == np.int64
    assert (I[:, :5] >= 0).all() and (I[:, 5:] == -1).all()
    assert sorted(I[0, :5]) == [0, 1, 2, 3, 4]


def test_reopen_subset_of_shards(tmp_path, data):
    xb, xq = data
    build(tmp_path, xb, index="Flat", num_shards=4)
    parts = [ShardedIndex.open(str(tmp_path / "idx"), shards=[i]) for i in range(4)]
    full = ShardedIndex.open(str(tmp_path / "idx"))
    from shards import merge_results

    merged = merge_results([p.search(xq, 10) for p in parts], keep_max=False)
    np.testing.assert_array_equal(merged[1], full.search(xq, 10)[1])
