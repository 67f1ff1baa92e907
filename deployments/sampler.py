"""The recall monitor's two ends outside the coordinator: which rows a router samples, and
the exact re-runs a shard replica does for them, off the request path, within a CPU budget.

The router marks a few rows of a query (``pick``); every shard answers the query as usual,
then queues the marked rows with the states the answer read. One worker thread (one OpenMP
thread) searches them exactly over those same states (``shards.oracle``) while the budget
lasts: at most ``cpu_share`` of one core, over time. The parts wait here until the next
report takes them to the coordinator (``deployments.monitor`` joins them).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from shards._faiss import faiss
from shards.oracle import exact_over, unmeasurable
from shards.query import Query, Sample
from shards.recall import UNFILTERED, Part

MAX_ROWS = 4  # rows of one query sampled at most (a large batch is still one sample)
QUEUE = 64  # queries waiting for their exact re-run; more are skipped
PARTS = 2048  # parts kept for the coordinator between reports (the oldest go first)
BURST_S = 1.0  # CPU seconds the budget can hold in reserve


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
    return Sample(int(rng.integers(1, 2**62)), tuple(int(r) for r in chosen), target)


class Budget:
    """CPU seconds earned at ``share`` per second of wall time, spent by the exact re-runs;
    a re-run starts only while some are left (so the cost is bounded by construction)."""

    def __init__(self, share: float, burst_s: float = BURST_S) -> None:
        self.share, self.burst_s = share, burst_s
        self.left, self.at = burst_s, time.monotonic()

    def allows(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.left = min(self.burst_s, self.left + self.share * (now - self.at))
        self.at = now
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
            job = self.jobs.popleft()
            part, cpu_s = await loop.run_in_executor(self._pool, self._measure, job)
            self.budget.spend(cpu_s)
            self.cpu_s += cpu_s
            self.measured += 1
            self.parts.append(part)

    def _measure(self, job: tuple) -> tuple[Part, float]:
        t0 = time.thread_time()
        index, xq, query, D, I, states, plan = job
        De, Ie = exact_over(index, xq, query.fetch_k, index.parse_filter(query.filter), states)
        sample = query.sample
        exclude = None if query.exclude is None else query.exclude[list(sample.rows)]
        part = Part(
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
        return part, time.thread_time() - t0

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
