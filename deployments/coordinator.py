"""The coordinator deployment: the active index version of an app, what each replica holds,
and the app's one mutation log writer.

One replica per app. Versions are soft state: shard replicas report the versions they hold
after every load and on every health check, routers commit a version by compare-and-swap;
if it restarts, the next reports and the routers' own active version rebuild it within
seconds. Writes are hard state: each is acknowledged only once durable in the log
(``deployments.writer``), so a restarted coordinator finds the log's end in its files.
"""

from __future__ import annotations

import time
from typing import Any

from deployments.swap import Report
from deployments.writer import LogWriter
from shards.artefact import metadata_schema_of, open_version
from shards.log import Mutation, MutationLog


class Coordinator:
    """Holds ``active`` (the committed version) and the last report of every shard replica."""

    def __init__(self, index_uri: str | None = None) -> None:
        self.active: str | None = None
        self.reports: dict[str, Report] = {}
        self.index_uri = index_uri
        self._writer: LogWriter | None = None

    def writer(self) -> LogWriter:
        """The log writer, started on first use (reads the log's end and checks it)."""
        if self._writer is None:
            if self.index_uri is None:
                raise RuntimeError("this coordinator has no index to write to")
            store, manifest = open_version(self.index_uri)
            log_ = MutationLog(self.index_uri, manifest.dim, metadata_schema_of(store, manifest))
            self._writer = LogWriter(log_, manifest.base_sequence)
        return self._writer

    async def write(self, m: Mutation) -> int:
        """Log ``m`` durably; its sequence (``LogWriter.write``)."""
        return await self.writer().write(m)

    async def tail(self, after: int, wait_s: float) -> list[Mutation] | None:
        """What follows ``after`` in the log, or None: read the files (``LogWriter``)."""
        return await self.writer().tail_after(after, wait_s)

    async def log_state(self) -> dict[str, Any]:
        w = self.writer()
        return {"sequence": w.end, "error": None if w.error is None else w.error.message}

    async def report(
        self, replica: str, deployment: str, loaded: list[str], failed: dict[str, str]
    ) -> str | None:
        """Record what ``replica`` holds; returns the active version."""
        self.reports[replica] = Report(deployment, tuple(loaded), dict(failed))
        return self.active

    async def commit(self, expected: str | None, version: str) -> str | None:
        """Make ``version`` active if the active one is still ``expected`` (or unset: a
        restarted coordinator); returns the active version after the call."""
        if self.active in (expected, None):
            self.active = version
        return self.active

    async def view(self) -> dict[str, Any]:
        """The active version and the fresh reports (``Report`` objects, by replica id)."""
        now = time.monotonic()
        self.reports = {r: rep for r, rep in self.reports.items() if rep.fresh(now)}
        return {"active": self.active, "reports": dict(self.reports)}
