"""Which index version a router pins new requests to, and when it moves to the next one.

``VersionTracker`` holds the active version's planner and the next one's, commits the next
through the coordinator once every running shard replica holds it (``deployments.swap``),
adopts commits made by other routers, and keeps what health and stats report. It talks to
the coordinator and to Serve through the callables it is given, so it runs without Ray in
tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from deployments.swap import Prepare, failures, prepare_state, uncovered
from shards.errors import IndexLoadError
from shards.planner import QueryPlanner

log = logging.getLogger("ray.serve")
SYNC_S, SWAP_SYNC_S = 5.0, 0.25  # coordinator polling, idle and during a swap
SYNC_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0  # health asks the coordinator itself: a short wait, then 'degraded'

# (version or None for CURRENT, default params) -> the planner of that version
OpenPlanner = Callable[[str | None, dict[str, Any]], QueryPlanner]
# (coordinator method name, *args) -> its answer
CallCoordinator = Callable[..., Awaitable[Any]]
# running replicas per shard deployment
Running = Callable[[], dict[str, int]]


class VersionTracker:
    """The active and next version of one router, and the state of the last swap."""

    def __init__(
        self,
        open_planner: OpenPlanner,
        coordinator: CallCoordinator,
        running: Running,
        wanted: str | None,
        defaults: dict[str, Any],
        made_from: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.open_planner, self.coordinator, self.running = open_planner, coordinator, running
        self.made_from = made_from
        self.wanted, self.defaults = wanted, dict(defaults)
        self.active: QueryPlanner | None = None  # the version every new request is pinned to
        self.next: QueryPlanner | None = None  # being prepared by the shard replicas
        self.error: str | None = None  # the router's own problem (manifest unreadable)
        self.swap: dict[str, Any] = {}  # the last swap: version, state, why
        self.reported: list[str] = []  # failures the replicas report
        self._task: asyncio.Task | None = None

    @property
    def planner(self) -> QueryPlanner:
        """The active version's planner (IndexLoadError while there is none)."""
        if self.active is None:
            raise IndexLoadError(self.error or "the index manifest is not loaded")
        return self.active

    def problems(self) -> list[str]:
        """Everything that makes health 'degraded', for people."""
        problems = ([self.error] if self.error else []) + self.reported
        if self.swap.get("state") in (Prepare.REFUSED, Prepare.FAILED):
            problems.append(self.swap["why"])
        return problems

    async def current_problems(self, deployments: Iterable[str]) -> list[str]:
        """``problems()`` from the replicas' reports as the coordinator holds them now, not
        as of the last sync (up to ``SYNC_S`` old), and each shard deployment of
        ``deployments`` that no replica reports holding the active version: health is not
        'ok' while a shard cannot answer. One coordinator call, no fan-out."""
        try:
            view = await asyncio.wait_for(self.coordinator("view"), HEALTH_TIMEOUT_S)
        except Exception as exc:  # the coordinator restarts: that is a problem too
            return [*self.problems(), f"the coordinator did not answer: {exc!r}"]
        reports = view["reports"]
        self.reported = failures(reports)
        mine = self.active.manifest.index_version if self.active is not None else None
        version = view["active"] or mine
        if version is None:
            return self.problems()
        explained = {r.deployment for r in reports.values() if r.failed}  # said why already
        missing = [
            f"{d}: no replica reports holding the active version {version}"
            for d in uncovered(version, deployments, reports)
            if d not in explained
        ]
        return self.problems() + missing

    async def configure(self, wanted: str | None, defaults: dict[str, Any]) -> None:
        """The operator wants ``wanted`` with ``defaults``: it becomes the next version.

        The first version is active at once (there is nothing to mix it with); a later one
        after every shard replica holds it. A version with another layout is refused.
        """
        self.wanted, self.defaults = wanted, dict(defaults)
        await self._want()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def _open(self, version: str | None) -> QueryPlanner:
        return await asyncio.to_thread(self.open_planner, version, self.defaults)

    async def _want(self) -> None:
        try:
            planner = await self._open(self.wanted)
        except Exception as exc:  # keep serving the active version, say why
            self.error = f"cannot open version {self.wanted or 'CURRENT'}: {exc}"
            log.error(self.error)
            return
        self.error = None
        version = planner.manifest.index_version
        if self.active is None:
            start = await self._start_version(version)
            active = await self.coordinator("commit", None, start)
            self.active = planner if active == version else await self._adopt(active)
            if active != version and not await self._made_from(active, version):
                self._next(planner)
            return
        mine = self.active.manifest.index_version
        if version == mine:
            # new default params, or back to the active version: no swap is pending
            self.active, self.next, self.swap = planner, None, {}
            return
        if await self._made_from(mine, version):
            # the configured version was compacted online into the active one: keep it
            # (with the configured default params), swap nowhere
            self.active, self.next, self.swap = await self._open(mine), None, {}
            return
        self._next(planner)

    def _next(self, planner: QueryPlanner) -> None:
        assert self.active is not None
        version = planner.manifest.index_version
        why = self.active.manifest.layout_change(planner.manifest)
        if why is not None:
            self.next = None
            self.swap = {"version": version, "state": Prepare.REFUSED.value, "why": why}
            log.error("swap refused: %s", why)
            return
        self.next = planner
        self.swap = {"version": version, "state": Prepare.WAITING.value, "why": "started"}

    async def _start_version(self, version: str) -> str:
        """What a starting router commits when the coordinator names no active version: the
        configured ``version``, unless every replica reports holding a version made from it
        (the app moved on, by online compactions or re-tunes, and then its coordinator
        restarted): the latest of those. Committing the configured one would pin every
        router back to a version the replicas have retired."""
        view = await asyncio.wait_for(self.coordinator("view"), SYNC_TIMEOUT_S)
        reports = list(view["reports"].values())
        if view["active"] is not None or not reports:
            return version
        held = set.intersection(*(set(r.loaded) for r in reports)) - {version}
        later = [v for v in sorted(held) if await self._made_from(v, version)]
        for v in later:  # the one made from every other
            if await self._made_from_all(v, later):
                log.warning(
                    "router: the coordinator names no active version; every replica holds "
                    "%s, made from the configured %s: committing it",
                    v,
                    version,
                )
                return v
        return version

    async def _made_from_all(self, version: str, others: list[str]) -> bool:
        for other in others:
            if other != version and not await self._made_from(version, other):
                return False
        return True

    async def _made_from(self, version: str | None, ancestor: str) -> bool:
        """``version`` was made from ``ancestor`` (an online compaction of it): a router that
        starts with the old version configured keeps the newer active one."""
        if version is None or self.made_from is None:
            return False
        return await asyncio.to_thread(self.made_from, version, ancestor)

    async def _adopt(self, version: str | None) -> QueryPlanner:
        """The planner of ``version`` (committed elsewhere), reusing ``next`` when it is it."""
        if self.next is not None and self.next.manifest.index_version == version:
            planner, self.next = self.next, None
            return planner
        return await self._open(version)

    async def _sync_forever(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception as exc:  # the next round tries again; say why meanwhile
                log.warning("router: coordinator sync failed: %r", exc)
            await asyncio.sleep(SWAP_SYNC_S if self.next is not None else SYNC_S)

    async def sync(self) -> None:
        """One round: adopt a commit made elsewhere, re-assert the active version to a
        restarted coordinator, and commit the next version once every replica holds it."""
        if self.active is None:
            if self.wanted is not None or self.error is not None:
                await self._want()  # the manifest could not be read yet: retry
            return
        view = await asyncio.wait_for(self.coordinator("view"), SYNC_TIMEOUT_S)
        mine = self.active.manifest.index_version
        if view["active"] is None:
            await self.coordinator("commit", None, mine)
        elif view["active"] != mine:
            self.active = await self._adopt(view["active"])
        proposed = view.get("proposed")
        pending = self.next.manifest.index_version if self.next is not None else None
        if proposed is not None and proposed not in (pending, self.active.manifest.index_version):
            self.wanted = proposed  # a compaction published it: swap to it as usual
            await self._want()
        reports = view["reports"]
        self.reported = failures(reports)
        if self.next is None:
            return
        version = self.next.manifest.index_version
        state, why = prepare_state(version, await asyncio.to_thread(self.running), reports)
        self.swap = {"version": version, "state": state.value, "why": why}
        if state is Prepare.READY:
            now = await self.coordinator("commit", mine, version)
            self.active = await self._adopt(now)
            log.info("router: version %s is active", now)
