"""The one writer of an app's mutation log, and the in-memory tail replicas follow.

Plain asyncio around ``shards.log.MutationLog`` (tested without Ray); the app's coordinator
holds one. Writes that arrive while a segment is being made durable wait and go together
into the next one (group commit: one fsync for many writes); each is acknowledged with its
sequence once its segment is durable, never before. Replicas ask ``tail_after`` for what
follows their sequence and are answered as soon as there is something (a long poll), or
told to read the log's files (``None``) when the tail no longer reaches back that far.

Idempotency: a write with a ``key`` that was already logged (the last ``KEYS_KEPT`` keyed
writes, and after a restart those in the log above the active version's base) is answered
with the first one's sequence and not logged again; the same key with another content is
refused (``IdempotencyConflict``). A client that lost an acknowledgement retries safely,
also when its write failed after its segment was linked (a failed directory fsync): the
next append finds that segment, and the retry gets its sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque

from shards.errors import ConcurrentUpdate, CorruptLogSegment, IdempotencyConflict
from shards.log import Mutation, MutationLog

log = logging.getLogger(__name__)

TAIL_ROWS = 200_000  # rows of recent mutations kept for replicas (older: from the files)
SEGMENT_ROWS = 65_536  # at most this many rows per group commit
TAIL_BATCH = 1024  # mutations per answer to a replica
APPEND_ATTEMPTS = 3  # another writer took our sequence: find the end again and retry
KEYS_KEPT = 1_000_000  # idempotency keys remembered (about 100 bytes each)


class LogWriter:
    """Orders, commits and hands out the mutations of one log."""

    def __init__(self, log_: MutationLog, floor: int = 0) -> None:
        self.log = log_
        self.error: CorruptLogSegment | None = None
        self.keys: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # key -> seq, digest
        self.waiting: dict[str, tuple[bytes, asyncio.Future]] = {}  # keys being logged
        try:
            for m in log_.read(floor):  # every segment above the floor checked
                self._remember(m)
            self.end = log_.find_end(floor)
        except CorruptLogSegment as exc:
            self.error, self.end = exc, floor
            log.error("mutation log refuses writes: %s", exc.message)
        self.tail: deque[Mutation] = deque()
        self.tail_rows = 0
        self.pending: list[tuple[Mutation, asyncio.Future]] = []
        self.flusher: asyncio.Task | None = None
        self.changed = asyncio.Condition()

    async def write(self, m: Mutation) -> int:
        """Log ``m`` durably; returns its sequence.

        Raises:
            CorruptLogSegment: the log has a corrupt segment (writes are refused).
            ConcurrentUpdate: other writers kept taking the next sequence.
            IdempotencyConflict: ``m.key`` was used for a write of other contents.
        """
        if self.error is not None:
            raise self.error
        if m.key is not None:
            digest = m.fingerprint()
            if m.key in self.keys:
                seq, first = self.keys[m.key]
                self._same(m.key, digest, first)
                return seq
            if m.key in self.waiting:  # the first attempt is being logged: its answer
                first, earlier = self.waiting[m.key]
                self._same(m.key, digest, first)
                return await asyncio.shield(earlier)
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((m, fut))
        if m.key is not None:
            key = m.key
            self.waiting[key] = (digest, fut)

            def forget(_: asyncio.Future) -> None:  # logged (then in ``keys``) or failed
                self.waiting.pop(key, None)

            fut.add_done_callback(forget)
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._flush())
        return await fut

    @staticmethod
    def _same(key: str, digest: bytes, first: bytes) -> None:
        if digest != first:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a write of other ids or vectors"
            )

    def _remember(self, m: Mutation) -> None:
        if m.key is None:
            return
        self.keys[m.key] = (m.sequence, m.fingerprint())
        while len(self.keys) > KEYS_KEPT:
            self.keys.popitem(last=False)

    async def _flush(self) -> None:
        while self.pending:
            batch = self._take()
            try:
                outcomes, learned = await asyncio.to_thread(self._append, [m for m, _ in batch])
            except Exception as exc:  # nothing of this batch is durable: every write fails
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            news = learned + [o for o in outcomes if isinstance(o, Mutation)]
            if news and news[0].sequence != self.end + 1:  # the tail no longer follows on:
                self.tail.clear()  # replicas read the files
                self.tail_rows = 0
            for lm in news:  # in sequence: others' segments first, then this batch's
                self._keep(lm)
                self._remember(lm)
            if news:
                self.end = news[-1].sequence
            for (_, fut), out in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(out, Exception):
                    fut.set_exception(out)
                else:
                    fut.set_result(out.sequence)
            async with self.changed:
                self.changed.notify_all()

    def _take(self) -> list[tuple[Mutation, asyncio.Future]]:
        rows, n = 0, 0
        for m, _ in self.pending:
            if n and rows + len(m) > SEGMENT_ROWS:
                break
            rows, n = rows + len(m), n + 1
        batch, self.pending = self.pending[:n], self.pending[n:]
        return batch

    def _append(self, batch: list[Mutation]) -> tuple[list, list[Mutation]]:
        """``(outcomes, learned)``: for each mutation of ``batch`` its logged form (or the
        ``IdempotencyConflict`` it gets), and the mutations of segments found after
        ``self.end`` when the next sequence was taken: another writer's, or this writer's own
        whose append failed after its segment was linked (a failed directory fsync: the
        client was told it failed). A keyed mutation found there keeps that sequence, so a
        retry is not logged a second time after the writes made in between."""
        learned: list[Mutation] = []
        for attempt in range(APPEND_ATTEMPTS):
            known = {m.key: m for m in learned if m.key is not None}
            outcomes: list = [None] * len(batch)
            rest = []
            for i, m in enumerate(batch):
                first = known.get(m.key) if m.key is not None else None
                if first is None:
                    rest.append(i)
                    continue
                try:
                    self._same(first.key or "", m.fingerprint(), first.fingerprint())
                    outcomes[i] = first
                except IdempotencyConflict as exc:
                    outcomes[i] = exc
            try:
                logged = self.log.append([batch[i] for i in rest]) if rest else []
            except ConcurrentUpdate:
                if attempt == APPEND_ATTEMPTS - 1:
                    raise
                log.warning("the mutation log has segments this writer did not write; after them")
                learned = list(self.log.read(self.end))
                continue
            for i, lm in zip(rest, logged, strict=True):
                outcomes[i] = lm
            return outcomes, learned
        raise AssertionError("unreachable")

    def _keep(self, m: Mutation) -> None:
        self.tail.append(m)
        self.tail_rows += len(m)
        while self.tail_rows > TAIL_ROWS and len(self.tail) > 1:
            self.tail_rows -= len(self.tail.popleft())

    async def tail_after(self, after: int, wait_s: float) -> list[Mutation] | None:
        """The mutations after ``after`` (at most ``TAIL_BATCH``), waiting up to ``wait_s``
        for one when there is none yet; None when the tail does not reach back to
        ``after + 1`` (read the log's files instead)."""
        if after >= self.end:
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait_for(lambda: self.end > after), wait_s)
                except TimeoutError:
                    return []
        if not self.tail or self.tail[0].sequence > after + 1:
            return None
        out = []
        for m in self.tail:
            if m.sequence > after:
                out.append(m)
                if len(out) == TAIL_BATCH:
                    break
        return out
