"""The router's version tracker without Ray: the real ``Coordinator`` class, plain calls."""

from __future__ import annotations

import asyncio

import numpy as np

from deployments.coordinator import Coordinator
from deployments.tracker import VersionTracker
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards.artefact import open_version
from shards.planner import QueryPlanner
from tests.conftest import clustered


def open_planner(root: str):
    def open_(version, defaults):
        return QueryPlanner(open_version(root, version)[1])

    return open_


def tracker(root: str, coordinator: Coordinator, running: dict[str, int], wanted: str):
    async def call(method, *args):
        return await getattr(coordinator, method)(*args)

    return VersionTracker(open_planner(root), call, lambda: running, wanted, {})


def versions(tmp_path):
    """v1, v2 (v1 compacted) with 2 shards, and v8 with 8 shards, in one root."""
    root = str(tmp_path / "idx")
    np.save(tmp_path / "xb.npy", clustered(800, 8, seed=3))
    src = VectorSource(str(tmp_path / "xb.npy"))
    v1 = build_index(src, root, BuildOptions(index="Flat", num_shards=2, progress=False))
    index = ShardedIndex.open(root, log=False)
    index.delete([1])
    v2 = index.compact()
    v8 = build_index(src, root, BuildOptions(index="Flat", num_shards=8, progress=False))
    return root, v1.index_version, v2.index_version, v8.index_version


def test_commit_waits_for_every_replica_and_refuses_another_layout(tmp_path):
    root, v1, v2, v8 = versions(tmp_path)
    coord = Coordinator()
    running = {"shard-0": 2, "shard-1": 1}

    async def drill():
        t = tracker(root, coord, running, v1)
        await t._want()  # the first version: active at once
        assert t.planner.manifest.index_version == v1 and coord.active == v1
        for replica, dep in (("a", "shard-0"), ("b", "shard-0"), ("c", "shard-1")):
            await coord.report(replica, dep, [v1], {})
        t.wanted = v2
        await t._want()
        await t.sync()
        assert t.swap["state"] == "waiting" and t.planner.manifest.index_version == v1
        await coord.report("a", "shard-0", [v1, v2], {})
        await coord.report("c", "shard-1", [v1, v2], {})
        await t.sync()  # replica b has not got it yet
        assert t.swap["state"] == "waiting" and coord.active == v1
        await coord.report("b", "shard-0", [v1, v2], {})
        await t.sync()
        assert t.planner.manifest.index_version == v2 and coord.active == v2
        other = tracker(root, coord, running, v1)  # a second router, started on v1
        await other._want()
        assert other.planner.manifest.index_version == v2  # adopts the commit
        t.wanted = v8
        await t._want()
        assert t.swap["state"] == "refused" and "num_shards 2 -> 8" in t.swap["why"]
        assert t.next is None and t.problems() == [t.swap["why"]]
        t.wanted = v2  # back to the active version: nothing pending, nothing wrong
        await t._want()
        assert t.swap == {} and t.problems() == []

    asyncio.run(drill())


def test_a_failed_prepare_keeps_the_active_version(tmp_path):
    root, v1, v2, _ = versions(tmp_path)
    coord = Coordinator()

    async def drill():
        t = tracker(root, coord, {"shard-0": 1, "shard-1": 1}, v1)
        await t._want()
        await coord.report("a", "shard-0", [v1, v2], {})
        await coord.report("b", "shard-1", [v1], {v2: "cannot load version: truncated"})
        t.wanted = v2
        await t._want()
        await t.sync()
        assert t.swap["state"] == "failed" and coord.active == v1
        assert t.planner.manifest.index_version == v1
        assert "cannot load version: truncated" in t.problems()

    asyncio.run(drill())


