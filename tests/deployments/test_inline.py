"""Which searches a shard replica answers on its event loop instead of in a thread (no Ray):
only cheap CPU searches without a filter, measured first, never waiting for a mutation."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from deployments.shard import INLINE_S, _inline_states, _timed
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
    """What the rule reads of a LoadedShards (and ``_timed`` searches with)."""
    placement = SimpleNamespace(on_gpu=on_gpu)

    def search(xq, query, deadline, states):
        D, I = index.search_query_planned(xq, query, states)[:2]
        return D, I, {}

    return SimpleNamespace(index=index, placement=placement, row_s=row_s, search=search)


def test_cheap_measured_cpu_searches_run_inline_and_answer_the_same(index):
    xq = clustered(3, 8, seed=9)
    q = Query(5)
    cheap = loaded(index, INLINE_S / 10)
    states = _inline_states(cheap, xq, q)
    assert states is not None and len(states) == 2
    D, I = _timed(cheap, xq, q, None, states)[:2]
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
    assert _inline_states(loaded(index, row_s, on_gpu), clustered(rows, 8, seed=1), query) is None


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
        assert _inline_states(cheap, xq, q) is None  # at once: the search goes to a thread
    finally:
        release.set()
        t.join()
    assert _inline_states(cheap, xq, q) is not None
