"""The online recall monitor at the coordinator: the shards' parts joined into measured
recall, kept for a window, exported, compared with its target, and a re-tune asked for when
it drifts below the target by more than the margin.

The sampling is the routers' (``deployments.sampler.pick``), the exact re-runs the shard
replicas' (``deployments.sampler.ShardSampler``); their parts arrive here with the replicas'
reports. Plain Python (no Ray): the coordinator passes ``retune``, a callable that starts a
re-tune and says whether it did.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from deployments.config import RecallOptions
from shards.recall import SERVICE, UNFILTERED, Joiner, Part, RecallWindow

log = logging.getLogger(__name__)
ALL = "all"  # the plan label of figures over every plan
EXACT = "exact"  # a filter's brute-force plan: exact by construction, never a drift
FAILED = ("failed", "stale")  # re-tune outcomes that may be tried again
NO_GAIN = 0.005  # a re-tune that raised recall less than this did not help
CHECK_EVERY_S = 1.0  # reports arrive from every replica: compare at most this often
# Retune(queries, target, why) -> True when a re-tune started
Retune = Callable[[np.ndarray, float, str], bool]


class RecallMonitor:
    """Measured recall of live answers, per version, shard, plan and target."""

    def __init__(
        self, opts: RecallOptions, groups: int, keep_max: bool, metrics: Any = None
    ) -> None:
        self.opts, self.metrics = opts, metrics
        self.joiner = Joiner(groups, keep_max)
        self.window = RecallWindow(opts.window_s)
        self.queries: deque[np.ndarray] = deque(maxlen=opts.retune_queries)
        self.samplers: dict[str, dict[str, Any]] = {}  # replica -> its sampler's state
        self.measured = 0  # service-level figures since start
        self.drift: dict[str, Any] | None = None  # the last drift found, while it lasts
        self.retune: dict[str, Any] = {}  # the last automatic re-tune asked for
        self._retuned_at: float | None = None
        self._retuned_drift: tuple[str | None, float] | None = None  # (version, its recall)
        self._checked_at = -math.inf
        self.check_every_s = CHECK_EVERY_S
        self.after_drift = 0  # unfiltered live queries sampled since the drift was found
        self._labels: set[tuple[str, str]] = set()

    def add(self, parts: Iterable[Part], replica: str | None = None, sampler=None) -> int:
        """Join ``parts`` (a replica's report); the service figures they complete."""
        if replica is not None and sampler is not None:
            self.samplers[replica] = dict(sampler)
        done = 0
        for part in parts:
            figures = self.joiner.add(part)
            self.window.add(figures)
            service = [f for f in figures if f.shard == SERVICE]
            done += len(service)
            if service and part.plan == UNFILTERED and part.exclude is None:
                self.queries.extend(part.xq)  # live queries for a re-tune
                if self.drift is not None:
                    self.after_drift += len(part.xq)
            if self.metrics is not None:
                for f in service:
                    self.metrics.per_query.observe(f.recall, tags={"plan": f.plan})
        self.measured += done
        return done

    def check(
        self, active: str | None, default_target: float | None, retune: Retune | None = None
    ) -> dict[str, Any] | None:
        """Compare ``active``'s measured recall with each target its queries asked for;
        the worst drift (or None), and a re-tune through ``retune`` when it is on. At most
        every ``CHECK_EVERY_S`` (the last result otherwise)."""
        now = time.monotonic()
        if now - self._checked_at < self.check_every_s:
            return self.drift
        self._checked_at = now
        self.export(active, default_target)
        worst: dict[str, Any] | None = None
        for target in self._targets(active, now):
            mean, n = self._mean(active, target, now)
            if mean is None or n < self.opts.min_samples:
                continue
            short = target - mean
            if short > self.opts.margin and (worst is None or short > worst["short_by"]):
                worst = {"target": target, "recall": round(mean, 5), "samples": n}
                worst["short_by"] = round(short, 5)
        if worst is None:
            self.drift, self.after_drift = None, 0
            return None
        if self.drift is None or self.drift.get("version") != active:
            self.after_drift = 0  # a re-tune waits for queries of the traffic that drifted
            log.warning(
                "recall monitor: measured recall %.4f over %d queries is below target %.3f by "
                "more than %.3f (version %s)%s",
                worst["recall"],
                worst["samples"],
                worst["target"],
                self.opts.margin,
                active,
                "; re-tuning on live queries" if self.opts.auto_retune else "",
            )
        self.drift = {**worst, "version": active, "since": (self.drift or {}).get("since", now)}
        if self.opts.auto_retune and retune is not None:
            self._maybe_retune(active, default_target or worst["target"], worst, retune, now)
        return self.drift

    def _maybe_retune(
        self, active: str | None, target: float, drift: dict, retune: Retune, now: float
    ) -> None:
        cooled = self._retuned_at is None or now - self._retuned_at >= self.opts.retune_cooldown_s
        done = self.retune.get("from") == active and self.retune.get("state") not in FAILED
        if not cooled or done:
            return  # one re-tune per version (unless it failed), at most one per cooldown
        unfiltered, _ = self._mean(active, drift["target"], now, UNFILTERED)
        if unfiltered is None or unfiltered >= drift["target"] - self.opts.margin:
            self.retune = {  # a re-tune measures the unfiltered curve: it cannot fix this
                "state": "not_needed",
                "why": "the unfiltered queries meet the target; the drift is in filtered ones",
            }
            return
        last = self._retuned_drift
        if last is not None and last[0] != active and unfiltered <= last[1] + NO_GAIN:
            self.retune = {  # the last re-tune made this version and did not help
                "state": "no_gain",
                "why": f"the re-tune of {last[0]} left recall at {unfiltered:.4f} (it was "
                f"{last[1]:.4f}): not re-tuning again; rebuild the index or lower the target",
            }
            return
        need = self.opts.retune_queries
        if self.after_drift < need:  # tune on the traffic that drifted, not on older traffic
            self.retune = {
                "state": "waiting",
                "why": f"{self.after_drift} of {need} unfiltered live queries sampled since "
                "the drift was found",
            }
            return
        why = (
            f"measured recall {drift['recall']:.4f} over {drift['samples']} queries is below "
            f"target {drift['target']:.3f} by more than {self.opts.margin}"
        )
        if retune(np.stack(list(self.queries)), float(target), why):
            self._retuned_at, self._retuned_drift = now, (active, unfiltered)
            self.retune = {"state": "started", "from": active, "why": why, "at": time.time()}
            if self.metrics is not None:
                self.metrics.retunes.inc(tags={"state": "started"})

    def _targets(self, version: str | None, now: float) -> list[float]:
        found = {
            m.target
            for m in self.window.current(now)
            if m.version == version and m.shard == SERVICE and m.target is not None
        }
        return sorted(t for t in found if t is not None)

    def _mean(
        self, version: str | None, target: float, now: float, plan: str | None = None
    ) -> tuple[float | None, int]:
        """The service's mean recall for ``target`` (``plan``: only it; else every plan but
        the exact one, which cannot drift)."""
        values = [
            m.recall
            for m in self.window.current(now)
            if m.version == version
            and m.shard == SERVICE
            and m.target == target
            and (m.plan == plan if plan is not None else m.plan != EXACT)
        ]
        return (float(np.mean(values)) if values else None), len(values)

    def export(self, active: str | None, default_target: float | None) -> None:
        """Set the gauges: recall and samples of ``active`` by shard and plan."""
        if self.metrics is None:
            return
        m = self.metrics
        if default_target is not None:
            m.target.set(float(default_target))
        figures = [f for f in self.window.current() if f.version == active]
        cells: dict[tuple[str, str], list[float]] = {}
        for f in figures:
            for plan in (ALL, f.plan):
                cells.setdefault((f.shard, plan), []).append(f.recall)
        self._labels |= set(cells)
        for shard, plan in self._labels:  # a cell with nothing in the window says so
            values = cells.get((shard, plan), [])
            tags = {"shard": shard, "plan": plan}
            m.recall.set(float(np.mean(values)) if values else math.nan, tags=tags)
            m.samples.set(float(len(values)), tags=tags)
        if default_target is not None:  # what the alert compares with the target
            mean, n = self._mean(active, round(default_target, 3), time.monotonic())
            m.at_target.set(math.nan if mean is None else mean)
            m.at_target_samples.set(float(n))
        m.incomplete.set(float(self.joiner.expired))
        skipped = self._skipped()
        for reason in ("budget", "queue", "unmeasurable", "error"):
            m.skipped.set(float(skipped.get(reason, 0)), tags={"reason": reason})

    def _skipped(self) -> dict[str, int]:
        skipped: dict[str, int] = {}
        for state in self.samplers.values():
            for reason, n in state.get("skipped", {}).items():
                skipped[reason] = skipped.get(reason, 0) + n
        return skipped

    def forget(self, replicas: set[str]) -> None:
        """Keep the sampler states of ``replicas`` only (the ones still reporting)."""
        self.samplers = {r: st for r, st in self.samplers.items() if r in replicas}

    def summary(self, active: str | None) -> dict[str, Any]:
        """What ``/v1/stats`` shows as ``recall``."""
        skipped = self._skipped()
        cpu = sum(state.get("cpu_seconds", 0.0) for state in self.samplers.values())
        return {
            "index_version": active,
            **self.window.summary(active),
            "window_s": self.opts.window_s,
            "sample_rate": self.opts.sample_rate,
            "measured_total": self.measured,
            "incomplete": self.joiner.expired,
            "skipped": skipped,
            "exact_cpu_seconds": round(cpu, 3),
            "drift": self.drift,
            "auto_retune": self.opts.auto_retune,
            "retune": self.retune or None,
        }
