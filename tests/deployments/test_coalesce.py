"""deployments.coalesce: requests queued behind busy slots are merged into one search, each
gets its own rows back, and a lone request never waits (no Ray: the coalescer is asyncio)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from deployments.coalesce import Coalescer
from deployments.errors import DeadlineExceeded
from shards.query import Query


class Searches:
    """A search that answers each row with its own values and can be held until released."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.groups: list[list[int]] = []  # the rows of each request of each search
        self.deadlines: list[float | None] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on

    async def run(self, xq, query, deadline, members):
        self.groups.append([rows for _, rows in members])
        self.deadlines.append(deadline)
        assert len(xq) == sum(rows for _, rows in members)
        await self.gate.wait()
        if self.fail_on is not None and self.fail_on in xq[:, 0]:
            raise RuntimeError(f"row {self.fail_on} failed")
        return xq * 2, xq.astype(np.int64), query.version, 7


def rows(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.float32).reshape(n, 1)


def run(coro):
    return asyncio.run(coro)


async def held_slot(fail_on: int | None = None, **options) -> tuple:
    """``(searches, coalescer, first)``: a coalescer with one slot, held by a first search
    of one row until ``searches.gate`` is set."""
    s = Searches(fail_on)
    s.gate.clear()
    c = Coalescer(s.run, slots=1, **{"max_requests": 16, **options})
    first = asyncio.create_task(c.search(rows(0, 1), Query(5), None))
    await asyncio.sleep(0)  # it holds the only slot
    return s, c, first


def test_a_lone_request_starts_at_once_and_alone():
    async def main():
        s = Searches()
        c = Coalescer(s.run, slots=1, max_requests=16)
        t0 = time.monotonic()
        D, I, version, seq = await c.search(rows(0, 3), Query(5), None)
        return s, time.monotonic() - t0, D, I, version, seq

    s, took, D, I, version, seq = run(main())
    assert s.groups == [[3]] and took < 0.5  # no timer held it
    np.testing.assert_array_equal(D, rows(0, 3) * 2)
    np.testing.assert_array_equal(I[:, 0], [0, 1, 2])
    assert (version, seq) == (None, 7)


def test_requests_queued_behind_a_busy_slot_share_one_search_and_get_their_own_rows():
    async def main():
        s, c, first = await held_slot()
        a = asyncio.create_task(c.search(rows(10, 3), Query(5), None))
        other = asyncio.create_task(c.search(rows(20, 1), Query(5, version="v2"), None))
        b = asyncio.create_task(c.search(rows(30, 4), Query(5), None))
        await asyncio.sleep(0.01)
        assert c.queued == 3 and s.groups == [[1]]
        s.gate.set()
        return s, await asyncio.gather(first, a, other, b)

    s, (first, a, other, b) = run(main())
    # the oldest queued request and the one sharing its key; then the other version's
    assert s.groups == [[1], [3, 4], [1]]
    for (D, I, version, _), start, n, v in [
        (first, 0, 1, None),
        (a, 10, 3, None),
        (other, 20, 1, "v2"),
        (b, 30, 4, None),
    ]:
        np.testing.assert_array_equal(D, rows(start, n) * 2)
        np.testing.assert_array_equal(I[:, 0], np.arange(start, start + n))
        assert version == v


def test_max_requests_caps_a_merged_search_and_slots_run_side_by_side():
    async def main():
        s = Searches()
        s.gate.clear()
        c = Coalescer(s.run, slots=2, max_requests=2)
        tasks = [asyncio.create_task(c.search(rows(i * 10, 1), Query(5), None)) for i in range(7)]
        await asyncio.sleep(0.01)
        running = list(s.groups)
        s.gate.set()
        await asyncio.gather(*tasks)
        return s, running

    s, running = run(main())
    assert running == [[1], [1]]  # two slots: two lone searches at once
    assert sorted(len(g) for g in s.groups) == [1, 1, 1, 2, 2]  # then at most two merged
    assert sum(len(g) for g in s.groups) == 7


def test_an_error_fails_the_requests_of_its_search_only():
    async def main():
        s, c, first = await held_slot(fail_on=10)
        bad = asyncio.create_task(c.search(rows(10, 1), Query(5), None))
        mate = asyncio.create_task(c.search(rows(11, 1), Query(5), None))
        apart = asyncio.create_task(c.search(rows(20, 1), Query(6), None))
        await asyncio.sleep(0.01)
        s.gate.set()
        return await asyncio.gather(first, bad, mate, apart, return_exceptions=True)

    first, bad, mate, apart = run(main())
    assert isinstance(bad, RuntimeError) and isinstance(mate, RuntimeError)
    assert not isinstance(first, BaseException) and not isinstance(apart, BaseException)


