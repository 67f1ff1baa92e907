"""The coordinator deployment: the active index version of an app, what each replica holds,
and the app's one mutation log writer.

One replica per app. Versions are soft state: shard replicas report the versions they hold
after every load and on every health check, routers commit a version by compare-and-swap;
if it restarts, the next reports and the routers' own active version rebuild it within
seconds. Writes are hard state: each is acknowledged only once durable in the log
(``deployments.writer``), so a restarted coordinator finds the log's end in its files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from deployments.compaction import Compactions, compact_version, retune_version
from deployments.config import RecallOptions
from deployments.metrics import LogMetrics, RecallMetrics
from deployments.monitor import RecallMonitor
from deployments.swap import Report
from deployments.writer import LogWriter
from shards.artefact import metadata_schema_of, open_version
from shards.errors import CorruptLogSegment, DeltaFull
from shards.log import Mutation, MutationLog
from shards.metric import Metric

log = logging.getLogger(__name__)
RETIRE_LOG_AFTER_S = 30.0  # after a compaction's commit: replicas drop older versions first


class Coordinator:
    """Holds ``active`` (the committed version) and the last report of every shard replica."""

    def __init__(
        self,
        index_uri: str | None = None,
        compact_after_changes: int | None = None,
        max_delta_rows: int | None = None,
        compact_retune: bool = False,
        recall: dict | None = None,
        groups: int = 1,
    ) -> None:
        self.max_delta_rows = max_delta_rows
        self.compact_retune = compact_retune
        self.retired: dict[str, Any] = {}  # the last log retirement, for stats
        self.active: str | None = None
        self.reports: dict[str, Report] = {}
        self.index_uri = index_uri
        self._writer: LogWriter | None = None
        self.metrics = LogMetrics()
        self.compactions = Compactions(
            self._launch, compact_after_changes, self._compacted, lambda: self.active
        )
        keep_max = False
        if index_uri is not None:
            keep_max = Metric.parse(open_version(index_uri)[1].metric).keep_max
        self.recall_metrics = RecallMetrics()
        self.monitor = RecallMonitor(
            RecallOptions(**(recall or {})), groups, keep_max, self.recall_metrics
        )
        self._targets: dict[str, float | None] = {}  # version -> its defaults' target

    def _compacted(self, last: dict[str, Any]) -> None:
        if last.get("kind") == "retune":
            self.monitor.retune = {**self.monitor.retune, **last}
            log.warning(
                "recall monitor: re-tune of %s on %s live queries is %s: %s (defaults %s)",
                last.get("from"),
                last.get("queries"),
                last["state"],
                last.get("version") or last.get("error"),
                last.get("default_params"),
            )
            self.recall_metrics.retunes.inc(tags={"state": last["state"]})
            return
        self.metrics.compactions.inc(tags={"state": last["state"]})
        if "seconds" in last:
            self.metrics.compaction_s.set(float(last["seconds"]))

    async def _launch(self, version: str | None) -> dict[str, Any]:
        """Compact ``version`` in a Ray task: its own process, off every request path."""
        import ray

        task = ray.remote(compact_version).options(num_cpus=1, max_retries=0)
        return await task.remote(self.index_uri, version, self.compact_retune)

    def _retune(self, queries, target: float, why: str) -> bool:
        """Start re-tuning the active version on ``queries`` (unless a job runs)."""
        if self.compactions.running or self.compactions.proposed is not None:
            return False
        import ray

        task = ray.remote(retune_version).options(num_cpus=1, max_retries=0)
        uri = self.index_uri

        async def launch(version: str | None) -> dict[str, Any]:
            return await task.remote(uri, version, queries, target)

        self.compactions.start(self.active, why, launch, kind="retune")
        return True

    def _target_of(self, version: str | None) -> float | None:
        """The recall ``version``'s default parameters were tuned for (None: exact, or
        not tuned)."""
        if version is None or self.index_uri is None:
            return None
        if version not in self._targets:
            tuning = open_version(self.index_uri, version)[1].tuning or {}
            self._targets[version] = tuning.get("target") if tuning.get("curve") else None
        return self._targets[version]

    async def recall(self) -> dict[str, Any]:
        """The recall monitor's view of the active version (``/v1/stats``)."""
        out = {
            **self.monitor.summary(self.active),
            "target": self._target_of(self.active),
            "margin": self.monitor.opts.margin,
        }
        if self.compactions.last.get("kind") == "retune":  # its state now (active, ...)
            out["retune"] = {**(out["retune"] or {}), **self.compactions.status()}
        return out

    async def compact(self, why: str = "asked for") -> dict[str, Any]:
        """Start compacting the active version (unless one runs); the compaction's state."""
        return self.compactions.start(self.active, why)

    def writer(self) -> LogWriter:
        """The log writer, started on first use (reads the log's end and checks it)."""
        if self._writer is None:
            if self.index_uri is None:
                raise RuntimeError("this coordinator has no index to write to")
            store, manifest = open_version(self.index_uri)
            log_ = MutationLog(self.index_uri, manifest.dim, metadata_schema_of(store, manifest))
            writer = LogWriter(log_, manifest.base_sequence)
            applied = self._most_applied()
            if writer.error is None and applied > writer.end:
                # replicas applied writes the files no longer hold: numbering after the
                # files would reuse sequences they have applied (and skip the new writes)
                writer.error = CorruptLogSegment(
                    f"the mutation log at {log_.store.root} ends at sequence {writer.end}, "
                    f"but a replica has applied {applied}: segments are missing; restore "
                    "them (writes are refused until then)",
                    log_.store.root,
                )
            self._writer = writer
        return self._writer

    def _most_applied(self) -> int:
        now = time.monotonic()
        return max((r.sequence for r in self.reports.values() if r.fresh(now)), default=0)

    async def write(self, m: Mutation) -> int:
        """Log ``m`` durably; its sequence (``LogWriter.write``).

        Raises:
            DeltaFull: the shards' deltas hold ``max_delta_rows`` (a compaction is started).
        """
        delta = self._most("delta_rows")
        if self.max_delta_rows is not None and m.op == "upsert" and delta >= self.max_delta_rows:
            self.compactions.start(self.active, f"the deltas hold {delta} rows")
            raise DeltaFull(
                f"the shards' deltas hold {delta:,} rows (max_delta_rows "
                f"{self.max_delta_rows:,}): upserts wait for the compaction now running"
            )
        seq = await self.writer().write(m)
        self.metrics.sequence.set(float(self.writer().end))
        return seq

    async def tail(self, after: int, wait_s: float) -> list[Mutation] | None:
        """What follows ``after`` in the log, or None: read the files (``LogWriter``)."""
        return await self.writer().tail_after(after, wait_s)

    async def log_state(self) -> dict[str, Any]:
        w = self.writer()
        return {"sequence": w.end, "error": None if w.error is None else w.error.message}

    async def report(
        self,
        replica: str,
        deployment: str,
        loaded: list[str],
        failed: dict[str, str],
        changes: int = 0,
        delta_rows: int = 0,
        sequence: int = 0,
        parts: list | None = None,
        sampler: dict | None = None,
    ) -> tuple[str | None, str | None]:
        """Record what ``replica`` holds (and the changes its active version has applied
        since it was built, and the recall monitor's exact re-runs since its last report);
        returns the active version and the one a compaction proposes."""
        self.reports[replica] = Report(
            deployment, tuple(loaded), dict(failed), changes, delta_rows, sequence
        )
        if parts or sampler:
            self.monitor.add(parts or [], replica, sampler)
            self.monitor.forget(set(self.reports))
            self.monitor.check(self.active, self._target_of(self.active), self._retune)
        if self.active is not None and self.active in loaded:
            self.compactions.maybe_start(self.active, self._most("changes"))
        return self.active, self.compactions.proposed

    def _most(self, field: str) -> int:
        """Over all shards: the most any fresh replica of each deployment reports."""
        now = time.monotonic()
        most: dict[str, int] = {}
        for r in self.reports.values():
            if r.fresh(now):
                most[r.deployment] = max(most.get(r.deployment, 0), getattr(r, field))
        return sum(most.values())

    async def commit(self, expected: str | None, version: str) -> str | None:
        """Make ``version`` active if the active one is still ``expected`` (or unset: a
        restarted coordinator); returns the active version after the call."""
        if self.active in (expected, None):
            compacted = version == self.compactions.proposed
            self.active = version
            self.compactions.committed(version)
            if compacted and self.index_uri is not None:
                asyncio.get_running_loop().create_task(self._retire_log_later())
        return self.active

    async def _retire_log_later(self, wait_s: float = RETIRE_LOG_AFTER_S) -> None:
        """Once replicas have dropped the versions before a compaction, delete the log
        segments every version still held includes (``MutationLog.retire``)."""
        await asyncio.sleep(wait_s)
        try:
            self.retired = await asyncio.to_thread(self._retire_log)
        except Exception as exc:  # retried after the next compaction; never fatal
            self.retired = {"error": repr(exc)[:300]}
            log.warning("log retirement failed: %r", exc)

    def _retire_log(self) -> dict[str, Any]:
        now = time.monotonic()
        held = {v for r in self.reports.values() if r.fresh(now) for v in r.loaded}
        held |= {self.active} if self.active else set()
        assert self.index_uri is not None
        floor = min(open_version(self.index_uri, v)[1].base_sequence for v in held)
        gone = self.writer().log.retire(floor)
        log.info("retired %d log segments at or below sequence %d", gone, floor)
        return {"upto": floor, "segments": gone, "versions_held": sorted(held)}

    async def view(self) -> dict[str, Any]:
        """The active version and the fresh reports (``Report`` objects, by replica id)."""
        now = time.monotonic()
        self.reports = {r: rep for r, rep in self.reports.items() if rep.fresh(now)}
        return {
            "active": self.active,
            "proposed": self.compactions.proposed,
            "reports": dict(self.reports),
        }

    async def compaction(self) -> dict[str, Any]:
        return {**self.compactions.status(), "log_retired": self.retired}
