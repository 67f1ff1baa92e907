"""Recall of live answers against exact ones: per-query figures, joined over the shards,
kept for a time window.

A sampled query is answered as usual; each shard replica then searches the same state
exactly (``shards.oracle``) and sends a ``Part``: what it answered and what the exact search
found, for the sampled rows. ``Joiner`` turns parts into ``Measured`` figures: one per shard
at once (its answer against its exact top-k), and one for the service when every shard's
part is in (the merged answer against the merged exact top-k: what the caller got).
``RecallWindow`` keeps the figures of the last ``window_s`` seconds and averages them by
version, shard, plan and target.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards.merge import exclude_ids, merge_results

SERVICE = "all"  # the shard label of a figure for the whole answer
UNFILTERED = "unfiltered"  # the plan label of a search without a filter


def query_recall(D: np.ndarray, I: np.ndarray, De: np.ndarray, Ie: np.ndarray) -> np.ndarray:
    """Recall of each row of an answer ``(D, I)`` against the exact ``(De, Ie)`` (both
    (nq, k), -1 padded): the share of the exact results the answer holds, a result whose
    score equals the k-th exact one counting as found (a tie is not a miss). NaN for a row
    whose exact answer is empty (nothing matched)."""
    valid = Ie >= 0
    found = (np.where(I >= 0, I, -2)[:, :, None] == Ie[:, None, :]).any(axis=2)
    count = valid.sum(axis=1)
    kth = De[np.arange(len(De)), np.maximum(count - 1, 0)]
    tol = 1e-5 * np.maximum(1.0, np.abs(kth))
    tie = np.abs(D - kth[:, None]) <= tol[:, None]  # equal scores, not merely better ones
    hits = np.minimum((found | (tie & (I >= 0))).sum(axis=1), count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, hits / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class Part:
    """One shard group's answer to the sampled rows of a query, and the exact one."""

    sample: int  # the query's sample id (the same at every shard)
    group: int  # index of the shard group (0 .. groups - 1)
    shard: str  # its label ("0", "0-3")
    version: str
    sequence: int  # the mutation sequence of the state both searches read
    plan: str  # UNFILTERED, or the filter plan the group took ("exact", "ann", "ann-cpu")
    target: float | None  # the recall the query asked for (None: explicit parameters)
    k: int
    D: np.ndarray  # (rows, fetch_k): what the group answered
    I: np.ndarray
    De: np.ndarray  # (rows, fetch_k): the exact answer over the same state
    Ie: np.ndarray
    xq: np.ndarray  # (rows, d) the sampled query vectors (for a re-tune on live queries)
    exclude: np.ndarray | None = None  # (rows,) ids left out (search by id)
    at: float = 0.0  # when it was made (monotonic seconds of the maker's process)


@dataclass(frozen=True)
class Measured:
    """The recall of one answered query (one row), for one shard or the service."""

    at: float
    version: str
    shard: str
    plan: str
    target: float | None
    recall: float


def _finish(D: np.ndarray, I: np.ndarray, part: Part) -> tuple[np.ndarray, np.ndarray]:
    if part.exclude is None:
        return D[:, : part.k], I[:, : part.k]
    return exclude_ids(D, I, part.exclude, part.k)


def _figures(part: Part, shard: str, plan: str, recalls: np.ndarray, now: float) -> list[Measured]:
    return [
        Measured(now, part.version, shard, plan, part.target, float(r))
        for r in recalls
        if not np.isnan(r)
    ]


