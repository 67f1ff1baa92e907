"""add / delete / compact agree with brute force over the live vectors."""

import numpy as np
import pytest

from shards import InvalidInput, ShardedIndex, UnknownId, UnsupportedOperation
from shards.artefact import list_versions
from tests.conftest import clustered
from tests.shards.helpers import assert_same_knn, brute_force, build, float_tolerance


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16,Flat", "IVF16,PQ16x4fs,RFlat"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_add_delete_compact_match_brute_force(tmp_path, data, factory, metric):
    xb, xq = data[0][:5000], data[1]
    index = build(tmp_path, xb, index=factory, metric=metric, num_shards=3, tune=False)
    exact = factory == "Flat"
    params = {} if exact else {"nprobe": 16} if "HNSW" not in factory else {"ef_search": 256}
    if "RFlat" in factory:
        params["k_factor"] = 16
    extra = clustered(500, 32, seed=9)
    extra_ids = np.arange(100_000, 100_500)
    index.add(extra, extra_ids)
    gone = np.arange(0, 5000, 7)
    assert index.delete(np.concatenate([gone, [100_001, 10**9]])) == len(gone) + 1
    live_x = np.concatenate([np.delete(xb, gone, axis=0), np.delete(extra, 1, axis=0)])
    live_ids = np.concatenate([np.delete(np.arange(5000), gone), np.delete(extra_ids, 1)])
    Dref, Iref = brute_force(live_x, xq, 10, metric, live_ids)
    D, I = index.search(xq, 10, params)
    assert index.ntotal == len(live_ids)
    assert not np.isin(I, np.concatenate([gone, [100_001]])).any()
    if exact:
        assert_same_knn(Dref, Iref, D, I, float_tolerance(live_x, xq, metric))
    else:
        assert (I[:, :, None] == Iref[:, None, :]).any(2).mean() >= 0.95

    manifest = index.compact()
    assert manifest.parent_version == index.index_version
    assert len(list_versions(str(tmp_path / "idx"))) == 2
    compacted = ShardedIndex.open(str(tmp_path / "idx"))
    assert compacted.index_version == manifest.index_version and compacted.ntotal == len(live_ids)
    Dc, Ic = compacted.search(xq, 10, params)
    if exact:
        assert_same_knn(Dref, Iref, Dc, Ic, float_tolerance(live_x, xq, metric))
    else:
        assert (Ic[:, :, None] == Iref[:, None, :]).any(2).mean() >= 0.95
    assert manifest.base_sequence == index.sequence == 2  # the add and the delete
    old = ShardedIndex.open(str(tmp_path / "idx"), index.index_version, log=False)
    assert old.ntotal == 5000  # the published version's files were not touched
    replayed = ShardedIndex.open(str(tmp_path / "idx"), index.index_version)
    assert replayed.ntotal == len(live_ids) and replayed.sequence == 2  # its log, replayed


def test_add_rejects_existing_and_duplicate_ids(tmp_path, data):
    index = build(tmp_path, data[0][:1000], index="Flat", num_shards=2)
    with pytest.raises(Exception, match="already exists"):
        index.add(data[0][:1], [5])
    with pytest.raises(InvalidInput, match="more than once"):
        index.add(data[0][:2], [7000, 7000])
    index.delete([5])
    index.add(data[0][:1], [5])  # re-adding a deleted id is fine
    assert index.ntotal == 1000


def test_search_by_id_excludes_itself(tmp_path, data):
    xb = data[0][:3000]
    index = build(tmp_path, xb, index="Flat", num_shards=3)
    _D, I = index.search_by_id([10, 20], 5)
    _, ref = brute_force(xb, xb[[10, 20]], 6, "l2")
    np.testing.assert_array_equal(I, ref[:, 1:])
    with pytest.raises(UnknownId, match="123456"):
        index.search_by_id([123456], 5)


def test_compact_of_lossy_index_is_refused(tmp_path, data):
    index = build(tmp_path, data[0][:3000], index="IVF16,PQ16x4fs", num_shards=1, tune=False)
    index.delete([1])
    with pytest.raises(UnsupportedOperation, match="lossily"):
        index.compact()


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW16,Flat"])
def test_delete_after_searching_with_the_same_params_filters(tmp_path, data, factory):
    """Parameter objects are reused between calls: a delete must still reach the next search."""
    xb, xq = data[0][:3000], data[1][:50]
    index = build(tmp_path, xb, index=factory, num_shards=1, tune=False)
    params = {"nprobe": 16} if "IVF" in factory else {"ef_search": 128}
    _, before = index.search(xq, 10, params)
    first = np.unique(before[:, 0])
    index.delete(first)
    _, after = index.search(xq, 10, params)
    assert not np.isin(after, first).any()
    _, more = index.search(xq, 20, params)  # another k: its own parameter object
    assert more.shape == (50, 20) and not np.isin(more, first).any()
    index.add(xb[:1], [50_000])  # adds go to the delta index, deletes stay filtered
    _, again = index.search(xb[:1], 10, params)
    assert 50_000 in again[0]
    assert not np.isin(again, first).any()


def test_shared_coarse_search_after_a_delete_uses_the_new_states_parameters(tmp_path):
    """The preassigned path keeps its parameter object in the shard state: a delete makes
    a new state, so a deleted row is never returned by a cached object of the old one."""
    xb = clustered(4000, 16, seed=3)
    index = build(tmp_path, xb, index="IVF32,Flat", num_shards=2, tune=False)
    assert index.shared_coarse
    xq = xb[:20] + 0.001
    _, before = index.search(xq, 5, {"nprobe": 4})
    _, again = index.search(xq, 5, {"nprobe": 4})  # from the cached parameters
    assert (before == again).all()
    index.delete(before[:, 0])
    _, after = index.search(xq, 5, {"nprobe": 4})
    assert not np.isin(before[:, 0], after).any()
