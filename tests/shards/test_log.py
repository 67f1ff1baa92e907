"""The mutation log: durable upserts and deletes, replayed exactly once, checked against
brute force over the expected live set."""

import datetime
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, InvalidInput, ShardedIndex, VectorSource, build_index
from shards.errors import ConcurrentUpdate, CorruptLogSegment
from shards.log import Mutation, MutationLog
from shards.metadata import lookup_metadata
from tests.conftest import clustered
from tests.shards.helpers import assert_same_knn, brute_force, build, float_tolerance

D = 16


def build_with_metadata(tmp_path, n=2000, partition="hash"):
    x = clustered(n, D, seed=3)
    ids = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            "id": ids,
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D),
            "tag": [f"t{i % 5}" for i in ids],
            "year": pa.array(2000 + ids % 20, pa.int32()),
            "day": pa.array([datetime.date(2020, 1, 1)] * n, pa.date32()),
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    src = VectorSource(
        str(tmp_path / "in.parquet"),
        vector_column="emb",
        id_column="id",
        metadata_columns=["tag", "year", "day"],
    )
    opts = BuildOptions(index="Flat", num_shards=3, partition=partition, progress=False)
    build_index(src, str(tmp_path / "idx"), opts)
    return str(tmp_path / "idx"), x


class Oracle:
    """The expected live set: id -> vector."""

    def __init__(self, x, ids):
        self.rows = {int(i): v for i, v in zip(ids, x, strict=True)}

    def upsert(self, x, ids):
        self.rows.update({int(i): v for i, v in zip(ids, x, strict=True)})

    def delete(self, ids):
        for i in ids:
            self.rows.pop(int(i), None)

    def knn(self, xq, k):
        ids = np.array(sorted(self.rows), np.int64)
        xb = np.stack([self.rows[i] for i in ids])
        return brute_force(xb, xq, k, "l2", ids), xb


@pytest.mark.parametrize("partition", ["hash", "range"])
def test_random_writes_equal_brute_force_and_survive_reopen(tmp_path, partition):
    root, x = build_with_metadata(tmp_path, partition=partition)
    index = ShardedIndex.open(root)
    oracle = Oracle(x, np.arange(len(x)))
    rng = np.random.default_rng(5)
    xq = clustered(20, D, seed=4)
    for step in range(120):
        kind = rng.choice(["new", "replace", "delete"])
        n = int(rng.integers(1, 30))
        if kind == "delete":
            ids = rng.choice(3000, n, replace=False)
            live_before = sum(int(i) in oracle.rows for i in ids)
            assert index.delete(ids) == live_before
            oracle.delete(ids)
        else:
            top = 3000 if kind == "new" else 2000
            ids = rng.choice(np.arange(2000 if kind == "new" else 0, top), n, replace=False)
            xs = clustered(n, D, seed=100 + step)
            index.upsert(xs, ids)
            oracle.upsert(xs, ids)
    assert index.sequence == 120
    (Dref, Iref), xb = oracle.knn(xq, 10)
    tol = float_tolerance(xb, xq, "l2")
    D_, I_ = index.search(xq, 10)
    assert index.ntotal == len(oracle.rows)
    assert_same_knn(Dref, Iref, D_, I_, tol)
    again = ShardedIndex.open(root)  # a new process: the log is replayed
    assert again.sequence == 120 and again.ntotal == len(oracle.rows)
    assert_same_knn(Dref, Iref, *again.search(xq, 10), tol)
    compacted = ShardedIndex.open(root, again.compact().index_version)
    assert compacted.manifest.base_sequence == 120 and compacted.sequence == 120
    assert compacted.ntotal == len(oracle.rows)  # nothing replayed twice
    assert_same_knn(Dref, Iref, *compacted.search(xq, 10), tol)


