"""The recall monitor's ground truth: exact answers over one shard state equal brute force
over the rows that state holds (live, matching the filter), for every kind of index that
keeps exact vectors, after writes too; and the state an answer read stays the state its
re-run reads, whatever is written meanwhile."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.errors import UnsupportedOperation
from shards.oracle import exact_over, unmeasurable
from shards.recall import query_recall
from tests.conftest import clustered
from tests.shards.helpers import assert_same_knn, brute_force, float_tolerance

N, D = 6000, 16
KINDS = {
    "flat": "Flat",
    "ivf": "IVF32,Flat",
    "ivf-hnsw-quantizer": "IVF32_HNSW8,Flat",
    "hnsw": "HNSW16",
    "fastscan-refined": "IVF32,PQ8x4fs,RFlat",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    x = clustered(N, D, seed=3)
    ids = np.arange(N, dtype=np.int64) * 5 + 2
    band = np.random.default_rng(4).integers(0, 100, N)
    table = pa.table(
        {
            "id": ids,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D),
            "band": pa.array(band, pa.int32()),
        }
    )
    pq.write_table(table, root / "in.parquet")
    src = VectorSource(str(root / "in.parquet"), id_column="id", metadata_columns=["band"])
    built = {}
    for name, factory in {**KINDS, "fastscan": "IVF32,PQ8x4fs"}.items():
        opts = BuildOptions(num_shards=2, index=factory, progress=False, tune=False)
        build_index(src, str(root / name), opts)
        built[name] = root / name
    return x, ids, band, built


def _written(built, name, tmp_path):
    """A copy of index ``name`` with 300 upserts (some replacing rows) and 500 deletes."""
    shutil.copytree(built[name], tmp_path / name)
    return ShardedIndex.open(str(tmp_path / name))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("filtered", [False, True])
def test_exact_over_a_state_is_brute_force_over_its_live_rows(data, kind, filtered, tmp_path):
    x, ids, band, built = data
    index = _written(built, kind, tmp_path)
    rng = np.random.default_rng(7)
    live = dict(zip(ids.tolist(), zip(x, band.tolist(), strict=True), strict=True))
    new = clustered(300, D, seed=8)
    new_band = rng.integers(0, 100, 300).tolist()
    up_ids = np.concatenate([rng.choice(ids, 100, replace=False), 10**7 + np.arange(200)])
    index.upsert(new, up_ids, [{"band": b} for b in new_band])
    gone = rng.choice(ids, 500, replace=False)
    index.delete(gone)
    # the expected live set, from what was written (not read back from the index)
    live.update(zip(up_ids.tolist(), zip(new, new_band, strict=True), strict=True))
    for i in gone.tolist():
        del live[i]
    expr = {"band": {"$lt": 30}} if filtered else None
    keep = {i: vb for i, vb in live.items() if expr is None or vb[1] < 30}
    xb = np.stack([v for v, _ in keep.values()])
    kept_ids = np.fromiter(keep, np.int64)
    xq = clustered(20, D, seed=9)
    Dref, Iref = brute_force(xb, xq, 10, "l2", kept_ids)
    De, Ie = exact_over(index, xq, 10, index.parse_filter(expr), index.applied.states())
    assert_same_knn(Dref, Iref, De, Ie, float_tolerance(xb, xq, "l2"))
    assert unmeasurable(next(iter(index.shards.values())).index) is None


def test_the_state_an_answer_read_is_the_state_its_rerun_reads(data, tmp_path):
    """A delete after the answer changes nothing for its re-run: the snapshot is kept."""
    x, _, _, built = data
    index = _written(built, "flat", tmp_path)
    xq = x[:5] + 0.01
    states = index.applied.states()
    _, before = exact_over(index, xq, 10, None, states)
    index.delete(before[:, 0])  # every query's nearest row goes
    _, same = exact_over(index, xq, 10, None, states)
    _, now = exact_over(index, xq, 10, None, index.applied.states())
    assert (same == before).all()
    assert not np.isin(before[:, 0], now).any()


def test_an_index_without_exact_vectors_is_unmeasurable_and_says_why(data):
    x, _, _, built = data
    index = ShardedIndex.open(str(built["fastscan"]))
    why = unmeasurable(next(iter(index.shards.values())).index)
    assert why is not None and "refine" in why
    with pytest.raises(UnsupportedOperation, match="refine"):
        exact_over(index, x[:2], 10, None, index.applied.states())


def test_query_recall_counts_hits_ties_and_empty_answers():
    De = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 2.0], [np.inf, np.inf, np.inf]], np.float32)
    Ie = np.array([[1, 2, 3], [4, 5, 6], [-1, -1, -1]])
    D = np.array([[1.0, 3.0, 9.0], [1.0, 2.0, 2.0], [np.inf, np.inf, np.inf]], np.float32)
    I = np.array([[1, 3, 7], [4, 5, 9], [-1, -1, -1]])  # row 1: 9 ties with 6 at 2.0
    r = query_recall(D, I, De, Ie)
    assert r[0] == pytest.approx(2 / 3) and r[1] == 1.0 and np.isnan(r[2])
    worse = np.array([[1.0, 3.0, 2.5]], np.float32)  # a wrong id with a better score: a miss
    assert query_recall(worse, np.array([[1, 3, 8]]), De[:1], Ie[:1])[0] == pytest.approx(2 / 3)
