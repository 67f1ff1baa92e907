"""The recall monitor's two ends outside the coordinator: which rows a router samples, and
the exact re-runs a shard replica does for them, off the request path, within a CPU budget.

The router marks a few rows of a query (``pick``); every shard answers the query as usual,
then queues the marked rows with the states the answer read. One worker thread (one OpenMP
thread) searches them exactly over those same states (``shards.oracle``), the rows queued
over the same states in one batch (BLAS: it waits up to a second for 32 rows), while the
budget lasts: the replica's exact re-runs take at most ``cpu_share`` of the CPU time its
searches take, so the monitor's cost to
throughput is bounded by construction whatever the index and the load. The parts wait here
until the next report takes them to the coordinator (``deployments.monitor`` joins them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from shards._faiss import faiss
from shards.oracle import exact_over, unmeasurable
from shards.query import Query, Sample
from shards.recall import UNFILTERED, Part

log = logging.getLogger("ray.serve")
MAX_ROWS = 4  # rows of one query sampled at most (a large batch is still one sample)
QUEUE = 64  # queries waiting for their exact re-run; more are skipped
PARTS = 2048  # parts kept for the coordinator between reports (the oldest go first)
BATCH_ROWS = 32  # rows the worker waits for (up to BATCH_WAIT_S): one BLAS search for all
BATCH_WAIT_S = 1.0
START_S = 0.05  # seconds of exact search a replica may spend before it has searched
BURST_S = 1.0  # seconds the budget can hold in reserve


def pick(rng: np.random.Generator, nq: int, rate: float, target: float | None) -> Sample | None:
    """Each row is sampled with probability ``rate`` (at most ``MAX_ROWS``); None if none."""
    if rate <= 0.0 or nq == 0:
        return None
    if nq == 1:
        chosen = [0] if rng.random() < rate else []
    else:
        chosen = np.flatnonzero(rng.random(nq) < rate)[:MAX_ROWS].tolist()
    if not chosen:
        return None
    goal = None if target is None else round(float(target), 3)  # a bounded set of targets
    return Sample(int(rng.integers(1, 2**62)), tuple(int(r) for r in chosen), goal)


class Budget:
    """Seconds of exact search earned at ``share`` of every second the replica searches,
    spent by the re-runs; a re-run is queued only while some are left. It starts with
    ``start_s`` (the first samples are measured at once) and holds at most ``burst_s``."""

    def __init__(self, share: float, start_s: float = START_S, burst_s: float = BURST_S):
        self.share, self.burst_s = share, burst_s
        self.left = start_s

    def earn(self, searched_s: float) -> None:
        self.left = min(self.burst_s, self.left + self.share * searched_s)

    def allows(self) -> bool:
        return self.left > 0.0

    def spend(self, seconds: float) -> None:
        self.left -= seconds


class ShardSampler:
    """Exact re-runs of the sampled rows a replica answered, and the parts they make."""

    def __init__(self, group: int, label: str, cpu_share: float) -> None:
        self.group, self.label = group, label
        self.budget = Budget(cpu_share)
        self.jobs: deque[tuple] = deque()
        self.parts: deque[Part] = deque(maxlen=PARTS)
        self.skipped: Counter[str] = Counter()  # by reason
        self.measured = 0
        self.cpu_s = 0.0  # spent on exact re-runs (thread CPU time)
        self._worker: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    def searched(self, seconds: float) -> None:
        """The replica's searches took ``seconds`` of CPU: the budget earns its share."""
        self.budget.earn(seconds)

    def offer(
        self, index: Any, xq: np.ndarray, query: Query, D, I, states: list, plans: dict
    ) -> None:
        """After answering ``query``: queue its sampled rows for an exact re-run over
        ``states`` (the ones the answer read), unless the budget or the queue says no."""
        sample = query.sample
        if sample is None:
            return
        why = next((w for s in index.shards.values() if (w := unmeasurable(s.index))), None)
        reason = (
            "unmeasurable"
            if why
            else "budget"
            if not self.budget.allows()
            else "queue"
            if len(self.jobs) >= QUEUE
            else None
        )
        if reason is not None:
            self.skipped[reason] += 1
            return
        rows = np.asarray(sample.rows, dtype=np.int64)
        names = set(plans.values())
        plan = UNFILTERED if not plans else names.pop() if len(names) == 1 else "mixed"
        self.jobs.append((index, xq[rows].copy(), query, D[rows], I[rows], states, plan))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pool is None:  # one thread, one OpenMP thread: a bounded share of the CPU
            self._pool = ThreadPoolExecutor(1, "recall", faiss.omp_set_num_threads, (1,))
        while self.jobs:
            waited = 0.0  # a batch of rows costs far less per row than one row alone
            while sum(len(j[1]) for j in self.jobs) < BATCH_ROWS and waited < BATCH_WAIT_S:
                await asyncio.sleep(0.05)
                waited += 0.05
            batch = list(self.jobs)
            self.jobs.clear()
            parts, cpu_s = await loop.run_in_executor(self._pool, self._measure, batch)
            self.budget.spend(cpu_s)
            self.cpu_s += cpu_s
            self.measured += len(parts)
            self.parts.extend(parts)

    def _measure(self, jobs: list[tuple]) -> tuple[list[Part], float]:
        """Exact answers for ``jobs``; those over the same states and query shape (k,
        filter) in one search."""
        t0 = time.thread_time()
        groups: dict[tuple, list[tuple]] = {}
        for job in jobs:
            index, _, query, _, _, states, _ = job
            filt = None if query.filter is None else query.filter.key
            key = (id(index), tuple(id(st) for st in states), query.fetch_k, filt)
            groups.setdefault(key, []).append(job)
        parts = []
        for same in groups.values():
            index, _, query, _, _, states, _ = same[0]
            xq = np.concatenate([job[1] for job in same])
            try:
                filt = index.parse_filter(query.filter)
                De, Ie = exact_over(index, xq, query.fetch_k, filt, states)
            except Exception as exc:  # counted and logged; the worker goes on
                self.skipped["error"] += len(same)
                log.warning("recall monitor: exact re-run failed: %r", exc)
                continue
            start = 0
            for job in same:
                n = len(job[1])
                parts.append(self._part(job, De[start : start + n], Ie[start : start + n]))
                start += n
        return parts, time.thread_time() - t0

    def _part(self, job: tuple, De: np.ndarray, Ie: np.ndarray) -> Part:
        index, xq, query, D, I, states, plan = job
        sample = query.sample
        exclude = None if query.exclude is None else query.exclude[list(sample.rows)]
        return Part(
            sample.id,
            self.group,
            self.label,
            index.index_version,
            max(st.sequence for st in states),
            plan,
            sample.target,
            query.k,
            D,
            I,
            De,
            Ie,
            xq,
            exclude,
            time.monotonic(),
        )

    def requeue(self, parts: list[Part]) -> None:
        """``parts`` a report could not deliver, back before the newer ones (bounded)."""
        self.parts.extendleft(reversed(parts))

    def drain(self) -> list[Part]:
        """The parts made since the last call (for the coordinator's report)."""
        out = list(self.parts)
        self.parts.clear()
        return out

    def state(self) -> dict[str, Any]:
        return {
            "measured": self.measured,
            "skipped": dict(self.skipped),
            "queued": len(self.jobs),
            "cpu_seconds": round(self.cpu_s, 3),
        }
