"""The two-phase version swap as pure functions over what replicas report (no Ray here).

Phases: every replica of every shard deployment loads and verifies the next version beside
the active one (prepare); when all running replicas hold it, the router makes it active
(commit); replicas drop the old one once no request pinned to it is in flight (retire).
A replica's report says which versions it holds and which it failed to load; reports older
than ``REPORT_TTL_S`` are from replicas that are gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

REPORT_TTL_S = 20.0  # replicas report on every health check (5 s) and after every load
RETIRE_AFTER_S = 5.0  # an old version stays loaded this long after the commit is seen


class Prepare(StrEnum):
    """Where the prepare phase of a version stands, over all shard deployments."""

    READY = "ready"  # every running replica holds it: commit
    WAITING = "waiting"  # some replica is still loading it (or has not reported)
    FAILED = "failed"  # a replica could not load it: the active version stays
    REFUSED = "refused"  # another layout (shards, partition, dim, metric): never prepared


@dataclass(frozen=True)
class Report:
    """What one shard replica holds, as it last said."""

    deployment: str
    loaded: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)  # version -> why it did not load
    changes: int = 0  # delta rows + tombstones of its active version (compaction trigger)
    delta_rows: int = 0  # rows in its active version's delta (the write bound)
    sequence: int = 0  # the mutation sequence its versions have applied
    at: float = field(default_factory=time.monotonic)

    def fresh(self, now: float) -> bool:
        return now - self.at <= REPORT_TTL_S


def prepare_state(
    version: str, running: dict[str, int], reports: dict[str, Report]
) -> tuple[Prepare, str]:
    """The prepare phase of ``version``: ``(state, why)``.

    ``running``: running replicas per shard deployment (every deployment the app has);
    ``reports``: the last fresh report of each replica, by replica id. Every fresh report
    must hold it too, not only as many as are running: a replica that stopped keeps its
    report fresh for ``REPORT_TTL_S``, and counted in place of a running replacement that
    has not loaded ``version`` yet it would commit a swap that replacement cannot answer.
    """
    waiting = []
    for deployment, count in sorted(running.items()):
        mine = [r for r in reports.values() if r.deployment == deployment]
        for r in mine:
            if version in r.failed:
                return Prepare.FAILED, f"{deployment}: {r.failed[version]}"
        have = sum(version in r.loaded for r in mine)
        if count < 1 or have < count or have < len(mine):
            lacking = f" ({len(mine) - have} reporting without it)" if have < len(mine) else ""
            waiting.append(f"{deployment} {have}/{count}{lacking}")
    if waiting:
        return Prepare.WAITING, "replicas holding it: " + ", ".join(waiting)
    return Prepare.READY, "every running replica holds it"


def uncovered(version: str, deployments: Iterable[str], reports: dict[str, Report]) -> list[str]:
    """The shard deployments (of ``deployments``) no fresh report says holds ``version``:
    their shards cannot answer from it."""
    holding = {r.deployment for r in reports.values() if version in r.loaded}
    return [d for d in deployments if d not in holding]


def failures(reports: dict[str, Report]) -> list[str]:
    """Why replicas could not load versions, each reason once, for people."""
    return sorted({why for r in reports.values() for why in r.failed.values()})


def retirable(
    version: str, active: str | None, wanted: str | None, in_flight: int, since: float | None
) -> bool:
    """A replica may drop ``version``: neither active nor wanted, nothing in flight, and the
    commit that replaced it was seen at least ``RETIRE_AFTER_S`` ago (routers still sending
    it catch up within that)."""
    if version in (active, wanted) or active is None or in_flight > 0 or since is None:
        return False
    return time.monotonic() - since >= RETIRE_AFTER_S
