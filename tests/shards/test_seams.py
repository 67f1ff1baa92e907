"""The seams of the core: ids, layouts, versions, cost caps, compaction and the live state.

Each test here failed on the code before its fix (the defect it names is in its docstring).
"""

from __future__ import annotations

import gc
import logging
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, InvalidInput, InvalidQuery, ShardedIndex, VectorSource
from shards import build_index as build_index_
from shards.artefact import publish_current
from shards.errors import ConcurrentUpdate, VersionMismatch
from shards.query import Query
from shards.storage import Store
from tests.shards.helpers import brute_force, build


def test_ids_outside_the_int63_range_are_refused_everywhere(tmp_path, data):
    """Negative ids wrapped (-1 is the padding id: the merge dropped them and what came
    after); uint64 ids above 2**63 - 1 wrapped to negatives."""
    xb = data[0][:500]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), xb.shape[1])
    for bad in (-5, 2**63):
        ids = np.arange(500, dtype=np.uint64 if bad > 0 else np.int64)
        ids[7] = bad
        pq.write_table(pa.table({"id": ids, "vector": vectors}), tmp_path / "in.parquet")
        src = VectorSource(str(tmp_path / "in.parquet"), id_column="id")
        with pytest.raises(InvalidInput, match=r"\[0, 2\*\*63\)"):
            build_index_(src, str(tmp_path / "idx"), BuildOptions(index="Flat", progress=False))
    index = build(tmp_path, xb, index="Flat", num_shards=2)
    with pytest.raises(InvalidInput, match=r"\[0, 2\*\*63\)"):
        index.add(xb[:1], [-1])
    with pytest.raises(InvalidQuery, match=r"\[0, 2\*\*63\)"):
        index.search_by_id([-3])


def test_range_partition_add_refuses_an_id_of_another_shard(tmp_path, data):
    """Range-partitioned ``add`` put every new id in the last shard without asking the
    others, so an id already in shard 0 was added twice and ``compact`` published both."""
    xb = data[0][:600]
    index = build(tmp_path, xb, index="Flat", num_shards=3, partition="range")
    assert index.shards[0].contains(np.array([5]))[0]
    with pytest.raises(InvalidInput, match="already exists"):
        index.add(xb[:1], [5])
    index.add(xb[:1], [10_000])  # a new id is fine
    assert index.contains([10_000])[0]


def test_search_by_id_at_max_k_leaves_the_id_out(tmp_path, data):
    """At ``k == max_k`` the by-id search fetched only k results, so the query's own id,
    found first, was kept in the answer."""
    xb = data[0][:3000]
    index = build(tmp_path, xb, index="Flat", num_shards=2)
    k = index.planner.max_k
    _, I = index.search_by_id([42], k)
    assert I.shape == (1, k) and 42 not in I[0]
    _, gt = brute_force(xb, xb[42:43], k + 1, "l2")
    assert set(I[0]) == set(gt[0]) - {42}


def test_untuned_ann_build_gets_stated_defaults_and_a_warning(tmp_path, data, caplog):
    """``--no-tune`` served IVF with faiss's stored nprobe 1 without a word."""
    with caplog.at_level(logging.WARNING, logger="shards"):
        index = build(tmp_path, data[0], index="IVF64,Flat", tune=False)
    assert index.manifest.default_params == {"nprobe": 8}
    assert "not tuned" in index.manifest.build["untuned"] and "not tuned" in caplog.text
    assert index.planner.defaults.nprobe == 8  # what a search without params uses


def test_current_moves_by_compare_and_swap(tmp_path, data):
    """``CURRENT`` was overwritten blindly: of a compact and an autotune of one parent, the
    second silently orphaned the first."""
    index = build(tmp_path, data[0][:2000], index="Flat", num_shards=2)
    other = ShardedIndex.open(index.root_uri, index.index_version)
    index.delete([1])
    first = index.compact()
    other.delete([2])
    with pytest.raises(ConcurrentUpdate, match="moved"):
        other.compact()
    root = Store(index.root_uri)
    assert root.read_bytes("CURRENT").decode() == first.index_version
    publish_current(root, index.index_version, expect=first.index_version)  # a rollback
    assert root.read_bytes("CURRENT").decode() == index.index_version
    assert not root.exists("CURRENT.lock")


def test_cost_of_one_request_is_capped(tmp_path, data):
    """``nq``, ``k`` and ``k_factor`` were capped one by one, never their product."""
    index = build(tmp_path, data[0][:2000], index="IVF16,PQ8x4fs,RFlat", tune=False)
    xq = np.repeat(data[1][:1], 1024, axis=0)
    with pytest.raises(InvalidQuery, match="candidates"):
        index.search(xq, 1024, {"k_factor": 64})
    index.search(xq[:8], 10, {"k_factor": 8})  # an ordinary request passes


