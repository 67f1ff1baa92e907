"""Reading build input by row range, from local paths and ``pyarrow.fs`` URIs."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards.errors import InvalidInput
from shards.source import VectorSource, sample_rows


@pytest.fixture
def x():
    return np.random.default_rng(3).standard_normal((1000, 8)).astype(np.float32)


def _parquet(tmp_path, x, row_group_size=128):
    path = tmp_path / "in.parquet"
    table = pa.table(
        {
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
            "key": pa.array(np.arange(len(x)) * 7 + 1, pa.int64()),
            "tag": pa.array([f"t{i % 5}" for i in range(len(x))]),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _whole(source: VectorSource, pieces) -> tuple[np.ndarray, np.ndarray, list]:
    chunks = [source.read(a, b) for a, b in pieces]
    tags = [t for c in chunks if c.metadata is not None for t in c.metadata["tag"].to_pylist()]
    return (
        np.concatenate([c.vectors for c in chunks]),
        np.concatenate([c.ids for c in chunks]),
        tags,
    )


@pytest.mark.parametrize("uri", [False, True])
def test_npy_ranges_local_and_uri(tmp_path, x, uri):
    np.save(tmp_path / "x.npy", x)
    path = f"file://{tmp_path}/x.npy" if uri else str(tmp_path / "x.npy")
    source = VectorSource(path)
    assert (source.n, source.d) == x.shape
    pieces = source.pieces(300)
    assert pieces == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    xs, ids, _ = _whole(source, pieces)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ids, np.arange(1000))
    np.testing.assert_array_equal(source.read(17, 18).vectors[0], x[17])
    xt, rows = source.sample(50, seed=4)
    np.testing.assert_array_equal(rows, sample_rows(1000, 50, 4))
    np.testing.assert_array_equal(xt, x[rows])


@pytest.mark.parametrize("uri", [False, True])
def test_parquet_pieces_follow_row_groups(tmp_path, x, uri):
    path = _parquet(tmp_path, x)
    where = f"file://{path}" if uri else str(path)
    source = VectorSource(where, id_column="key", metadata_columns=["tag"])
    pieces = source.pieces(300)
    assert pieces[0] == (0, 256) and pieces[-1][1] == 1000
    assert all(a == b for (_, a), (b, _) in itertools.pairwise(pieces))
    assert all((a % 128 == 0) for a, _ in pieces)  # whole row groups
    xs, ids, tags = _whole(source, pieces)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ids, np.arange(1000) * 7 + 1)
    assert tags == [f"t{i % 5}" for i in range(1000)]
    mid = source.read(100, 300)  # across row groups, not on their boundaries
    np.testing.assert_array_equal(mid.vectors, x[100:300])
    np.testing.assert_array_equal(mid.ids, np.arange(100, 300) * 7 + 1)
    streamed = np.concatenate([c.vectors for c in source.chunks(333)])
    np.testing.assert_array_equal(streamed, x)


def test_a_large_row_group_is_one_piece(tmp_path, x):
    source = VectorSource(str(_parquet(tmp_path, x, row_group_size=1000)))
    assert source.pieces(100) == [(0, 1000)]


def test_bad_inputs_and_ranges(tmp_path, x):
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InvalidInput, match="does not exist"):
        VectorSource(f"file://{tmp_path}/nope.npy")
    with pytest.raises(InvalidInput, match="does not exist"):
        VectorSource(str(tmp_path / "nope.parquet"))
    with pytest.raises(InvalidInput, match="outside"):
        VectorSource(str(tmp_path / "x.npy")).read(900, 1001)


def test_sample_rows_is_seeded_and_sorted():
    a, b = sample_rows(10_000, 500, 1), sample_rows(10_000, 500, 1)
    np.testing.assert_array_equal(a, b)
    assert (np.diff(a) > 0).all() and a.dtype == np.int64
    assert not np.array_equal(a, sample_rows(10_000, 500, 2))
    assert len(sample_rows(10, 500, 0)) == 10
