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
        self.error: str | None = None  # the writer's last failure to answer

    def sequence(self) -> int | None:
        """The sequence every held version has applied (None: none held)."""
        indexes = self.held()
        return min(i.sequence for i in indexes) if indexes else None

    async def run(self) -> None:
        """Follow forever (the replica's background task)."""
        while True:
            after = self.sequence()
            if after is None:
                await asyncio.sleep(RETRY_S)
                continue
            try:
                got = await asyncio.wait_for(self.tail(after, WAIT_S), WAIT_S + 5)
                self.error = None
            except Exception as exc:  # the writer restarts, or is busy: read the files
                self.error = f"no answer from the log writer: {exc!r}"
                got = None
                await asyncio.sleep(RETRY_S)
            stale = time.monotonic() - self.last_file_read > FILE_POLL_S
            if got is None or (not got and stale):
                await self.read_files()
            elif got:
                await asyncio.to_thread(self._apply, got)
            await self._notify()

    async def read_files(self) -> None:
        """Apply what the log's files hold after each held version's sequence."""
        self.last_file_read = time.monotonic()
        await asyncio.to_thread(self._catch_up)

    def _catch_up(self) -> None:
        for index in self.held():
            if index.log is not None:
                index.catch_up(strict=False)

    def _apply(self, mutations: list[Mutation]) -> None:
        for index in self.held():
            for m in mutations:
                index.apply(m)

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
