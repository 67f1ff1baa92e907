"""Concurrent searches merged while they wait for a core: more rows per faiss call, no timer.

A replica runs at most ``slots`` searches at once (its cores' worth on CPU, one per GPU
clone). A request that finds a slot free starts at once, so a lone request never waits
for company. Requests that arrive while every slot is busy queue; the next slot to free
takes the oldest one and every queued request that can share its search (the same
``Query.batch_key``), up to ``max_requests`` and ``max_rows`` rows, as one search of their
rows stacked. Under load the batches grow by themselves (a faiss call over 256 rows costs
less per row than four over 64), and a request waits at most for the searches running
ahead of it, which it would have shared the cores with anyway. ``max_rows`` stops merging
where it stops paying: requests that are large batches already go alone, so they do not
add each other's time to their latency.

``wait_s`` > 0 holds a request that found a slot free, while another search runs and fewer
than ``max_requests`` are queued, for up to that long (a fuller GPU batch for a little
latency under load; an idle replica never holds one); 0, the default, never holds one.
A request whose deadline passes while it queues fails without a search; a merged search
stops at the latest deadline of its requests; an error fails every request of that search
and no other.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from deployments.errors import DeadlineExceeded
from shards.query import Query

# run(xq, query, deadline, members) -> (D, I, ...) for the stacked rows; members: the
# (query, rows) of each request, in order
Run = Callable[[np.ndarray, Query, "float | None", list], Awaitable[tuple]]


@dataclass
class _Waiting:
    xq: np.ndarray
    query: Query
    deadline: float | None
    future: asyncio.Future


class Coalescer:
    """Searches of one replica: at most ``slots`` at a time, queued ones merged."""

    def __init__(
        self,
        run: Run,
        slots: int,
        max_requests: int,
        wait_s: float = 0.0,
        max_rows: int | None = None,
    ) -> None:
        if slots < 1 or max_requests < 1 or wait_s < 0 or (max_rows or 1) < 1:
            raise ValueError(
                f"slots {slots}, max_requests {max_requests}, wait_s {wait_s}, max_rows {max_rows}"
            )
        self._run, self.slots, self.max_requests, self.wait_s = run, slots, max_requests, wait_s
        self.max_rows = max_rows
        self.busy = 0
        self._queue: deque[_Waiting] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def search(self, xq: np.ndarray, query: Query, deadline: float | None) -> tuple:
        """This request's part of the search it joins: ``run``'s answer, its rows only."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(xq, query, deadline, future))
        busy, few = self.busy, len(self._queue) < self.max_requests
        if self.wait_s > 0 and 0 < busy < self.slots and few:
            if self._timer is None:  # hold it a little for company
                self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._held)
        else:
            self._dispatch()
        return await future

    def _held(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        while self.busy < self.slots and self._queue:
            group = self._take()
            if group:
                self.busy += 1
                task = asyncio.get_running_loop().create_task(self._search(group))
                self._running.add(task)  # the loop holds tasks weakly
                task.add_done_callback(self._running.discard)
        if not self._queue and self._timer is not None:  # nobody left to hold
            self._timer.cancel()
            self._timer = None

    def _take(self) -> list[_Waiting]:
        """The oldest live request and the queued ones that share its search; requests that
        were cancelled or whose deadline passed leave the queue on the way."""
        now, key, rows = time.monotonic(), None, 0
        limit = self.max_rows
        group: list[_Waiting] = []
        rest: deque[_Waiting] = deque()
        while self._queue:
            w = self._queue.popleft()
            if w.future.done():  # cancelled by its caller
                continue
            if w.deadline is not None and now > w.deadline:
                w.future.set_exception(DeadlineExceeded("deadline passed: queued for a search"))
                continue
            mine = w.query.batch_key()
            key = mine if key is None else key
            fits = not group or limit is None or rows + len(w.xq) <= limit
            if fits and len(group) < self.max_requests and mine == key:
                group.append(w)
                rows += len(w.xq)
            else:
                rest.append(w)
        self._queue = rest
        return group

    async def _search(self, group: list[_Waiting]) -> None:
        try:
            ends = [w.deadline for w in group if w.deadline is not None]
            deadline = max(ends) if len(ends) == len(group) else None
            members = [(w.query, len(w.xq)) for w in group]
            xq = group[0].xq if len(group) == 1 else np.concatenate([w.xq for w in group])
            try:
                out = await self._run(xq, group[0].query, deadline, members)
            except BaseException as exc:  # this search's requests fail, no others
                for w in group:
                    if not w.future.done():
                        w.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            D, I, *rest = out
            start = 0
            for w in group:
                n = len(w.xq)
                if not w.future.done():
                    w.future.set_result((D[start : start + n], I[start : start + n], *rest))
                start += n
        finally:
            self.busy -= 1
            self._dispatch()
