"""Parquet input (fixed-size and variable lists, ids, metadata), metadata lookup, id map."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, InvalidInput, ShardedIndex, VectorSource, build_index
from shards.metadata import export_id_map, lookup_metadata
from tests.shards.helpers import brute_force


def write_parquet(path, x, ids, fixed=True):
    values = pa.array(x.ravel())
    vectors = (
        pa.FixedSizeListArray.from_arrays(values, x.shape[1])
        if fixed
        else pa.array(list(x), pa.list_(pa.float32()))
    )
    table = pa.table(
        {
            "key": ids,
            "emb": vectors,
            "title": [f"item-{i}" for i in ids],
            "score": np.arange(len(ids), dtype=np.float64),
        }
    )
    pq.write_table(table, path, row_group_size=700)


@pytest.mark.parametrize("fixed", [True, False])
def test_parquet_build_with_ids_and_metadata(tmp_path, data, fixed):
    xb = data[0][:3000]
    ids = np.arange(3000, dtype=np.int64) * 10 + 7
    write_parquet(tmp_path / "in.parquet", xb, ids, fixed)
    src = VectorSource(
        str(tmp_path / "in.parquet"),
        vector_column="emb",
        id_column="key",
        metadata_columns=["title", "score"],
    )
    build_index(
        src,
        str(tmp_path / "idx"),
        BuildOptions(num_shards=3, index="Flat", chunk_rows=1000, progress=False),
    )
    index = ShardedIndex.open(str(tmp_path / "idx"))
    _D, I = index.search(data[1], 10)
    _, ref = brute_force(xb, data[1], 10, "l2", ids)
    np.testing.assert_array_equal(I, ref)
    meta = lookup_metadata(index, I[0], ["title"])
    assert meta.column("title").to_pylist() == [f"item-{i}" for i in I[0]]
    padded = lookup_metadata(index, [ids[5], -1])
    assert padded.column("score").to_pylist() == [5.0, None]
    assert export_id_map(index, str(tmp_path / "ids.parquet")) == 3000
    id_map = pq.read_table(tmp_path / "ids.parquet")
    assert sorted(id_map.column("id").to_pylist()) == sorted(ids.tolist())
    assert set(id_map.column("shard").to_pylist()) == {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vector_column": "nope"}, "no column 'nope'"),
        ({"vector_column": "title"}, "list of floats"),
        ({"vector_column": "emb", "id_column": "title"}, "must be integers"),
    ],
)
def test_bad_parquet_columns(tmp_path, data, kwargs, message):
    write_parquet(tmp_path / "in.parquet", data[0][:10], np.arange(10))
    with pytest.raises(InvalidInput, match=message):
        VectorSource(str(tmp_path / "in.parquet"), **kwargs)


def test_ragged_vectors_and_duplicate_ids(tmp_path):
    pq.write_table(pa.table({"vector": [[1.0, 2.0], [1.0, 2.0, 3.0]]}), tmp_path / "r.parquet")
    with pytest.raises(InvalidInput, match="row 1"):
        build_index(
            VectorSource(str(tmp_path / "r.parquet")),
            str(tmp_path / "o"),
            BuildOptions(progress=False),
        )
    pq.write_table(pa.table({"vector": [[1.0, 2.0]] * 3, "id": [1, 2, 1]}), tmp_path / "d.parquet")
    with pytest.raises(InvalidInput, match="duplicate id 1"):
        build_index(
            VectorSource(str(tmp_path / "d.parquet"), id_column="id"),
            str(tmp_path / "o"),
            BuildOptions(progress=False),
        )


def test_nan_in_input_is_refused(tmp_path):
    x = np.ones((10, 4), np.float32)
    x[3, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(Exception, match="NaN"):
        build_index(
            VectorSource(str(tmp_path / "x.npy")), str(tmp_path / "o"), BuildOptions(progress=False)
        )


def test_fortran_order_npy(tmp_path, data):
    xb = np.asfortranarray(data[0][:2000])
    np.save(tmp_path / "f.npy", xb)
    build_index(
        VectorSource(str(tmp_path / "f.npy")),
        str(tmp_path / "idx"),
        BuildOptions(num_shards=2, index="Flat", chunk_rows=300, progress=False),
    )
    _, I = ShardedIndex.open(str(tmp_path / "idx")).search(data[1], 5)
    np.testing.assert_array_equal(I, brute_force(np.ascontiguousarray(xb), data[1], 5, "l2")[1])
