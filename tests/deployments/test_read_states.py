"""A shard replica's reads (get by ids, pages by filter, metadata, stored vectors) answer
from one snapshot of its shards and name the sequence read before it (no Ray: the
replica's methods over a real index, a write landing while the rows are read, as the
replica's log follower may apply one from its thread)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shards.fetch
from deployments.shard import ShardServer
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.query import Query
from tests.conftest import clustered


@pytest.fixture
def index(tmp_path):
    x = clustered(200, 8, seed=11)
    src = tmp_path / "in.parquet"
    langs = ["en"] * 100 + ["fr"] * 100
    table = {"id": np.arange(200), "vector": pa.array(x.tolist(), pa.list_(pa.float32(), 8))}
    pq.write_table(pa.table({**table, "lang": langs}), src)
    opts = BuildOptions(num_shards=2, index="Flat", progress=False)
    build_index(
        VectorSource(str(src), id_column="id", metadata_columns=["lang"]), str(tmp_path / "i"), opts
    )
    index = ShardedIndex.open(str(tmp_path / "i"))  # with the log: writes get sequences
    index.upsert(clustered(1, 8, seed=12), [1000], [{"lang": "en"}])
    return index, x


def server(index) -> ShardServer:
    """A ShardServer over ``index`` without Ray: only what the reads touch."""
    srv = ShardServer.__new__(ShardServer)
    srv.opts = SimpleNamespace(faults=None)
    srv._held = lambda version: SimpleNamespace(index=index)
    return srv


def landing(monkeypatch, write) -> None:
    """``write()`` lands once, while the rows are being read (before their metadata)."""
    real, once = shards.fetch.lookup_metadata, [True]

    def hooked(*args, **kwargs):
        if once and once.pop():
            write()
        return real(*args, **kwargs)

    monkeypatch.setattr(shards.fetch, "lookup_metadata", hooked)


def test_get_by_ids_names_the_state_its_rows_come_from(index, monkeypatch):
    index, x = index
    start = index.sequence
    landing(monkeypatch, lambda: index.delete([5, 8]))
    ids, meta, vectors, seq = asyncio.run(
        server(index).fetch(np.array([5, 6, 8]), None, True, Query(1))
    )
    assert index.sequence == start + 1  # the delete landed during the read
    assert seq == start and ids.tolist() == [5, 6, 8]  # ... after the state read
    assert meta == [{"id": i, "lang": "en"} for i in (5, 6, 8)]
    np.testing.assert_array_equal(vectors, x[[5, 6, 8]])
    again = asyncio.run(server(index).fetch(np.array([5, 6]), None, False, Query(1)))
    assert again[0].tolist() == [6] and again[3] == start + 1  # a read after it sees it


def test_a_filtered_page_names_the_state_its_rows_come_from(index, monkeypatch):
    index, x = index
    start = index.sequence
    landing(monkeypatch, lambda: index.upsert(x[7:8], [7], [{"lang": "fr"}]))
    query = Query(1, filter=index.parse_filter({"lang": "en"}))
    ids, meta, _, seq = asyncio.run(server(index).scan(10, -1, None, False, query))
    assert index.sequence == start + 1 and seq == start
    assert ids.tolist() == list(range(10)) and {m["lang"] for m in meta} == {"en"}


def test_metadata_and_vectors_of_a_search_come_from_one_state(index, monkeypatch):
    """The router's metadata and search-by-id reads: one snapshot, not one per step (a
    delete landing between finding the ids and reading their rows changes neither)."""
    index, x = index
    real = index.reconstruct

    def reconstruct(*args, **kwargs):
        index.delete([3])
        return real(*args, **kwargs)

    monkeypatch.setattr(index, "reconstruct", reconstruct)
    found, vectors, seq = asyncio.run(server(index).reconstruct(np.array([3, 4]), Query(1)))
    assert found.tolist() == [True, True] and not index.contains([3])[0]  # deleted since
    assert seq == index.sequence - 1
    np.testing.assert_array_equal(vectors, x[[3, 4]])


def test_a_search_answers_the_metadata_of_the_states_it_read(index):
    """A search's metadata is read with its states (``LoadedShards.metadata_of``), not
    after the merge from whatever state the shards hold then: a row deleted or rewritten
    right after the search is still the row the search found, never null."""
    from deployments.answer import metadata_rows
    from deployments.held import LoadedShards

    index, x = index
    held = LoadedShards.__new__(LoadedShards)
    held.index = index
    _, I, _, states, _, _ = held.timed(x[[3, 150]], Query(2), None)
    assert I[:, 0].tolist() == [3, 150]
    index.delete([3])
    index.upsert(x[150:151], [150], [{"lang": "en"}])  # was "fr"
    table = held.metadata_of(I, None, states)
    rows = metadata_rows([table], np.concatenate([I, [[-1], [-1]]], axis=1))
    assert [r[0] for r in rows] == [{"id": 3, "lang": "en"}, {"id": 150, "lang": "fr"}]
    assert [r[-1] for r in rows] == [None, None]  # padding
    assert held.metadata_of(I, ("lang",), states).column_names == ["id", "lang"]
    now = held.metadata_of(I, None, index.snapshot()[1])  # what a read after it gives
    assert now.to_pylist()[0] == {"id": 3, "lang": None}  # the null the router used to give


def test_search_slots_hold_without_merging():
    """``max_batch_size: 1`` (merging off) sent every search straight to a thread, so
    ``search_slots`` was ignored: 8 searches ran at once with one slot."""
    from deployments.coalesce import Coalescer

    running, most = [0], [0]

    async def run(xq, query, deadline, members=None):
        running[0] += 1
        most[0] = max(most[0], running[0])
        await asyncio.sleep(0.01)
        running[0] -= 1
        return xq, xq, "v", 0, {}, []

    srv = ShardServer.__new__(ShardServer)
    srv.opts = SimpleNamespace(faults=None, batch_size=1)
    srv._held = lambda version: SimpleNamespace(cheap=lambda xq, q: False)
    srv._run = run

    async def main():
        srv.coalescer = Coalescer(run, 1, 1)  # one slot, no merging
        xq = np.zeros((1, 8), np.float32)
        await asyncio.gather(*(srv.search(xq, Query(1)) for _ in range(8)))

    asyncio.run(main())
    assert most[0] == 1
