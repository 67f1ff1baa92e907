"""Automatic index choice (table-driven) and the memory estimate against built indexes."""

import pytest

from shards import InvalidInput, choose_index, estimate_bytes
from shards._faiss import faiss
from shards.choice import FLAT_MAX, nlist_for


@pytest.mark.parametrize(
    ("n_per_shard", "d", "shards", "kwargs", "expected"),
    [
        (1_000, 50, 1, {}, "Flat"),
        (FLAT_MAX, 384, 4, {}, "Flat"),
        (FLAT_MAX + 1, 50, 1, {}, f"IVF{nlist_for(FLAT_MAX + 1)},PQ50x4fs,RFlat"),
        (100_000, 384, 4, {"memory_budget": 160_000_000}, "IVF1024,Flat"),
        (FLAT_MAX, 384, 1, {"memory_budget": 10_000_000}, "IVF256,PQ192x4fs"),
        (100_000, 50, 4, {}, "IVF1024,PQ50x4fs,RFlat"),
        (100_000, 384, 4, {}, "PCA192,HNSW32,Flat,RFlat"),
        (100_000, 256, 1, {}, "PCA128,HNSW32,Flat,RFlat"),
        (100_000, 255, 1, {}, "IVF512,PQ85x4fs,RFlat"),
        (1_000_001, 384, 1, {}, "IVF2048,PQ192x4fs,RFlat"),  # graphs take long to build
        # raw inner products: the IVF index (HNSW under inner products misses more)
        (100_000, 384, 1, {"metric": "ip"}, "IVF512,PQ192x4fs,RFlat"),
        (100_000, 384, 1, {"metric": "cosine"}, "PCA192,HNSW32,Flat,RFlat"),
        # a budget the graph does not fit: the IVF fast-scan index, then IVF-Flat
        (100_000, 384, 4, {"memory_budget": 200_000_000}, "IVF1024,PQ192x4fs,RFlat"),
        (10_000_000, 128, 10, {}, "IVF16384_HNSW32,PQ64x4fs,RFlat"),
        (100_000, 50, 1, {"prefer_hnsw": True}, "HNSW32,Flat"),
        (100_000, 384, 4, {"memory_budget": 50_000_000}, "IVF1024,PQ192x4fs"),
        # traffic: one index for every shape (it decides the tuning, not the index)
        (100_000, 384, 1, {"traffic": "single"}, "PCA192,HNSW32,Flat,RFlat"),
        (100_000, 768, 1, {"traffic": "single"}, "PCA384,HNSW32,Flat,RFlat"),
        (100_000, 50, 1, {"traffic": "single"}, "IVF512,PQ50x4fs,RFlat"),
        (FLAT_MAX, 384, 1, {"traffic": "single"}, "Flat"),
        (100_000, 384, 1, {"traffic": "batch"}, "PCA192,HNSW32,Flat,RFlat"),
        (100_000, 384, 1, {"traffic": "mixed"}, "PCA192,HNSW32,Flat,RFlat"),
        (100_000, 384, 1, {"traffic": "single", "memory_budget": 160_000_000}, "IVF512,Flat"),
    ],
)
def test_choice_table(n_per_shard, d, shards, kwargs, expected):
    metric = kwargs.pop("metric", "l2")
    choice = choose_index(n_per_shard, d, metric, num_shards=shards, **kwargs)
    assert choice.factory == expected
    assert choice.estimated_bytes == estimate_bytes(expected, n_per_shard, d)
    if "memory_budget" in kwargs:
        assert choice.estimated_bytes <= kwargs["memory_budget"]


@pytest.mark.parametrize("traffic", ["mixed", "single", "batch"])
def test_every_choice_says_why_for_its_traffic(traffic):
    for n, d in ((5_000, 50), (100_000, 50), (100_000, 384), (2_000_000, 768)):
        reason = choose_index(n, d, traffic=traffic).reason
        assert reason and (n <= FLAT_MAX or f"traffic {traffic}" in reason)


def test_budget_too_small_and_bad_sizes():
    with pytest.raises(InvalidInput, match="memory budget"):
        choose_index(1_000_000, 128, memory_budget=1_000)
    with pytest.raises(InvalidInput, match="positive"):
        choose_index(0, 128)
    with pytest.raises(InvalidInput, match="traffic must be one of"):
        choose_index(100_000, 128, traffic="bursty")
    with pytest.raises(InvalidInput, match="factory"):
        estimate_bytes("IVF,Nonsense", 10, 8)