def test_compacting_cagra_keeps_cagra(tmp_path, data):
    """``compact()`` published a plain ``IndexHNSW`` for a CAGRA shard (``clone_index``
    drops the subclass): ``itopk_size`` was then refused or ignored."""
    from shards._faiss import faiss_ext

    xb = data[0][:3000]
    index = build(tmp_path, xb, index="CAGRA32", num_shards=2, tune=False)
    index.delete(np.arange(100))
    compacted = ShardedIndex.open(index.root_uri, index.compact().index_version)
    for shard in compacted.shards.values():
        assert type(shard.index) is faiss_ext.IndexHNSWCagra
    _, gt = brute_force(xb[100:], data[1], 10, "l2", ids=np.arange(100, 3000))
    _, I = compacted.search(data[1], 10, {"itopk_size": 128})
    assert not np.isin(I, np.arange(100)).any()
    assert (I[:, :, None] == gt[:, None, :]).any(2).mean() >= 0.95


def test_query_pinned_to_another_version_is_refused(tmp_path, data):
    """A shard answered any query from whatever version it held."""
    index = build(tmp_path, data[0][:1000], index="Flat")
    xq = index.planner.prepare(data[1][:2])
    with pytest.raises(VersionMismatch):
        index.search_query(xq, Query(5, version="some-other-version"))
    with pytest.raises(VersionMismatch, match="sequence"):
        index.search_query(xq, Query(5, version=index.index_version, min_sequence=3))
    _, I = index.search_query(xq, Query(5, version=index.index_version))
    np.testing.assert_array_equal(I, index.search(data[1][:2], 5)[1])


def test_shard_applies_its_own_defaults_and_refuses_foreign_knobs(tmp_path, data):
    """A shard searched with faiss's stored defaults (efSearch 16) when the query came
    resolved for another index type, and ignored knobs its index lacks."""
    from shards.params import SearchOverrides

    index = build(tmp_path, data[0][:3000], index="HNSW8,Flat", tune=False)
    xq = index.planner.prepare(data[1])
    with pytest.raises(InvalidQuery, match="nprobe does not apply"):
        index.search_query(xq, Query(10, SearchOverrides(nprobe=8)))
    _, I = index.search_query(xq, Query(10))  # the manifest's ef_search (64), not 16
    np.testing.assert_array_equal(
        I, index.search_prepared(xq, 10, SearchOverrides(ef_search=64))[1]
    )
    assert not np.array_equal(I, index.search_prepared(xq, 10, SearchOverrides(ef_search=16))[1])


def test_layout_change_is_named(tmp_path, data):
    a = build(tmp_path, data[0][:800], name="a", index="Flat", num_shards=2).manifest
    b = build(tmp_path, data[0][:800], name="b", index="Flat", num_shards=4).manifest
    c = build(
        tmp_path, data[0][:800], name="c", index="HNSW8,Flat", num_shards=2, tune=False
    ).manifest
    assert a.layout_change(c) is None  # another index type: fine live
    assert "num_shards 2 -> 4" in a.layout_change(b)


def test_other_metadata_columns_are_a_layout_change(tmp_path):
    """The app's log writer keeps the columns of the version it started with: a live swap
    to a version with another column dropped that column from acknowledged writes, and its
    replicas could not replay them."""
    import pyarrow as pa

    from shards.create import create_index

    opts = BuildOptions(num_shards=1, progress=False)
    root = str(tmp_path / "cols")
    one = create_index(root, 4, {"year": pa.int64()}, opts)
    two = create_index(root, 4, {"year": pa.int64(), "lang": pa.string()}, opts)
    assert "metadata_columns ['year'] -> ['year', 'lang']" in one.layout_change(two)
    assert one.layout_change(create_index(root, 4, {"year": pa.int64()}, opts)) is None


def test_parameter_cache_does_not_keep_old_delete_states(tmp_path, data):
    """The cache kept entries made under older states for other overrides, so old tombstone
    bitmaps (and old delta indexes) stayed alive."""
    index = build(tmp_path, data[0][:2000], index="IVF16,Flat", tune=False)
    shard = index.shards[0]
    for nprobe in (1, 2, 4):
        index.search(data[1][:2], 5, {"nprobe": nprobe})
    index.delete([3])
    old = weakref.ref(shard._state)
    index.delete([5])
    index.search(data[1][:2], 5, {"nprobe": 1})
    gc.collect()
    assert old() is None


def test_adds_append_without_copying_the_delta(tmp_path, data):
    """Every add rebuilt the delta ``IndexFlat`` from all earlier adds: O(n) per add."""
    xb = data[0]
    index = build(tmp_path, xb[:1000], index="Flat")
    shard = index.shards[0]
    index.add(xb[1000:1001], [1000])
    first = shard._state.delta
    for i in range(1001, 1400):
        index.add(xb[i : i + 1], [i])
    assert shard._state.delta._buffer[0] is first._buffer[0]  # rows appended in place
    index.delete([1005, 10])
    _, I = index.search(data[1], 10)
    live = np.setdiff1d(np.arange(1400), [1005, 10])
    _, gt = brute_force(xb[live], data[1], 10, "l2", ids=live)
    np.testing.assert_array_equal(I, gt)
