"""Filtered search in the library: brute force over the filtered subset is the oracle, at
every selectivity, for exact and ANN indexes, after writes too."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.filtered import exact_max_rows
from tests.conftest import clustered
from tests.shards.helpers import assert_same_knn, brute_force, float_tolerance, recall

N, D = 20_000, 16
# selectivity -> filter on the seeded attributes (band is uniform in [0, 1000))
SELECTIVE = {
    0.5: {"band": {"$lt": 500}},
    0.1: {"band": {"$gte": 900}},
    0.01: {"$and": [{"band": {"$gte": 100}}, {"band": {"$lt": 110}}]},
    0.001: {"band": 7},
}


NARROW = {
    "ivf": {"nprobe": 1},
    "hnsw": {"ef_search": 10},
    "fastscan": {"nprobe": 1, "k_factor": 1},
}


def attributes(n: int, seed: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "band": pa.array(rng.permutation(np.arange(n) % 1000), pa.int32()),
        "cat": [f"c{i}" for i in rng.integers(0, 5, n)],
        "tags": [
            list(rng.choice(["a", "b", "c"], rng.integers(0, 3), replace=False)) for _ in range(n)
        ],
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("filtered")
    x = clustered(N, D, seed=3)
    ids = np.arange(N, dtype=np.int64) * 7 + 3
    table = pa.table(
        {
            "id": ids,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D),
            **attributes(N),
        }
    )
    pq.write_table(table, root / "in.parquet")
    src = VectorSource(
        str(root / "in.parquet"), id_column="id", metadata_columns=["band", "cat", "tags"]
    )
    built = {}
    for name, factory in [
        ("flat", "Flat"),
        ("ivf", "IVF64,Flat"),
        ("hnsw", "HNSW16"),
        ("fastscan", "IVF64,PQ8x4fs,RFlat"),
    ]:
        build_index(
            src,
            str(root / name),
            BuildOptions(num_shards=3, index=factory, progress=False, tune=False),
        )
        built[name] = str(root / name)
    return x, ids, table, built


def subset(table: pa.Table, expr) -> np.ndarray:
    from shards.filters import parse_filter

    return parse_filter(expr, table.drop_columns(["id", "vector"]).schema).mask(table)


@pytest.mark.parametrize("nq", [50, 3])
@pytest.mark.parametrize("kind", ["flat", "fastscan"])
@pytest.mark.parametrize("selectivity", sorted(SELECTIVE))
def test_exact_plans_equal_brute_force_over_the_subset(data, selectivity, kind, nq, monkeypatch):
    """A Flat index always takes the exact plan; an index with an exact refine takes it up
    to the threshold, reading the refine's flat storage. Many matching rows of a Flat index
    are read in blocks for a batch (BLAS), and scanned in place with a selector for a few
    queries (faiss's scan without BLAS: no rows copied)."""
    if kind == "flat":
        monkeypatch.setattr("shards.filtered.EXACT_MAX_FLOATS", 0)
        monkeypatch.setattr("shards.filtered.VECTOR_BYTES", 0)  # "many" rows match
        monkeypatch.setattr("shards.filtered.EXACT_BLOCK", 1000)  # several blocks merged
    x, ids, table, built = data
    index = ShardedIndex.open(built[kind])
    expr = SELECTIVE[selectivity]
    keep = subset(table, expr)
    assert abs(keep.mean() - selectivity) < selectivity * 0.2
    xq = clustered(nq, D, seed=9)
    Dref, Iref = brute_force(x[keep], xq, 10, "l2", ids[keep])
    D_, I_, plans = index.search_planned(xq, 10, index.resolve(), index.parse_filter(expr))
    assert_same_knn(Dref, Iref, D_, I_, float_tolerance(x, xq, "l2"))
    assert set(plans.values()) == {"exact"}
    assert kind == "flat" or keep.sum() / 3 <= exact_max_rows(D)  # the refine's storage read


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "fastscan"])
@pytest.mark.parametrize("selectivity", sorted(SELECTIVE))
def test_ann_filtered_recall_holds_at_every_selectivity(data, kind, selectivity, monkeypatch):
    """The ANN plan (the exact one turned off) keeps its recall: the widened search reaches
    as many matching candidates as an unfiltered one."""
    monkeypatch.setattr("shards.filtered.EXACT_MAX_FLOATS", 0)
    x, ids, table, built = data
    index = ShardedIndex.open(built[kind])
    expr = SELECTIVE[selectivity]
    keep = subset(table, expr)
    xq = clustered(100, D, seed=9)
    _, gt = brute_force(x[keep], xq, 10, "l2", ids[keep])
    params = NARROW[kind]  # a search narrow enough that its recall is far from 1
    plain = recall(index.search(xq, 10, params)[1], brute_force(x, xq, 10, "l2", ids)[1])
    ov = index.resolve(params)
    _, I_, plans = index.search_planned(xq, 10, ov, index.parse_filter(expr))
    got = recall(I_, gt)
    print(f"{kind} at {selectivity}: recall {got:.3f} (unfiltered {plain:.3f})")
    assert set(plans.values()) == {"ann"}
    assert got >= min(0.95, plain - 0.02), (kind, selectivity, got, plain, plans)
    assert (I_ >= 0).all()  # k results whenever k rows match: never a short post-filter
    assert np.isin(I_, ids[keep]).all()  # and only matching rows