@pytest.mark.parametrize(
    "factory",
    [
        "Flat",
        "IVF64,Flat",
        "IVF64,PQ32x4fs,RFlat",
        "IVF64,PQ16x4fs",
        "HNSW32,Flat",
        "IVF64_HNSW16,Flat",
        "OPQ8,IVF64,PQ8",
        "IVF64,PQ8,Refine(Flat)",
        "IVF64,SQ8",
        "PCA16,HNSW8,Flat,RFlat",
    ],
)
def test_estimate_matches_built_index(data, factory):
    xb = data[0]
    index = faiss.index_factory(32, factory)
    index.train(xb[:12_000])
    index.add(xb)
    real = faiss.serialize_index(index).nbytes
    assert estimate_bytes(factory, len(xb), 32) == pytest.approx(real, rel=0.02)


def test_build_options_ef_construction_and_traffic(tmp_path, data):
    """efConstruction reaches the saved graph and the manifest; traffic "single" tunes on
    lone-query timings and says so; bad values are clear errors."""
    from shards.anatomy import Anatomy
    from tests.shards.helpers import build

    xb = data[0][:3000]
    index = build(tmp_path, xb, index="HNSW16,Flat", ef_construction=77, traffic="single")
    assert Anatomy.of(index.shards[0].index).core.hnsw.efConstruction == 77
    m = index.manifest
    assert m.build["ef_construction"] == 77 and m.build["traffic"] == "single"
    assert m.tuning["timed"] == "batches"  # one run of efSearch: timing orders nothing
    plain = build(tmp_path, xb, "plain", index="HNSW16,Flat")  # a factory string: faiss's 40
    assert Anatomy.of(plain.shards[0].index).core.hnsw.efConstruction == 40
    # runs of k_factor are ordered by what the traffic pays: lone queries, batches, or both
    for traffic, timed in (
        ("single", "200 single queries"),
        ("mixed", "batches and 100 single queries (geometric mean)"),
        ("batch", "batches"),
    ):
        ivf = build(tmp_path, xb, traffic, index="IVF16,PQ8x4fs,RFlat", traffic=traffic)
        assert ivf.manifest.tuning["timed"] == timed
        point = ivf.manifest.tuning["curve"][0]
        assert ("lone_ms" in point) == (traffic != "batch")
        if traffic == "mixed":
            b, a = point["batch_ms"], point["lone_ms"]
            blended = (b * a) ** 0.5
            # each of the three is stored rounded to 5 decimals (up to 5e-6 off): the bound
            # that rounding allows, not a looser one (a fixed 1e-5 failed on a fast run)
            off = 0.5 * blended * (5e-6 / b + 5e-6 / a) + 5e-6
            assert point["ms_per_query"] == pytest.approx(blended, rel=0, abs=off * 1.01)
    for bad, match in (
        ({"traffic": "bursty"}, "unknown traffic"),
        ({"ef_construction": 0}, "ef-construction"),
    ):
        with pytest.raises(InvalidInput, match=match):
            build(tmp_path, xb, "bad", index="HNSW16,Flat", **bad)


def test_ef_construction_reaches_an_hnsw_quantizer_and_is_refused_without_a_graph(tmp_path, data):
    """``IVF.._HNSW`` recorded the option while its quantizer kept faiss's 40; an index with
    no HNSW graph took it without a word."""
    from shards.anatomy import Anatomy
    from tests.shards.helpers import build

    xb = data[0][:3000]
    index = build(tmp_path, xb, name="q", index="IVF32_HNSW16,Flat", ef_construction=77)
    assert index.manifest.build["ef_construction"] == 77
    assert Anatomy.of(index.shards[0].index).quantizer.hnsw.efConstruction == 77
    for factory in ("IVF32,Flat", "Flat"):
        with pytest.raises(InvalidInput, match="applies to HNSW graphs"):
            build(tmp_path, xb, name=factory[:3], index=factory, ef_construction=77)


def test_an_explicit_factory_over_the_memory_budget_is_refused(tmp_path, data):
    """The budget was recorded ("memory budget 1,000 bytes per shard") and not checked."""
    from tests.shards.helpers import build

    xb = data[0][:3000]
    with pytest.raises(InvalidInput, match="over the memory budget of 1,000"):
        build(tmp_path, xb, name="over", index="Flat", memory_budget=1000)
    fits = build(tmp_path, xb, name="fits", index="Flat", num_shards=2, memory_budget=10**7)
    assert fits.manifest.factory == "Flat"