class Joiner:
    """Parts of each sample until every group's is in; ``expired`` counts those that never
    were (a shard that failed the query, or one whose part was lost)."""

    def __init__(self, groups: int, keep_max: bool, ttl_s: float = 120.0) -> None:
        self.groups, self.keep_max, self.ttl_s = groups, keep_max, ttl_s
        self.waiting: dict[int, dict[int, Part]] = {}
        self.first_seen: dict[int, float] = {}
        self.expired = 0

    def add(self, part: Part, now: float | None = None) -> list[Measured]:
        """The figures ``part`` completes: its shard's, and the service's when it is last."""
        now = time.monotonic() if now is None else now
        out = _figures(part, part.shard, part.plan, self._recall(part.D, part.I, part), now)
        got = self.waiting.setdefault(part.sample, {})
        self.first_seen.setdefault(part.sample, now)
        got[part.group] = part
        if len(got) == self.groups:
            del self.waiting[part.sample], self.first_seen[part.sample]
            out += self._service(list(got.values()), now)
        self._expire(now)
        return out

    def _recall(self, D: np.ndarray, I: np.ndarray, part: Part) -> np.ndarray:
        De, Ie = _finish(part.De, part.Ie, part)
        D, I = _finish(D, I, part)
        return query_recall(D, I, De, Ie)

    def _service(self, parts: list[Part], now: float) -> list[Measured]:
        first = parts[0]
        if len({(p.version, p.D.shape) for p in parts}) != 1:
            return []  # not one query's parts (cannot happen unless ids collide): no figure
        D, I = merge_results([(p.D, p.I) for p in parts], self.keep_max)
        De, Ie = merge_results([(p.De, p.Ie) for p in parts], self.keep_max)
        De, Ie = _finish(De, Ie, first)
        D, I = _finish(D, I, first)
        plans = {p.plan for p in parts}
        plan = plans.pop() if len(plans) == 1 else "mixed"
        return _figures(first, SERVICE, plan, query_recall(D, I, De, Ie), now)

    def _expire(self, now: float) -> None:
        while self.first_seen:  # oldest first (insertion order): stop at a fresh one
            s, t = next(iter(self.first_seen.items()))
            if now - t <= self.ttl_s:
                break
            del self.waiting[s], self.first_seen[s]
            self.expired += 1


class RecallWindow:
    """The figures of the last ``window_s`` seconds (at most ``max_figures``)."""

    def __init__(self, window_s: float = 900.0, max_figures: int = 50_000) -> None:
        self.window_s = window_s
        self.figures: deque[Measured] = deque(maxlen=max_figures)

    def add(self, figures: Iterable[Measured]) -> None:
        self.figures.extend(figures)

    def current(self, now: float | None = None) -> list[Measured]:
        now = time.monotonic() if now is None else now
        while self.figures and now - self.figures[0].at > self.window_s:
            self.figures.popleft()
        return list(self.figures)

    def mean(self, now: float | None = None, **match: Any) -> tuple[float | None, int]:
        """Mean recall and count of the figures whose fields equal ``match``."""
        values = [
            m.recall
            for m in self.current(now)
            if all(getattr(m, key) == want for key, want in match.items())
        ]
        return (float(np.mean(values)) if values else None), len(values)

    def summary(self, version: str | None, now: float | None = None) -> dict[str, Any]:
        """Mean recall and count for ``version``: the service's, and by shard, plan, target;
        and the service's for every version in the window (a swap starts a new figure)."""
        figures = self.current(now)
        mine = [m for m in figures if m.version == version]
        service = [m for m in mine if m.shard == SERVICE]

        def group(figures: list[Measured], key: str) -> dict[str, dict[str, Any]]:
            by: dict[str, list[float]] = {}
            for m in figures:
                by.setdefault(str(getattr(m, key)), []).append(m.recall)
            return {name: _stat(values) for name, values in sorted(by.items())}

        return {
            **_stat([m.recall for m in service]),
            "by_shard": group([m for m in mine if m.shard != SERVICE], "shard"),
            "by_plan": group(service, "plan"),
            "by_target": group(service, "target"),
            "by_version": group([m for m in figures if m.shard == SERVICE], "version"),
        }


def _stat(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"recall": None, "samples": 0}
    return {"recall": round(float(np.mean(values)), 5), "samples": len(values)}