def test_upsert_replaces_vector_and_metadata(tmp_path):
    root, x = build_with_metadata(tmp_path)
    index = ShardedIndex.open(root)
    far = np.full((1, D), 50.0, np.float32)
    index.upsert(far, [7], [{"tag": "new", "year": 1999, "day": "2024-02-29"}])
    _, I = index.search(far, 1)
    assert I[0, 0] == 7
    _, I = index.search(x[7:8], 3)
    assert 7 not in I[0]  # the old vector is gone
    row = lookup_metadata(index, [7, 8]).to_pylist()
    assert row[0] == {"id": 7, "tag": "new", "year": 1999, "day": datetime.date(2024, 2, 29)}
    assert row[1]["tag"] == "t3"
    index.upsert(far + 1, [7])  # no metadata given: the row's metadata becomes null
    assert lookup_metadata(ShardedIndex.open(root), [7]).to_pylist()[0]["tag"] is None
    assert index.ntotal == len(x)


@pytest.mark.parametrize(
    ("ids", "vectors", "metadata", "match"),
    [
        ([1, 2], np.zeros((2, D + 1)), None, "dimension"),
        ([1], np.full((1, D), np.nan), None, "NaN"),
        ([-1], np.zeros((1, D)), None, r"\[0, 2\*\*63\)"),
        ([2**63], np.zeros((1, D)), None, r"\[0, 2\*\*63\)"),
        ([4, 4], np.zeros((2, D)), None, "more than once"),
        ([4, 5], np.zeros((1, D)), None, "one vector per id"),
        ([4], np.zeros((1, D)), [{"colour": "red"}], "unknown metadata column"),
        ([4], np.zeros((1, D)), [{"year": "nineteen"}], "'year' needs values of type int32"),
        ([4], np.zeros((1, D)), [{"day": "not a date"}], "'day' needs values of type date32"),
        ([4], np.zeros((1, D)), [{"tag": "a"}, {"tag": "b"}], "2 rows for 1 ids"),
        ([4], np.zeros((1, D)), ["tag"], "must be an object"),
    ],
)
def test_bad_writes_are_refused_and_change_nothing(tmp_path, ids, vectors, metadata, match):
    root, _ = build_with_metadata(tmp_path, n=300)
    index = ShardedIndex.open(root)
    with pytest.raises(InvalidInput, match=match):
        index.upsert(vectors, ids, metadata)
    assert index.sequence == 0 and not os.path.exists(os.path.join(root, "log"))


def test_too_many_rows_and_empty_deletes_are_refused(tmp_path):
    index = build(tmp_path, clustered(200, D, seed=1), index="Flat")
    with pytest.raises(InvalidInput, match="at most"):
        index.delete(np.arange(70_000))
    with pytest.raises(InvalidInput, match="non-empty"):
        index.delete([])
    assert index.sequence == 0


def test_two_writers_of_one_log_lose_nothing(tmp_path):
    x = clustered(500, D, seed=1)
    a = build(tmp_path, x, index="Flat", num_shards=2)
    b = ShardedIndex.open(str(tmp_path / "idx"))
    for i in range(10):  # interleaved: each writer first applies the other's writes
        a.upsert(x[i : i + 1] + 100, [10_000 + i])
        b.delete([i])
    assert a.sequence == 19 and b.sequence == 20
    a.catch_up()
    assert a.ntotal == b.ntotal == 500
    fresh = ShardedIndex.open(str(tmp_path / "idx"))
    assert fresh.sequence == 20
    assert fresh.contains(np.arange(10_000, 10_010)).all()
    assert not fresh.contains(np.arange(10)).any()


