"""Range partitioning through the router's fan-out (no Ray: ``ShardCalls`` over two real
shard groups, one a mutation behind the other, as two replicas are between applying one).

An upsert of a live id moves it to the last shard; a group ahead of the last shard's has
the tombstone while the last shard lacks the add, so the id would be in no answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import faiss
import numpy as np
import pytest

from deployments.answer import merged_answer
from deployments.calls import ShardCalls, moved_ids
from deployments.errors import ShardsUnavailable
from deployments.metrics import RouterMetrics
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.errors import SequenceBehind
from shards.query import Query
from shards.writes import upsert_of
from tests.conftest import clustered


class Group:
    """One shard group's replica: searches at its sequence; asked for a later one, it
    applies what it has been sent meanwhile (its log follower), else SequenceBehind."""

    def __init__(self, index: ShardedIndex) -> None:
        self.index, self.pending, self.asked = index, [], []

    async def search(self, xq, q: Query):
        self.asked.append(q.min_sequence)
        while self.pending and self.index.sequence < q.min_sequence:
            self.index.apply(self.pending.pop(0))
        if self.index.sequence < q.min_sequence:
            raise SequenceBehind(f"at {self.index.sequence}, asked for {q.min_sequence}")
        D, I = self.index.search_query(xq, replace(q, min_sequence=0))
        return D, I, self.index.index_version, self.index.sequence, {}


class Counter:
    def inc(self, *a, **kw):
        pass


@pytest.fixture
def groups(tmp_path):
    x = clustered(100, 4, seed=21)
    np.save(tmp_path / "xb.npy", x)
    opts = BuildOptions(num_shards=2, partition="range", index="Flat", progress=False)
    build_index(VectorSource(str(tmp_path / "xb.npy")), str(tmp_path / "i"), opts)
    first, last = (
        Group(ShardedIndex.open(str(tmp_path / "i"), shards=[n], log=False)) for n in (0, 1)
    )
    moved = x[7:8] + 0.01  # id 7 (rows 0..49 are shard 0's) moves to the last shard
    m = upsert_of(moved, [7], dim=4, metric=first.index.metric, schema=None).at(1)
    first.index.apply(m)  # the first group applied the upsert ...
    last.pending.append(m)  # ... the last one has not yet
    live = x.copy()
    live[7] = moved[0]
    return first, last, live


def search(groups, sequence_of, min_coverage=1.0):
    first, last, _ = groups
    calls = ShardCalls([first, last], [[0], [1]], 0, RouterMetrics.__new__(RouterMetrics))
    calls.metrics.retries = Counter()
    q = Query(3, version=first.index.index_version)
    xq = groups[2][7:8]
    outcome = asyncio.run(
        calls.fan_out(
            lambda h, qq: h.search(xq, qq),
            q,
            time.monotonic() + 5,
            min_coverage,
            sequence_of=sequence_of,
        )
    )
    parts = [a for a in outcome.answers if a is not None]
    return merged_answer(parts, q, keep_max=False, range_partition=True), outcome


def test_the_last_shard_is_asked_again_until_it_has_what_the_others_have(groups):
    first, last, live = groups
    lost, _ = search(groups, None)  # what the router answered before
    assert 7 not in lost["I"][0] and lost["sequence"] == 0
    out, outcome = search(groups, moved_ids(first.index.planner, 3))  # as the router asks
    _, want = faiss.knn(live[7:8], live, 3)  # brute force over the live set at sequence 1
    assert out["I"][0].tolist() == want[0].tolist() and want[0][0] == 7
    assert out["sequence"] == 1 and outcome.coverage == 1.0
    assert last.asked == [0, 0, 1] and first.asked == [0, 0]


def test_a_last_shard_that_cannot_catch_up_is_not_counted_as_answered(groups):
    _, last, _ = groups
    last.pending.clear()  # its follower has nothing: it cannot reach sequence 1
    at = moved_ids(last.index.planner, 3)
    with pytest.raises(ShardsUnavailable, match=r"1 of 2 shards answered .* did not reach"):
        search(groups, at)
    out, outcome = search(groups, at, min_coverage=0.5)
    assert outcome.coverage == 0.5 and outcome.answers[1] is None
    assert out["sequence"] == 1 and 7 not in out["I"][0]  # degraded, and says so


def test_hash_partitions_are_not_asked_again(tmp_path):
    """Under hash partitioning an id never changes shards: one round, as before."""
    np.save(tmp_path / "xb.npy", clustered(50, 4, seed=22))
    opts = BuildOptions(num_shards=2, index="Flat", progress=False)
    build_index(VectorSource(str(tmp_path / "xb.npy")), str(tmp_path / "i"), opts)
    assert moved_ids(ShardedIndex.open(str(tmp_path / "i"), log=False).planner, 3) is None
