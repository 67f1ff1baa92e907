"""Versions published online: the next version built off the request path from the active
one, then swapped in by the two-phase swap. A compaction merges the log into the files; a
re-tune (asked for by the recall monitor, ``deployments.monitor``) measures the recall curve
again on live queries.

``compact_version`` and ``retune_version`` are the work (Ray tasks started by the
coordinator: their own process and memory, never a replica's); ``Compactions`` is the
coordinator's state of them (plain asyncio, tested without Ray): at most one at a time,
a compaction started by ``POST /v1/compact`` or when the shards report more changes than
``compact_after_changes``; the version it publishes is *proposed* to routers and replicas,
which prepare and commit it like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Launch = Callable[[str | None], Awaitable[dict[str, Any]]]


def compact_version(index_uri: str, version: str | None, retune: bool = False) -> dict[str, Any]:
    """Open ``version`` with its log, publish the compacted version (``retune``: then a
    re-tuned one made from it, for the target the index was tuned for); what it did."""
    from shards.index import ShardedIndex
    from shards.tune_existing import autotune_index

    t0 = time.perf_counter()
    index = ShardedIndex.open(index_uri, version)
    changes = index.changes
    manifest = index.compact()
    retuned_for = None
    if retune and index.knobs.names():  # an exact index has nothing to tune
        retuned_for = float((index.manifest.tuning or {}).get("target", 0.95))
        manifest = autotune_index(index_uri, manifest.index_version, target=retuned_for)
    return {
        "retuned_for": retuned_for,
        "version": manifest.index_version,
        "parent": version,
        "base_sequence": manifest.base_sequence,
        "changes": changes,
        "vectors": manifest.ntotal,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def retune_version(
    index_uri: str, version: str | None, queries: np.ndarray, target: float
) -> dict[str, Any]:
    """Measure ``version``'s recall curve on ``queries`` (recent live ones) over its live
    contents and publish it as the next version (same files, new curve and defaults for
    ``target``); what it did."""
    from shards.tune_existing import autotune_index

    t0 = time.perf_counter()
    manifest = autotune_index(
        index_uri,
        version,
        queries=queries,
        target=target,
        method=f"{len(queries)} live queries sampled by the recall monitor",
    )
    return {
        "retuned_for": target,
        "version": manifest.index_version,
        "parent": version,
        "queries": len(queries),
        "default_params": manifest.default_params,
        "seconds": round(time.perf_counter() - t0, 3),
    }


class Compactions:
    """At most one compaction at a time, and the version the last one proposes."""

    def __init__(
        self,
        launch: Launch,
        after_changes: int | None = None,
        on_done: Callable[[dict[str, Any]], None] | None = None,
        active: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.launch, self.after_changes, self.on_done = launch, after_changes, on_done
        self.active = active  # the app's active version now
        self.task: asyncio.Task | None = None
        self.proposed: str | None = None  # published by a compaction, not yet active
        self.last: dict[str, Any] = {}  # state of the last compaction, for stats
        self.count = 0

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(
        self, active: str | None, why: str, launch: Launch | None = None, kind: str = "compaction"
    ) -> dict[str, Any]:
        """Start compacting ``active`` (or another ``launch``: a re-tune) unless a job runs
        or a proposed version waits."""
        if self.running or self.proposed is not None:
            return self.status()
        self.last = {
            "state": "running",
            "kind": kind,
            "from": active,
            "why": why,
            "started": time.time(),
        }
        self.task = asyncio.get_running_loop().create_task(self._run(active, launch))
        return self.status()

    def maybe_start(self, active: str | None, changes: int) -> None:
        """Start one when the shards report at least ``after_changes`` changes."""
        if self.after_changes is not None and changes >= self.after_changes:
            self.start(active, f"{changes} changes since the version was built")

    async def _run(self, active: str | None, launch: Launch | None = None) -> None:
        try:
            done = await (launch or self.launch)(active)
        except Exception as exc:
            self.last = {**self.last, "state": "failed", "error": repr(exc)[:500]}
            log.error("%s of %s failed: %r", self.last["kind"], active, exc)
            if self.on_done is not None:
                self.on_done(self.last)
            return
        self.count += 1
        if self.active() != active:
            # another version went live meanwhile (an operator's swap): proposing this one
            # would swap back to older data, so it is left unused
            self.last = {**self.last, **done, "state": "stale", "active": self.active()}
            log.warning(
                "%s of %s is stale: %s is active now", self.last["kind"], active, self.active()
            )
        else:
            self.proposed = done["version"]
            self.last = {**self.last, **done, "state": "proposed"}
        if self.on_done is not None:
            self.on_done(self.last)

    def committed(self, version: str) -> None:
        """``version`` became active: a proposal it answers is done."""
        if version == self.proposed:
            self.proposed = None
            self.last = {**self.last, "state": "active"}

    def status(self) -> dict[str, Any]:
        return {**self.last, "proposed": self.proposed, "compactions": self.count}
