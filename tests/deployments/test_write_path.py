"""The write path's asyncio parts without Ray: the log writer (group commit, the tail), a
replica's follower, and the compaction state of the coordinator."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.compaction import Compactions
from deployments.follow import Follower
from deployments.writer import LogWriter
from shards.errors import CorruptLogSegment, IdempotencyConflict
from shards.log import Mutation, MutationLog
from tests.conftest import clustered
from tests.shards.helpers import build

D = 16


def upsert(i: int) -> Mutation:
    return Mutation("upsert", np.array([10_000 + i]), np.full((1, D), i, np.float32))


def test_concurrent_writes_are_committed_together_and_acknowledged_once_durable(tmp_path):
    log = MutationLog(str(tmp_path), D)

    async def main():
        writer = LogWriter(log)
        seqs = await asyncio.gather(*(writer.write(upsert(i)) for i in range(50)))
        return writer, seqs

    writer, seqs = asyncio.run(main())
    assert sorted(seqs) == list(range(1, 51))
    segments = log.segments()
    assert len(segments) < 10  # writes that arrive together share a segment (one fsync)
    durable = [m.sequence for m in MutationLog(str(tmp_path), D).read()]
    assert durable == list(range(1, 51))  # every acknowledged write is in the files
    assert writer.end == 50


def keyed(i: int, key: str, value: float | None = None) -> Mutation:
    x = np.full((1, D), i if value is None else value, np.float32)
    return Mutation("upsert", np.array([10_000 + i]), x, key=key)


def test_a_retried_write_is_answered_again_not_applied_twice(tmp_path):
    # upsert X, delete X, then the upsert retried after a lost answer: X must stay deleted
    log = MutationLog(str(tmp_path), D)

    async def main():
        writer = LogWriter(log)
        first = await writer.write(keyed(1, "a"))
        gone = await writer.write(Mutation("delete", np.array([10_001]), key="b"))
        again = await writer.write(keyed(1, "a"))
        assert again == first and writer.end == gone == 2
        # two attempts in flight at once: one is logged, both get its sequence
        pair = await asyncio.gather(writer.write(keyed(2, "c")), writer.write(keyed(2, "c")))
        assert pair == [3, 3] and writer.end == 3
        with pytest.raises(IdempotencyConflict, match="'a'"):
            await writer.write(keyed(1, "a", value=7.0))  # same key, other vector
        assert await writer.write(keyed(1, "d")) == 4  # a new key is a new write

    asyncio.run(main())
    logged = list(MutationLog(str(tmp_path), D).read())
    assert [(m.sequence, m.key) for m in logged] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]

    async def restarted():  # a new writer (a restarted coordinator) knows the logged keys
        writer = LogWriter(MutationLog(str(tmp_path), D))
        assert await writer.write(keyed(1, "a")) == 1
        assert await writer.write(Mutation("delete", np.array([10_001]), key="b")) == 2
        with pytest.raises(IdempotencyConflict):
            await writer.write(Mutation("delete", np.array([10_002]), key="b"))
        assert writer.end == 4

    asyncio.run(restarted())


def test_a_retry_is_recognised_after_a_restart_with_metadata_columns(tmp_path):
    # the log stores every metadata column (null when not given): read back, the write
    # must still look the same as its retry, which gives none
    import pyarrow as pa

    schema = pa.schema([("tag", pa.string())])
    tagged = pa.table({"tag": ["x"]})

    async def first():
        writer = LogWriter(MutationLog(str(tmp_path), D, schema))
        await writer.write(keyed(1, "plain"))
        await writer.write(
            Mutation("upsert", np.array([7]), np.ones((1, D), np.float32), tagged, key="tagged")
        )

    async def after_restart():
        writer = LogWriter(MutationLog(str(tmp_path), D, schema))
        assert await writer.write(keyed(1, "plain")) == 1
        again = Mutation("upsert", np.array([7]), np.ones((1, D), np.float32), tagged, key="tagged")
        assert await writer.write(again) == 2
        other = pa.table({"tag": ["y"]})
        with pytest.raises(IdempotencyConflict):  # the same vectors with other metadata
            await writer.write(
                Mutation("upsert", np.array([7]), np.ones((1, D), np.float32), other, key="tagged")
            )

    asyncio.run(first())
    asyncio.run(after_restart())


def test_a_failed_keyed_write_can_be_retried(tmp_path):
    log = MutationLog(str(tmp_path), D)

    async def main():
        writer = LogWriter(log)
        real = log.append
        log.append = lambda batch, after=None: (_ for _ in ()).throw(OSError("disk full"))
        with pytest.raises(OSError):
            await writer.write(keyed(1, "k"))
        log.append = real
        assert await writer.write(keyed(1, "k")) == 1  # not remembered: nothing was logged

    asyncio.run(main())


def test_a_write_that_failed_after_its_segment_was_linked_is_not_logged_twice(
    tmp_path, monkeypatch
):
    """The directory's fsync fails after the segment is linked: the client is told the
    write failed, yet its segment is in the log (replicas apply it). Its retry under the
    same key, after another client's write, must be answered with that segment's sequence,
    not logged again after the other write (whose value it would then undo)."""
    import shards.log

    log = MutationLog(str(tmp_path), D)
    real, fail = shards.log.fsync_dir, [True]

    def fsync_dir(path):
        if fail and fail.pop():
            raise OSError("fsync: input/output error")
        real(path)

    monkeypatch.setattr(shards.log, "fsync_dir", fsync_dir)

    async def main():
        writer = LogWriter(log)
        with pytest.raises(OSError, match="input/output"):
            await writer.write(keyed(1, "k1"))
        assert await writer.write(upsert(2)) == 2  # after the segment it did not know of
        assert await writer.write(keyed(1, "k1")) == 1  # the retry: the first one's
        with pytest.raises(IdempotencyConflict):
            await writer.write(keyed(3, "k1"))
        assert await writer.write(keyed(4, "k4")) == 3
        assert [m.sequence for m in writer.tail] == [1, 2, 3]  # the tail follows on

    asyncio.run(main())
    assert [(m.sequence, m.key) for m in MutationLog(str(tmp_path), D).read(0)] == [
        (1, "k1"),
        (2, None),
        (3, "k4"),
    ]


def test_tail_waits_for_writes_and_sends_replicas_to_the_files_when_short(tmp_path):
    log = MutationLog(str(tmp_path), D)
    log.start()
    log.append([upsert(0), upsert(1)])  # written before this writer: only in the files

    async def main():
        writer = LogWriter(MutationLog(str(tmp_path), D))
        assert writer.end == 2
        assert await writer.tail_after(0, 0.1) is None  # not in memory: read the files
        assert await writer.tail_after(2, 0.05) == []  # nothing new within the wait
        waiting = asyncio.ensure_future(writer.tail_after(2, 5))
        await asyncio.sleep(0.05)
        await writer.write(upsert(2))
        got = await waiting
        assert [m.sequence for m in got] == [3]

    asyncio.run(main())


def test_a_corrupt_log_refuses_writes(tmp_path):
    log = MutationLog(str(tmp_path), D)
    log.start()
    log.append([upsert(0)])
    path = log.store.path(log.segments()[0][1])
    with open(path, "r+b") as f:
        f.truncate(10)

    async def main():
        writer = LogWriter(MutationLog(str(tmp_path), D))
        with pytest.raises(CorruptLogSegment, match=r"00000000000000000001\.mlog"):
            await writer.write(upsert(1))

    asyncio.run(main())


def test_follower_applies_the_tail_and_falls_back_to_the_files(tmp_path):
    index = build(tmp_path, clustered(300, D, seed=1), index="Flat", num_shards=2)
    writer_log = MutationLog(index.root_uri, D)
    writer_log.start()
    writer_log.append([upsert(0)])  # only in the files
    sent: list[Mutation] = []

    async def tail(after: int, wait_s: float):
        if after < 1:
            return None  # the writer's memory does not reach back: read the files
        fresh = [m for m in sent if m.sequence > after]
        if not fresh:
            await asyncio.sleep(min(wait_s, 0.01))
        return fresh

    async def main():
        follower = Follower(tail, lambda: [index])
        task = asyncio.ensure_future(follower.run())
        assert await follower.wait_for(index, 1, asyncio.get_running_loop().time() + 5)
        (m2,) = writer_log.append([Mutation("delete", np.array([10_000]))])
        sent.append(m2)
        assert await follower.wait_for(index, 2, asyncio.get_running_loop().time() + 5)
        assert not await follower.wait_for(index, 3, asyncio.get_running_loop().time() + 0.1)
        task.cancel()

    asyncio.run(main())
    assert index.sequence == 2 and index.ntotal == 300


def test_compactions_one_at_a_time_proposed_until_committed():
    started: list[str | None] = []
    gate = asyncio.Event

    async def main():
        release = gate()

        async def launch(version):
            started.append(version)
            await release.wait()
            return {"version": "v2", "base_sequence": 7}

        now = {"active": "v1"}
        c = Compactions(launch, after_changes=100, active=lambda: now["active"])
        c.maybe_start("v1", 99)
        assert not c.running
        c.maybe_start("v1", 100)
        assert c.running and c.status()["state"] == "running"
        c.start("v1", "again")  # one at a time
        release.set()
        await c.task
        assert started == ["v1"] and c.proposed == "v2" and c.status()["state"] == "proposed"
        c.start("v1", "while v2 waits")  # no second compaction before v2 is active
        assert started == ["v1"]
        c.committed("v2")
        assert c.proposed is None and c.status()["state"] == "active"

        release.clear()
        c.start("v2", "again")  # and an operator swaps to v9 while it runs: not proposed
        now["active"] = "v9"
        release.set()
        await c.task
        assert c.proposed is None and c.status()["state"] == "stale"

        async def broken(version):
            raise RuntimeError("disk full")

        failing = Compactions(broken)
        failing.start("v1", "asked")
        await failing.task
        assert failing.status()["state"] == "failed" and "disk full" in failing.status()["error"]

    asyncio.run(main())


def test_coordinator_bounds_the_delta_and_retires_the_log_after_a_compaction(tmp_path):
    from deployments.coordinator import Coordinator
    from shards import ShardedIndex
    from shards.errors import DeltaFull

    index = build(tmp_path, clustered(300, D, seed=1), index="Flat", num_shards=2)
    v1 = index.index_version

    async def launch(version):  # the Ray task's work, run here
        from deployments.compaction import compact_version

        return compact_version(index.root_uri, version)

    async def main():
        coord = Coordinator(index.root_uri, max_delta_rows=3)
        coord.compactions.launch = launch
        await coord.commit(None, v1)
        for i in range(3):
            await coord.write(upsert(i))
        await coord.report("a", "shard-0", [v1], {}, 3, 2)
        await coord.report("b", "shard-1", [v1], {}, 1, 1)
        with pytest.raises(DeltaFull, match="hold 3 rows"):
            await coord.write(upsert(9))
        await coord.compactions.task  # the bound started a compaction
        v2 = coord.compactions.proposed
        assert v2 is not None and coord.compactions.last["base_sequence"] == 3
        await coord.write(Mutation("delete", np.array([1])))  # deletes still flow
        await coord.write(Mutation("delete", np.array([2])))  # after the new base
        await coord.commit(v1, v2)
        await coord.report("a", "shard-0", [v1, v2], {})  # v1 still held: nothing retired
        assert coord._retire_log()["segments"] == 0
        await coord.report("a", "shard-0", [v2], {})
        await coord.report("b", "shard-1", [v2], {})
        coord.active = v2
        done = coord._retire_log()
        assert done["upto"] == 3 and done["segments"] >= 1
        return v2

    v2 = asyncio.run(main())
    again = ShardedIndex.open(index.root_uri, v2)
    assert again.sequence == 5 and again.ntotal == 301  # +3 upserts, -2 deletes


def test_writer_refuses_to_reuse_sequences_replicas_have_applied(tmp_path):
    """Segments vanished (removed by hand): numbering after the files would hand replicas
    that applied the lost sequences new writes under the same numbers, which they skip."""
    from deployments.coordinator import Coordinator

    index = build(tmp_path, clustered(300, D, seed=1), index="Flat", num_shards=2)

    async def main():
        coord = Coordinator(index.root_uri)
        await coord.report("a", "shard-0", [index.index_version], {}, 0, 0, 12)
        with pytest.raises(CorruptLogSegment, match="a replica has applied 12"):
            await coord.write(upsert(1))

    asyncio.run(main())


def test_an_online_compaction_can_re_tune_before_it_is_proposed(tmp_path):
    from deployments.compaction import compact_version
    from shards import ShardedIndex
    from shards.artefact import descends_from, open_version

    x = clustered(4000, D, seed=8)
    index = build(tmp_path, x, index="IVF32,Flat", num_shards=2)
    first = index.index_version
    index.delete(np.arange(0, 4000, 3))  # a third of the rows gone: the lists thin out
    plain = compact_version(str(tmp_path / "idx"), first)
    assert plain["retuned_for"] is None
    tuned = compact_version(str(tmp_path / "idx"), plain["version"], retune=True)
    target = index.manifest.tuning["target"]
    assert tuned["retuned_for"] == target
    _, manifest = open_version(str(tmp_path / "idx"), tuned["version"])
    assert manifest.tuning is not None and manifest.tuning["target"] == target
    assert manifest.base_sequence == index.sequence  # the compaction's base, kept
    assert descends_from(str(tmp_path / "idx"), tuned["version"], first)
    reopened = ShardedIndex.open(str(tmp_path / "idx"), tuned["version"])
    assert reopened.ntotal == 4000 - len(range(0, 4000, 3))


def test_a_writes_deadline_bounds_its_wait_for_the_log():
    """``deadline_ms`` on an upsert or delete was checked and then not used: a write waited
    for the log however long it took. Now the wait ends at it, with a 504 saying the write
    may still be applied and a retry under its key is safe."""
    import time
    from types import SimpleNamespace

    from deployments.errors import DeadlineExceeded
    from deployments.writes import log_write

    def slow(m):  # a coordinator whose log takes 0.5 s to make the write durable
        return asyncio.sleep(0.5, result=7)

    coordinator = SimpleNamespace(write=SimpleNamespace(remote=slow))
    counts = SimpleNamespace(inc=lambda *a, **kw: None, observe=lambda *a, **kw: None)
    metrics = SimpleNamespace(write_rows=counts, write_latency=counts)

    async def main():
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="same idempotency_key"):
            await log_write(coordinator, metrics, keyed(1, "k"), time.monotonic() + 0.05)
        assert time.monotonic() - t0 < 0.4
        assert await log_write(coordinator, metrics, keyed(1, "k")) == 7  # no deadline

    asyncio.run(main())