def test_writes_are_filtered_at_once_and_deleted_rows_never_match(data, tmp_path):
    import shutil

    x, ids, table, built = data
    shutil.copytree(built["ivf"], tmp_path / "ivf")
    index = ShardedIndex.open(str(tmp_path / "ivf"))
    rng = np.random.default_rng(5)
    live = dict(zip(ids.tolist(), x, strict=True))
    band = dict(zip(ids.tolist(), table["band"].to_pylist(), strict=True))
    new_ids = np.arange(10**9, 10**9 + 300, dtype=np.int64)
    xs = clustered(300, D, seed=11)
    index.upsert(xs, new_ids, [{"band": 7, "cat": "new"} for _ in new_ids])
    moved = rng.choice(ids, 200, replace=False)  # replaced: new vectors and metadata
    xm = clustered(200, D, seed=12)
    index.upsert(xm, moved, {"band": [7] * 200})
    gone = rng.choice(ids[np.asarray(table["band"]) == 7], 5, replace=False)
    index.delete(gone)
    for i, v in zip(new_ids.tolist(), xs, strict=True):
        live[i], band[i] = v, 7
    for i, v in zip(moved.tolist(), xm, strict=True):
        live[i], band[i] = v, 7
    for i in gone.tolist():
        live.pop(i)
    want = np.array(sorted(i for i in live if band[i] == 7), np.int64)
    xq = clustered(40, D, seed=13)
    Dref, Iref = brute_force(np.stack([live[i] for i in want]), xq, 10, "l2", want)
    D_, I_, plans = index.search_planned(xq, 10, index.resolve(), index.parse_filter({"band": 7}))
    assert set(plans.values()) == {"exact"}
    assert_same_knn(Dref, Iref, D_, I_, float_tolerance(x, xq, "l2"))
    assert not np.isin(I_, gone).any()
    # more results asked than rows match: every match, then -1
    few = index.search(xq[:2], 50, filter={"cat": "new", "band": {"$ne": 7}})[1]
    assert (few == -1).all()
    _, I_ = index.search(xq[:2], len(want) + 5, filter={"band": 7})
    assert set(I_[0][I_[0] >= 0].tolist()) == set(want.tolist()) and (I_[0][-5:] == -1).all()


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_score_threshold_keeps_only_results_within_it_with_a_filter_too(tmp_path, metric):
    from shards.errors import InvalidQuery
    from tests.shards.helpers import build

    x = clustered(3000, D, seed=21)
    index = build(tmp_path, x, index="Flat", metric=metric, num_shards=2)
    xq = clustered(20, D, seed=22)
    Dref, Iref = brute_force(x, xq, 10, metric, np.arange(3000))
    threshold = float(np.median(Dref[:, 4]))  # about half the queries keep 5 or more
    _, I_ = index.search(xq, 10, score_threshold=threshold)
    ok = (Dref >= threshold) if metric == "ip" else (Dref <= threshold)
    assert 0 < ok.sum() < ok.size
    np.testing.assert_array_equal(np.where(ok, Iref, -1), I_)
    filt = {"$exists": True}  # no metadata here: refused, with or without a threshold
    with pytest.raises(InvalidQuery, match="no metadata"):
        index.search(xq, 10, filter={"a": filt}, score_threshold=threshold)
    for bad in ("near", float("inf"), True):
        with pytest.raises(InvalidQuery, match="score_threshold"):
            index.search(xq, 10, score_threshold=bad)
