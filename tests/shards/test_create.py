"""Empty indexes (``shards create``): filled by writes only, exact against brute force."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, InvalidInput, ShardedIndex, VectorSource, build_index
from shards.cli import main
from shards.create import create_index, parse_columns
from shards.metadata import lookup_metadata
from tests.conftest import clustered
from tests.shards.helpers import assert_same_knn, brute_force, float_tolerance

COLUMNS = {"text": pa.string(), "year": pa.int64(), "tags": pa.list_(pa.string())}


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_writes_to_an_empty_index_match_brute_force(tmp_path, metric):
    uri = str(tmp_path / "c")
    m = create_index(uri, 32, COLUMNS, BuildOptions(num_shards=3, metric=metric, progress=False))
    assert (m.ntotal, m.factory, m.dim) == (0, "Flat", 32)
    index = ShardedIndex.open(uri)
    xq = clustered(20, 32, seed=2)
    D, I = index.search(xq, 5)
    assert (I == -1).all()  # nothing yet, and no error

    x, ids = clustered(600, 32, seed=1), np.arange(1000, 1600)
    meta = [{"text": f"t{i}", "year": 1990 + i % 30, "tags": ["a"] if i % 2 else []} for i in ids]
    index.upsert(x, ids, meta)
    assert index.delete(ids[::5]) == 120
    live = np.ones(600, bool)
    live[::5] = False
    years = np.array([1990 + i % 30 for i in ids])
    for filt, keep in [(None, live), ({"year": {"$gte": 2010}}, live & (years >= 2010))]:
        Dref, Iref = brute_force(x[keep], xq, 10, metric, ids[keep])
        D, I = index.search(xq, 10, filter=filt)
        assert_same_knn(Dref, Iref, D, I, float_tolerance(x[keep], xq, metric))

    reopened = ShardedIndex.open(uri)  # the writes are in the log, replayed
    D2, I2 = reopened.search(xq, 10)
    Dref, Iref = brute_force(x[live], xq, 10, metric, ids[live])
    assert_same_knn(Dref, Iref, D2, I2, float_tolerance(x[live], xq, metric))
    row = lookup_metadata(reopened, [1001], ["text", "tags"]).to_pylist()[0]
    assert row == {"id": 1001, "text": "t1001", "tags": ["a"]}

    compacted = ShardedIndex.open(uri, reopened.compact().index_version, log=False)
    assert compacted.ntotal == live.sum()
    D3, I3 = compacted.search(xq, 10)
    assert_same_knn(Dref, Iref, D3, I3, float_tolerance(x[live], xq, metric))


def test_every_shard_of_a_small_build_knows_the_metadata_columns(tmp_path):
    """Two rows in four shards: the shards no row went to still have the metadata columns
    (the version's schema was read from shard 0, which had none), and a write to one of them
    works (it raised IndexError on an empty id map)."""
    src = tmp_path / "two.parquet"
    table = pa.table(
        {
            "vector": pa.array(clustered(2, 8, seed=3).tolist(), pa.list_(pa.float32(), 8)),
            "lang": ["en", "de"],
        }
    )
    pq.write_table(table, src)
    opts = BuildOptions(num_shards=4, index="Flat", progress=False)
    build_index(VectorSource(str(src), metadata_columns=["lang"]), str(tmp_path / "i"), opts)
    index = ShardedIndex.open(str(tmp_path / "i"))
    assert all(s.metadata is not None for s in index.shards.values())
    assert index.metadata_schema.names == ["lang"]
    x = clustered(40, 8, seed=4)
    index.upsert(x, np.arange(10, 50), [{"lang": "fr"}] * 40)  # every shard gets rows
    _, I = index.search(x[:3], 1, filter={"lang": "fr"})
    assert I[:, 0].tolist() == [10, 11, 12]


def test_an_empty_input_needs_its_dimension(tmp_path):
    src = tmp_path / "e.parquet"
    pq.write_table(pa.table({"vector": pa.array([], pa.list_(pa.float32()))}), src)
    with pytest.raises(InvalidInput, match="fixed-size list"):
        VectorSource(str(src))
    with pytest.raises(InvalidInput, match="must be trained"):
        create_index(str(tmp_path / "x"), 8, opts=BuildOptions(index="IVF16,Flat"))
    with pytest.raises(InvalidInput, match="positive integer"):
        create_index(str(tmp_path / "x"), 0)


def test_column_specs():
    assert parse_columns("text:string, year:int64,tags:list<string>,at:timestamp[us]") == {
        "text": pa.string(),
        "year": pa.int64(),
        "tags": pa.list_(pa.string()),
        "at": pa.timestamp("us"),
    }
    for bad, why in [
        ("text", "NAME:TYPE"),
        ("a:strng", "unknown column type"),
        ("id:int64", "reserved"),
        ("a:int64,a:string", "repeated"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            parse_columns(bad)


def test_create_command(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert (
        main(
            [
                "create",
                "--out",
                out,
                "--dim",
                "6",
                "--metric",
                "ip",
                "--shards",
                "2",
                "--metadata",
                "text:string",
            ]
        )
        == 0
    )
    assert "0 vectors x 6 (ip) in 2 shard(s), Flat" in capsys.readouterr().out
    assert ShardedIndex.open(out).metadata_schema.names == ["text"]
    assert main(["create", "--out", out, "--dim", "6", "--metadata", "text:strin"]) == 2
    assert "unknown column type 'strin'" in capsys.readouterr().err
