"""The coordinator deployment: the active index version of an app and what each replica holds.

One replica per app (soft state): shard replicas report the versions they hold after every
load and on every health check, routers commit a version by compare-and-swap. If it
restarts, the next reports and the routers' own active version rebuild it within seconds.
"""

from __future__ import annotations

import time
from typing import Any

from deployments.swap import Report


class Coordinator:
    """Holds ``active`` (the committed version) and the last report of every shard replica."""

    def __init__(self) -> None:
        self.active: str | None = None
        self.reports: dict[str, Report] = {}

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
