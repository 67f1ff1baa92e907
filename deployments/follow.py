"""A shard replica following the mutation log: every held version kept at the log's end.

Plain asyncio (tested without Ray). The replica long-polls the app's writer, so a write
reaches it as soon as it is durable; when the writer cannot give what is missing (it
restarted, or the replica fell behind its in-memory tail) or does not answer, the replica
reads the log's files; it also reads them every ``FILE_POLL_S`` in case another writer (the
CLI) appended. Searches that ask for a ``min_sequence`` wait here until it is applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from shards.index import ShardedIndex
from shards.log import Mutation

log = logging.getLogger(__name__)

WAIT_S = 10.0  # how long one long poll waits for a write
FILE_POLL_S = 5.0  # read the files at least this often
RETRY_S = 1.0  # after the writer failed to answer

Tail = Callable[[int, float], Awaitable[list[Mutation] | None]]


class Follower:
    """Applies the log to ``held()`` (the replica's loaded versions) as it grows."""

    def __init__(self, tail: Tail, held: Callable[[], list[ShardedIndex]]) -> None:
        self.tail, self.held = tail, held
        self.applied = asyncio.Condition()
        self.last_file_read = 0.0
        self.error: str | None = None  # the writer's last failure to answer (the files serve)
        self.broken: str | None = None  # applying the log failed (a retired or missing part)
        self.broken_since: float | None = None

    def sequence(self) -> int | None:
        """The sequence every held version has applied (None: none held)."""
        indexes = self.held()
        return min(i.sequence for i in indexes) if indexes else None

    async def run(self) -> None:
        """Follow forever (the replica's background task); every failure is kept in
        ``error`` (the replica reports it) and retried, never the end of the task."""
        while True:
            try:
                await self.step()
            except Exception as exc:
                self.broken = f"cannot apply the mutation log: {exc!r}"[:500]
                self.broken_since = self.broken_since or time.monotonic()
                log.error(self.broken)
                await asyncio.sleep(RETRY_S)
            else:
                self.broken = self.broken_since = None

    async def step(self) -> None:
        """One round: wait for what follows, apply it (or read the files), notify."""
        after = self.sequence()
        if after is None:
            await asyncio.sleep(RETRY_S)
            return
        try:
            got = await asyncio.wait_for(self.tail(after, WAIT_S), WAIT_S + 5)
        except Exception as exc:  # the writer restarts, or is busy: read the files
            self.error = f"no answer from the log writer: {exc!r}"[:500]
            got = None
            await asyncio.sleep(RETRY_S)
        stale = time.monotonic() - self.last_file_read > FILE_POLL_S
        indexes = self.held()  # here, on the event loop: the replica changes its dict here
        if got is None or (not got and stale):
            await self.read_files(indexes)
        elif got:
            await asyncio.to_thread(self._apply, indexes, got)
        if got is not None:
            self.error = None
        await self._notify()

    async def read_files(self, indexes: list[ShardedIndex] | None = None) -> None:
        """Apply what the log's files hold after each held version's sequence."""
        self.last_file_read = time.monotonic()
        await asyncio.to_thread(self._catch_up, self.held() if indexes is None else indexes)

    @staticmethod
    def _catch_up(indexes: list[ShardedIndex]) -> None:
        for index in indexes:
            if index.log is not None:
                index.catch_up(strict=False)

    @staticmethod
    def _apply(indexes: list[ShardedIndex], mutations: list[Mutation]) -> None:
        for index in indexes:
            for m in mutations:
                if m.sequence <= index.sequence:
                    continue  # this version has it (it asked from the least held sequence)
                if m.sequence != index.sequence + 1 and index.log is not None:
                    index.catch_up(strict=False)  # a version loaded meanwhile: the files
                    if m.sequence <= index.sequence:
                        continue
                index.apply(m)  # LogGap if the files did not close the gap: loud

    async def _notify(self) -> None:
        async with self.applied:
            self.applied.notify_all()

    async def wait_for(self, index: ShardedIndex, sequence: int, deadline: float | None) -> bool:
        """True once ``index`` has applied ``sequence``; False when ``deadline`` (monotonic
        seconds, None: no wait) passes first."""
        if index.sequence >= sequence:
            return True
        if deadline is None:
            return False
        async with self.applied:
            try:
                await asyncio.wait_for(
                    self.applied.wait_for(lambda: index.sequence >= sequence),
                    max(0.0, deadline - time.monotonic()),
                )
            except TimeoutError:
                return False
        return True