def test_a_taken_sequence_is_refused_to_a_stale_writer(tmp_path):
    log = MutationLog(str(tmp_path), D)
    log.start()
    log.append([Mutation("delete", np.array([1]))])
    stale = MutationLog(str(tmp_path), D)
    stale._last = 0  # it believes the log is empty
    with pytest.raises(ConcurrentUpdate, match="sequence 1"):
        stale.append([Mutation("delete", np.array([2]))])
    assert [m.sequence for m in MutationLog(str(tmp_path), D).read()] == [1]
    (again,) = stale.append([Mutation("delete", np.array([2]))])  # it re-read the end
    assert again.sequence == 2


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_segment_is_named_what_came_before_serves(tmp_path, how):
    x = clustered(300, D, seed=1)
    index = build(tmp_path, x, index="Flat", num_shards=2)
    for i in range(3):
        index.delete([i])
    log = MutationLog(index.root_uri, D)
    (_, second) = log.segments()[1]
    path = log.store.path(second)
    raw = Path(path).read_bytes()
    Path(path).write_bytes(
        raw[: len(raw) // 2] if how == "truncate" else raw[:-50] + b"x" + raw[-49:]
    )
    reopened = ShardedIndex.open(index.root_uri)
    assert reopened.sequence == 1 and reopened.ntotal == 299  # the first delete only
    assert second in (reopened.log_error or "")
    with pytest.raises(CorruptLogSegment, match=second):
        reopened.delete([10])
    with pytest.raises(CorruptLogSegment, match=second):
        MutationLog(index.root_uri, D).start()


def test_replayed_mutation_is_applied_once(tmp_path):
    index = build(tmp_path, clustered(300, D, seed=1), index="Flat", num_shards=2)
    m = Mutation("upsert", np.array([5_000]), np.ones((1, D), np.float32), sequence=1)
    assert index.apply(m) == 0 and index.ntotal == 301
    assert index.apply(m) == 0 and index.ntotal == 301  # at or below the applied sequence
    gone = Mutation("delete", np.array([5_000, 1]), sequence=2)
    assert index.apply(gone) == 2 and index.apply(gone) == 0 and index.ntotal == 299


def test_segment_round_trip_keeps_every_field(tmp_path):
    schema = pa.schema([("tag", pa.string()), ("when", pa.timestamp("us", "UTC"))])
    log = MutationLog(str(tmp_path), 4, schema)
    meta = pa.table({"tag": ["a", None], "when": pa.array([0, 10**6], pa.timestamp("us", "UTC"))})
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    log.append([Mutation("upsert", np.array([3, 4]), x, meta), Mutation("delete", np.array([9]))])
    up, de = MutationLog(str(tmp_path), 4, schema).read()
    assert (up.sequence, up.op, de.sequence, de.op) == (1, "upsert", 2, "delete")
    np.testing.assert_array_equal(up.x, x)
    np.testing.assert_array_equal(up.ids, [3, 4])
    np.testing.assert_array_equal(de.ids, [9])
    assert up.metadata.to_pylist() == meta.to_pylist() and de.x is None


def test_metadata_columns_named_like_the_logs_own_round_trip(tmp_path):
    # the first format put metadata columns beside sequence/op/id/vector: a column called
    # "op" or "key" overwrote the log's own (a silently wrong replay)
    names = ["sequence", "op", "vector", "key", "metadata"]
    schema = pa.schema([(n, pa.string()) for n in names])
    log = MutationLog(str(tmp_path), 4, schema)
    meta = pa.table({n: [f"{n}-a", f"{n}-b"] for n in names})
    x = np.ones((2, 4), np.float32)
    log.append([Mutation("upsert", np.array([3, 4]), x, meta, key="retry-1")])
    log.append([Mutation("delete", np.array([3]))])
    up, de = MutationLog(str(tmp_path), 4, schema).read()
    assert (up.op, up.sequence, up.key, de.op, de.key) == ("upsert", 1, "retry-1", "delete", None)
    np.testing.assert_array_equal(up.x, x)
    assert up.metadata.to_pylist() == meta.to_pylist()


def test_segments_of_the_first_format_still_read(tmp_path):
    import hashlib

    from shards.log import MAGIC, segment_name

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    table = pa.table(
        {
            "sequence": np.array([1, 1], np.int64),
            "op": np.array([0, 0], np.int8),
            "id": np.array([5, 6], np.int64),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4),
            "tag": ["a", "b"],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    body = sink.getvalue().to_pybytes()
    (tmp_path / "log").mkdir()
    data = body + hashlib.sha256(body).digest() + MAGIC
    (tmp_path / "log" / segment_name(1)).write_bytes(data)
    (up,) = MutationLog(str(tmp_path), 4, pa.schema([("tag", pa.string())])).read()
    assert (up.op, up.sequence, up.key) == ("upsert", 1, None)
    np.testing.assert_array_equal(up.x, x)
    assert up.metadata.to_pylist() == [{"tag": "a"}, {"tag": "b"}]


def test_ivfpq_recall_after_writes_is_that_of_a_fresh_build(tmp_path):
    """Thousands of upserts, replacements and deletes on an IVF-PQ index: recall@10 against
    brute force over the live set stays within 0.01 of an index built fresh from that set."""
    x = clustered(12_000, 32, seed=1)
    factory = "IVF64,PQ16x4fs,RFlat"
    index = build(tmp_path, x[:10_000], index=factory, num_shards=2, tune=False)
    oracle = Oracle(x[:10_000], np.arange(10_000))
    rng = np.random.default_rng(2)
    for step in range(200):
        n = int(rng.integers(5, 30))
        if step % 3 == 2:
            ids = rng.choice(12_000, n, replace=False)
            index.delete(ids)
            oracle.delete(ids)
        else:
            ids = rng.choice(12_000, n, replace=False)
            xs = clustered(n, 32, seed=1000 + step)
            index.upsert(xs, ids)
            oracle.upsert(xs, ids)
    xq = clustered(200, 32, seed=7)
    (_, gt), xb = oracle.knn(xq, 10)
    live_ids = np.array(sorted(oracle.rows), np.int64)
    params = {"nprobe": 8, "k_factor": 4}
    written = float((index.search(xq, 10, params)[1][:, :, None] == gt[:, None, :]).any(2).mean())
    np.save(tmp_path / "live.npy", xb)
    fresh = build(tmp_path, xb, name="fresh", index=factory, num_shards=2, tune=False)
    _, If = fresh.search(xq, 10, params)
    If = np.where(If >= 0, live_ids[np.maximum(If, 0)], -1)  # fresh ids are row numbers
    fresh_recall = float((If[:, :, None] == gt[:, None, :]).any(2).mean())
    assert index.ntotal == len(live_ids)
    assert written >= fresh_recall - 0.01, (written, fresh_recall)


def test_retired_segments_refuse_readers_that_need_them(tmp_path):
    from shards.errors import LogRetired

    x = clustered(300, D, seed=1)
    index = build(tmp_path, x, index="Flat", num_shards=2)
    old = index.index_version
    for i in range(4):
        index.delete([i])
    compacted = ShardedIndex.open(index.root_uri, index.compact().index_version)
    index.delete([10])  # after the compacted version's base (4)
    log = MutationLog(index.root_uri, D)
    assert log.retire(compacted.manifest.base_sequence) == 4
    again = ShardedIndex.open(index.root_uri, compacted.index_version)
    assert again.sequence == 5 and again.ntotal == 295
    with pytest.raises(LogRetired, match="starts at sequence 5"):
        ShardedIndex.open(index.root_uri, old)  # its base is 0: mutations 1-4 are gone
    assert ShardedIndex.open(index.root_uri, old, log=False).ntotal == 300


def test_a_write_never_skips_another_writers_mutation(tmp_path, monkeypatch):
    """Another writer appends between this index's catch-up and its append: the append
    collides, the index applies the other write, then logs its own after it."""
    x = clustered(300, D, seed=1)
    a = build(tmp_path, x, index="Flat", num_shards=2)
    b = ShardedIndex.open(a.root_uri)
    real = a.catch_up
    calls = {"n": 0}

    def late_catch_up(strict=True):
        calls["n"] += 1
        if calls["n"] == 1:
            b.upsert(np.full((1, D), 7.0, np.float32), [777])  # lands in the gap
            return 0
        return real(strict)

    monkeypatch.setattr(a, "catch_up", late_catch_up)
    a.delete([5])
    assert a.sequence == 2 and a.contains([777]).all() and not a.contains([5]).any()
    logged = [(m.sequence, m.op) for m in MutationLog(a.root_uri, D).read()]
    assert logged == [(1, "upsert"), (2, "delete")]


def test_a_mutation_after_a_gap_is_refused_not_skipped(tmp_path):
    from shards.errors import LogGap

    index = build(tmp_path, clustered(300, D, seed=1), index="Flat", num_shards=2)
    with pytest.raises(LogGap, match="mutation 3 does not follow sequence 0"):
        index.apply(Mutation("delete", np.array([1]), sequence=3))
    assert index.sequence == 0 and index.ntotal == 300


def test_searches_never_see_a_mutation_half_applied(tmp_path):
    """Range partition: an upsert moves an id from its shard to the last one. A search
    running beside it reads every shard from one state, so it never finds the id twice."""
    import threading

    x = clustered(3000, D, seed=1)
    index = build(tmp_path, x, index="Flat", num_shards=3, partition="range")
    moved = np.arange(0, 600)
    stop = threading.Event()
    repeats = []

    def search():
        while not stop.is_set():
            _, I = index.search(x[moved[:64]] + 1e-3, 4)
            for row in I:
                live = row[row >= 0]
                if len(set(live.tolist())) != len(live):
                    repeats.append(row.tolist())

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    for i in moved:
        index.upsert(x[i : i + 1] + 2e-3, [i])  # same neighbourhood, now in the last shard
    stop.set()
    for t in threads:
        t.join()
    assert repeats == [], repeats[:3]


def test_a_lookup_reads_main_rows_and_delta_from_one_state(tmp_path):
    """``rows_of`` answers for the state it is given: a lookup that took a state before an
    upsert moved an id from the main rows to the delta still finds it there (it read the
    newer tombstones with the older delta before, and gave a null row)."""
    x = clustered(500, D, seed=2)
    index = build(tmp_path, x, index="Flat", num_shards=1)
    shard = index.shards[0]
    before = shard.state
    index.upsert(x[:1] + 1, [0])
    assert shard.rows_of(np.array([0]))[0] == -1  # now in the delta
    assert shard.rows_of(np.array([0]), before)[0] == 0  # a main row in the older state
    assert before.delta.position(np.array([0]))[0] == -1
    assert shard.state.delta.position(np.array([0]))[0] == 0
    np.testing.assert_array_equal(shard.reconstruct(np.array([0])), x[:1] + 1)
    assert shard.contains(np.array([0, 1, 10**9])).tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        (pa.int64(), 2020.7, "truncated"),
        (pa.int64(), -0.9, "truncated"),
        (pa.int64(), True, "true/false"),
        (pa.int8(), 300, "not in range"),
        (pa.float64(), True, "true/false"),
        (pa.float32(), 1e300, "out of its range"),
    ],
)
def test_metadata_is_stored_as_written_or_refused(column, value, words):
    """An upsert's metadata value that the column cannot hold exactly is refused: 2020.7
    was stored as 2020 (a filter on 2020 then matched it), true as 1.0, 1e300 as inf."""
    from shards.writes import metadata_table

    schema = pa.schema([("c", column)])
    with pytest.raises(InvalidInput, match=words):
        metadata_table([{"c": value}], schema, 1)
    with pytest.raises(InvalidInput, match=words):
        metadata_table(pa.table({"c": [value]}), schema, 1)
    exact = metadata_table([{"c": 2}, {"c": None}, {"c": 2.0}], schema, 3)
    assert exact.column("c").to_pylist() == [2, None, 2]


def test_the_log_refuses_metadata_columns_it_does_not_keep(tmp_path):
    """Never an acknowledged write without some of its columns."""
    from shards.metric import Metric
    from shards.writes import upsert_of

    wide = pa.schema([("year", pa.int64()), ("lang", pa.string())])
    m = upsert_of(
        np.ones((1, 4), np.float32),
        [7],
        [{"year": 2020, "lang": "en"}],
        dim=4,
        metric=Metric.parse("l2"),
        schema=wide,
    )
    log = MutationLog(str(tmp_path), 4, pa.schema([("year", pa.int64())]))
    with pytest.raises(InvalidInput, match="'lang'"):
        log.append([m])
    assert list(MutationLog(str(tmp_path), 4).read(0)) == []
