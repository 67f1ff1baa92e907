"""Approximate indexes reach documented recall; overrides go through per-call parameters."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shards import InvalidQuery
from shards._faiss import faiss
from tests.shards.helpers import assert_same_knn, brute_force, build, float_tolerance, recall

# (factory, params, minimum recall@10 on the seeded clustered data)
CASES = [
    ("IVF64,Flat", {"nprobe": 16}, 0.95),
    ("IVF64,PQ16x4fs,RFlat", {"nprobe": 16, "k_factor": 8}, 0.95),
    ("IVF64,PQ32x4fs", {"nprobe": 16}, 0.7),
    ("HNSW16,Flat", {"ef_search": 64}, 0.95),
    ("IVF64_HNSW16,Flat", {"nprobe": 16, "quantizer_ef_search": 64}, 0.95),
    ("PCA16,HNSW16,Flat,RFlat", {"ef_search": 64, "k_factor": 4}, 0.95),
]


@pytest.mark.parametrize(("factory", "params", "minimum"), CASES)
def test_recall_at_documented_params(tmp_path, data, factory, params, minimum):
    xb, xq = data
    index = build(tmp_path, xb, index=factory, num_shards=2, tune=False)
    _, gt = brute_force(xb, xq, 10, "l2")
    _, I = index.search(xq, 10, params)
    assert recall(I, gt) >= minimum


@pytest.fixture(scope="module")
def ivf(tmp_path_factory, data):
    return build(
        tmp_path_factory.mktemp("ivf"), data[0], index="IVF64,Flat", num_shards=2, tune=False
    )


def test_nprobe_changes_results_and_is_not_sticky(ivf, data):
    xq = data[1]
    _, I1 = ivf.search(xq, 10, {"nprobe": 1})
    D64, I64 = ivf.search(xq, 10, {"nprobe": 64})
    Dgt, gt = brute_force(data[0], xq, 10, "l2")
    # every list probed: exact, up to the order of results tied within float rounding
    assert_same_knn(Dgt, gt, D64, I64, float_tolerance(data[0], xq, "l2"))
    assert recall(I1, gt) < 0.99
    _, again = ivf.search(xq, 10, {"nprobe": 1})
    np.testing.assert_array_equal(again, I1)  # nprobe=64 did not stick to the index


def test_hnsw_ef_search_is_applied(tmp_path, data):
    xb, xq = data
    index = build(tmp_path, xb, index="HNSW8,Flat", num_shards=1, tune=False)
    _, gt = brute_force(xb, xq, 10, "l2")
    low = recall(index.search(xq, 10, {"ef_search": 10})[1], gt)
    high = recall(index.search(xq, 10, {"ef_search": 512})[1], gt)
    assert high > low and high >= 0.99


def test_concurrent_mixed_overrides_equal_sequential(ivf, data):
    xq = data[1]
    settings = [{"nprobe": p} for p in (1, 2, 4, 8, 16, 32, 64)] * 6
    reference = [ivf.search(xq, 10, s)[1] for s in settings]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: ivf.search(xq, 10, s)[1], settings))
    for ref, got in zip(reference, results, strict=True):
        np.testing.assert_array_equal(ref, got)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"nprobe": 0}, "nprobe must be in"),
        ({"nprobe": 65}, "nprobe must be in"),
        ({"nprobe": 2.5}, "integer"),
        ({"nprobe": "8"}, "integer"),
        ({"nprobe": True}, "integer"),
        ({"ef_search": 16}, "does not apply"),
        ({"k_factor": 2}, "does not apply"),
        ({"bogus": 1}, "unknown search parameter"),
        ([("nprobe", 2)], "mapping"),
    ],
)
def test_bad_overrides_raise(ivf, data, params, message):
    with pytest.raises(InvalidQuery, match=message):
        ivf.search(data[1], 10, params)


@pytest.mark.parametrize(
    ("xq", "k", "message"),
    [
        (np.zeros((2, 31), np.float32), 10, "dimension 31"),
        (np.zeros((0, 32), np.float32), 10, "empty"),
        (np.zeros((2, 2, 32), np.float32), 10, "2-d"),
        (np.full((2, 32), np.nan, np.float32), 10, "NaN"),
        (np.full((2, 32), np.inf, np.float32), 10, "NaN or Inf"),
        (np.array([["a"] * 32]), 10, "numeric"),
        (np.zeros((2, 32), np.float32), 0, "k must be"),
        (np.zeros((2, 32), np.float32), 1025, "k must be"),
        (np.zeros((2, 32), np.float32), 2.0, "k must be"),
    ],
)
def test_bad_queries_raise(ivf, xq, k, message):
    with pytest.raises(InvalidQuery, match=message):
        ivf.search(xq, k)


def test_zero_vector_rejected_for_cosine(tmp_path, data):
    index = build(tmp_path, data[0][:500], index="Flat", metric="cosine")
    with pytest.raises(InvalidQuery, match="zero vector"):
        index.search(np.zeros((1, 32), np.float32), 5)


def test_float64_and_1d_queries_accepted(ivf, data):
    xq = data[1]
    _D1, I1 = ivf.search(xq[:1], 5, {"nprobe": 8})
    _D2, I2 = ivf.search(xq[0].astype(np.float64), 5, {"nprobe": 8})
    np.testing.assert_array_equal(I1, I2)


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("IVF64,Flat", {"nprobe": 8}),
        ("IVF64,PQ16x4fs,RFlat", {"nprobe": 8, "k_factor": 3}),
        ("IVF64_HNSW16,Flat", {"nprobe": 8, "quantizer_ef_search": 32}),
    ],
)
def test_shared_coarse_assignment_equals_per_shard_search(tmp_path, data, factory, params):
    xb, xq = data
    index = build(tmp_path, xb, index=factory, num_shards=3, tune=False)
    assert index.shared_coarse
    index.delete(np.arange(0, len(xb), 5))
    D1, I1 = index.search(xq, 10, params)
    assert not np.isin(I1, np.arange(0, len(xb), 5)).any()
    index.shared_coarse = False
    D2, I2 = index.search(xq, 10, params)
    assert_same_knn(D2, I2, D1, I1, float_tolerance(xb, xq, "l2"))


def test_lone_queries_search_each_shard_and_equal_the_shared_batch(tmp_path, data):
    """Below COARSE_MIN_QUERIES queries each shard searches whole (its own quantizer): the
    same answers as the shared assignment a batch takes."""
    from shards.index import COARSE_MIN_QUERIES

    xb, xq = data
    index = build(tmp_path, xb, index="IVF64,PQ16x4fs,RFlat", num_shards=3, tune=False)
    assert index.shared_coarse and COARSE_MIN_QUERIES > 1
    params = {"nprobe": 8, "k_factor": 3}
    D1, I1 = index.search(xq[:20], 10, params)
    lone = [index.search(xq[i : i + 1], 10, params) for i in range(20)]
    D2, I2 = np.vstack([d for d, _ in lone]), np.vstack([i for _, i in lone])
    assert_same_knn(D2, I2, D1, I1, float_tolerance(xb, xq, "l2"))


def test_shards_with_different_quantizers_do_not_share(tmp_path, data):
    from shards import ShardedIndex

    a = build(tmp_path, data[0][:3000], "a", index="IVF16,Flat", tune=False)
    b = build(tmp_path, data[0][3000:6000], "b", index="IVF16,Flat", tune=False, seed=5)
    mixed = ShardedIndex(a.manifest, {0: a.shards[0], 1: b.shards[0]}, "")
    assert not mixed.shared_coarse


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_a_pca_graph_ranks_by_the_metric_far_from_the_origin(tmp_path, metric):
    # vectors around a mean far from the origin: a projection that subtracts the mean ranks
    # inner products by the product with the mean (recall 0.12 here), so for inner products
    # the build projects through the origin (the transform has no bias); the graph over the
    # projection then finds what a graph over the whole vectors finds (HNSW under inner
    # products misses some neighbours either way: 0.92 here)
    rng = np.random.default_rng(8)
    scales = np.geomspace(1, 0.05, 32).astype(np.float32)  # most variance in a few dimensions
    xb = (rng.standard_normal((5000, 32), np.float32) + 4) * scales
    xq = (rng.standard_normal((200, 32), np.float32) + 4) * scales
    index = build(tmp_path, xb, index="PCA24,HNSW16,Flat,RFlat", metric=metric, tune=False)
    pca = faiss.downcast_VectorTransform(
        faiss.downcast_index(faiss.downcast_index(index.shards[0].index).base_index).chain.at(0)
    )
    bias = faiss.vector_to_array(pca.b)
    assert (np.abs(bias).max() > 0) == (metric == "l2")
    whole = build(tmp_path, xb, name="whole", index="HNSW16,Flat", metric=metric, tune=False)
    _, gt = brute_force(xb, xq, 10, metric)
    projected = recall(index.search(xq, 10, {"ef_search": 128, "k_factor": 4})[1], gt)
    assert projected >= recall(whole.search(xq, 10, {"ef_search": 128})[1], gt) - 0.01
    assert projected >= (0.99 if metric == "l2" else 0.9)