def test_a_compacted_version_is_proposed_committed_and_kept(tmp_path):
    """An online compaction proposes v2 (made from v1): the router prepares and commits it
    like any swap; a router (re)started with v1 configured keeps v2, and so does a
    redeploy of the same config (no swap back)."""
    from shards.artefact import descends_from

    root, v1, v2, _ = versions(tmp_path)
    coord = Coordinator()
    running = {"shard-0": 1, "shard-1": 1}

    def with_lineage(wanted):
        t = tracker(root, coord, running, wanted)
        t.made_from = lambda version, ancestor: descends_from(root, version, ancestor)
        return t

    async def drill():
        t = with_lineage(v1)
        await t._want()
        coord.compactions.proposed = v2  # what a finished compaction leaves
        await t.sync()
        assert t.next is not None and t.next.manifest.index_version == v2
        for replica, dep in (("a", "shard-0"), ("c", "shard-1")):
            await coord.report(replica, dep, [v1, v2], {})
        await t.sync()
        assert coord.active == v2 and coord.compactions.proposed is None
        restarted = with_lineage(v1)
        await restarted._want()
        assert restarted.planner.manifest.index_version == v2 and restarted.next is None
        await t.configure(v1, {})  # the same config deployed again
        assert t.planner.manifest.index_version == v2 and t.next is None and t.swap == {}

    asyncio.run(drill())


def test_health_reads_the_reports_now_and_names_shards_without_the_version(tmp_path):
    """Health is not 'ok' between two syncs while a replica has reported that it cannot load
    (a corrupt file at start-up), nor while a shard has no replica holding the active
    version; a coordinator that does not answer is a problem too."""
    root, v1, _, _ = versions(tmp_path)
    coord = Coordinator()
    deployments = ["shard-0", "shard-1"]

    async def drill():
        t = tracker(root, coord, {"shard-0": 1, "shard-1": 1}, v1)
        await t._want()
        await coord.report("a", "shard-0", [v1], {})
        await t.sync()
        assert t.problems() == []  # as of this sync: nothing failed yet
        await coord.report("b", "shard-1", [], {v1: "cannot load shard-00001: truncated"})
        now = await t.current_problems(deployments)  # before the next sync
        assert now == ["cannot load shard-00001: truncated"]  # says why, not only that
        await coord.report("b", "shard-1", [], {})  # still loading (or its report is lost)
        now = await t.current_problems(deployments)
        assert now == [f"shard-1: no replica reports holding the active version {v1}"]
        await coord.report("b", "shard-1", [v1], {})  # the operator fixed the file
        assert await t.current_problems(deployments) == []

        async def silent(method, *args):
            await asyncio.sleep(10)

        t.coordinator = silent
        gone = await t.current_problems(deployments)
        assert len(gone) == 1 and "coordinator did not answer" in gone[0]

    asyncio.run(drill())


def test_a_router_starting_while_the_coordinator_restarts_keeps_the_apps_version(tmp_path):
    """The app moved from v1 to v2 (v1 compacted) and its coordinator restarted (it names
    no active version): a router starting with v1 configured committed v1, and every router
    then adopted it, although the replicas hold v2 and had retired v1."""
    from shards.artefact import descends_from

    root, v1, v2, _ = versions(tmp_path)
    coord = Coordinator()  # restarted: no active version yet

    async def call(method, *args):
        return await getattr(coord, method)(*args)

    def made_from(version, ancestor):
        return descends_from(root, version, ancestor)

    async def drill():
        for replica in ("a", "b"):
            await coord.report(replica, "shard-0", [v2], {})
        t = VersionTracker(open_planner(root), call, lambda: {"shard-0": 2}, v1, {}, made_from)
        await t._want()
        assert coord.active == v2 and t.planner.manifest.index_version == v2
        assert t.next is None and t.swap == {}  # v2 is v1 compacted: nothing to swap to

        fresh = Coordinator()  # no replica has reported yet: the configured version
        coord_calls = VersionTracker(
            open_planner(root),
            lambda method, *args: getattr(fresh, method)(*args),
            lambda: {},
            v1,
            {},
            made_from,
        )
        await coord_calls._want()
        assert fresh.active == v1

    asyncio.run(drill())