def test_a_request_whose_deadline_passes_in_the_queue_fails_without_a_search():
    async def main():
        s, c, first = await held_slot()
        late = asyncio.create_task(c.search(rows(10, 1), Query(5), time.monotonic() + 0.005))
        later = time.monotonic() + 60
        kept = asyncio.create_task(c.search(rows(20, 1), Query(5), later))
        await asyncio.sleep(0.02)
        s.gate.set()
        out = await asyncio.gather(first, late, kept, return_exceptions=True)
        return s, out, later

    s, (first, late, kept), later = run(main())
    assert not isinstance(first, BaseException)
    assert isinstance(late, DeadlineExceeded)
    assert s.groups == [[1], [1]] and s.deadlines == [None, later]
    np.testing.assert_array_equal(kept[1][:, 0], [20])


def test_a_cancelled_request_leaves_the_queue_unsearched():
    async def main():
        s, c, first = await held_slot()
        gone = asyncio.create_task(c.search(rows(10, 5), Query(5), None))
        kept = asyncio.create_task(c.search(rows(20, 1), Query(5), None))
        await asyncio.sleep(0.01)
        gone.cancel()
        s.gate.set()
        await asyncio.gather(first, kept)
        return s, c

    s, c = run(main())
    assert s.groups == [[1], [1]] and c.busy == 0 and c.queued == 0


WAIT_S = 0.3  # long beside a busy machine's scheduling delays


def test_wait_s_holds_a_request_for_company_only_while_another_search_runs():
    async def main():
        s = Searches()
        c = Coalescer(s.run, slots=2, max_requests=2, wait_s=WAIT_S)
        t0 = time.monotonic()
        await c.search(rows(0, 1), Query(5), None)  # nothing running: at once
        alone = time.monotonic() - t0
        s.gate.clear()
        running = asyncio.create_task(c.search(rows(1, 1), Query(5), None))
        await asyncio.sleep(0)  # it holds one slot
        t1 = time.monotonic()
        held = asyncio.create_task(c.search(rows(10, 1), Query(5), None))
        await asyncio.sleep(0.01)
        waiting = list(s.groups)  # the free slot waits for company
        mate = asyncio.create_task(c.search(rows(20, 1), Query(5), None))
        await asyncio.sleep(0.005)  # max_requests queued: they go at once
        paired, pair_s = s.groups[2:], time.monotonic() - t1
        s.gate.set()
        await asyncio.gather(running, held, mate)
        await asyncio.sleep(WAIT_S / 2)  # a timer left from the pair would be half due
        s.gate.clear()
        running = asyncio.create_task(c.search(rows(2, 1), Query(5), None))
        await asyncio.sleep(0.005)  # its search started
        t2, searches = time.monotonic(), len(s.groups)
        lone = asyncio.create_task(c.search(rows(30, 1), Query(5), None))
        while len(s.groups) == searches:  # no company comes: it goes alone after wait_s
            await asyncio.sleep(0.001)
        lone_s = time.monotonic() - t2
        s.gate.set()
        await asyncio.gather(running, lone)
        return alone, waiting, paired, pair_s, lone_s

    alone, waiting, paired, pair_s, lone_s = run(main())
    assert alone < WAIT_S / 2 and waiting == [[1], [1]]
    assert paired == [[1, 1]] and pair_s < WAIT_S / 2
    assert lone_s >= WAIT_S * 0.95  # a whole wait of its own


@pytest.mark.parametrize("args", [(0, 4, 0.0), (1, 0, 0.0), (1, 4, -1.0)])
def test_impossible_settings_are_refused(args):
    with pytest.raises(ValueError):
        Coalescer(Searches().run, *args)


def test_max_rows_leaves_requests_that_are_large_batches_alone():
    async def main():
        s, c, first = await held_slot(max_rows=8)
        sizes = [3, 4, 2, 9, 1]  # 3 + 4 + 1 fit in 8; then 2 (9 does not fit beside it); 9
        tasks = [
            asyncio.create_task(c.search(rows(10 * (i + 1), n), Query(5), None))
            for i, n in enumerate(sizes)
        ]
        await asyncio.sleep(0.01)
        s.gate.set()
        out = await asyncio.gather(first, *tasks)
        return s, out, sizes

    s, out, sizes = run(main())
    assert s.groups == [[1], [3, 4, 1], [2], [9]]
    for (D, _, _, _), i, n in zip(out[1:], range(len(sizes)), sizes, strict=True):
        np.testing.assert_array_equal(D, rows(10 * (i + 1), n) * 2)
