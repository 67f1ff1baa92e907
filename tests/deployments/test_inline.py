"""Which searches a shard replica answers on its event loop instead of in a thread (no Ray):
only cheap CPU searches without a filter, measured first, never waiting for a mutation."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from deployments.held import INLINE_S, LoadedShards
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.query import Query
from tests.conftest import clustered


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("inline")
    np.save(root / "xb.npy", clustered(400, 8, seed=4))
    opts = BuildOptions(num_shards=2, index="Flat", progress=False)
    build_index(VectorSource(str(root / "xb.npy")), str(root / "idx"), opts)
    return ShardedIndex.open(str(root / "idx"), log=False)


def loaded(index, row_s, on_gpu=False):
    """A LoadedShards over ``index`` as measured so far (``row_s``), without opening it
    again or placing it on a device: the rule reads no more than these."""
    held = LoadedShards.__new__(LoadedShards)
    held.index, held.placement, held.row_s = index, SimpleNamespace(on_gpu=on_gpu), row_s
    return held


def test_cheap_measured_cpu_searches_run_inline_and_answer_the_same(index):
    xq = clustered(3, 8, seed=9)
    q = Query(5)
    cheap = loaded(index, INLINE_S / 10)
    taken = cheap.inline_snapshot(xq, q)
    assert taken is not None and len(taken[1]) == 2
    D, I = cheap.timed(xq, q, None, taken)[:2]
    Dref, Iref = index.search(xq, 5)
    np.testing.assert_array_equal(I, Iref)
    np.testing.assert_allclose(D, Dref, rtol=1e-6)


@pytest.mark.parametrize(
    ("row_s", "on_gpu", "filt", "rows"),
    [
        (None, False, None, 1),  # nothing measured yet
        (INLINE_S / 10, True, None, 1),  # a GPU search waits on the device
        (INLINE_S / 10, False, {"tag": "a"}, 1),  # a filter's cost depends on its rows
        (INLINE_S / 2, False, None, 3),  # 1.5x the inline budget
    ],
)
def test_other_searches_go_to_a_thread(index, row_s, on_gpu, filt, rows):
    query = Query(5, filter=filt)
    held = loaded(index, row_s, on_gpu)
    assert held.inline_snapshot(clustered(rows, 8, seed=1), query) is None


def test_the_event_loop_never_waits_for_a_mutation_being_applied(index):
    cheap = loaded(index, INLINE_S / 10)
    xq, q = clustered(1, 8, seed=2), Query(5)
    held, release = threading.Event(), threading.Event()

    def applying() -> None:  # as Applied.apply does, for as long as the test says
        with index.applied._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=applying)
    t.start()
    try:
        held.wait(10)
        assert cheap.inline_snapshot(xq, q) is None  # at once: the search goes to a thread
    finally:
        release.set()
        t.join()
    assert cheap.inline_snapshot(xq, q) is not None


@pytest.mark.parametrize("inline", [False, True])
def test_an_answer_never_names_a_write_its_search_did_not_see(tmp_path, inline):
    """A write that lands right after the states are taken must not be named by the answer:
    the sequence is read before the states (read-your-writes would otherwise be broken: a
    client waiting for its write could get an answer from before it)."""
    np.save(tmp_path / "xb.npy", clustered(400, 8, seed=5))
    opts = BuildOptions(num_shards=2, index="Flat", progress=False)
    build_index(VectorSource(str(tmp_path / "xb.npy")), str(tmp_path / "idx"), opts)
    index = ShardedIndex.open(str(tmp_path / "idx"))  # with the log: writes get sequences
    index.upsert(clustered(1, 8, seed=6), [5_000])
    held = loaded(index, INLINE_S / 10)
    applied = index.applied
    take = applied.try_states if inline else applied.states
    once = [True]

    def then_a_write():
        states = take()
        if once.pop() if once else False:  # a write lands right after the snapshot
            index.upsert(clustered(1, 8, seed=7), [6_000])
        return states

    start = index.sequence
    if inline:
        applied.try_states = then_a_write
        taken = held.inline_snapshot(clustered(1, 8, seed=8), Query(5))
        assert taken is not None
    else:
        applied.states = then_a_write
        taken = None
    *_, states, sequence, _ = held.timed(clustered(1, 8, seed=8), Query(5), None, taken)
    assert index.sequence == start + 1  # the write landed, after the states were taken
    assert min(st.sequence for st in states) == start
    assert sequence <= min(st.sequence for st in states)
