"""Routers that hold the shards themselves (``shard.in_router``) on a real local Ray: no
shard deployment, exact answers over HTTP and the handle, writes under searches equal brute
force, and a live swap that commits once every router replica holds the next version."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from deployments.config import AppArgs
from deployments.versions import swap_overrides
from shards import ShardedIndex
from tests.conftest import clustered
from tests.deployments.conftest import LoadThreads, deploy
from tests.deployments.test_faults import wait_for
from tests.deployments.test_metrics import samples
from tests.deployments.test_writes import Writers, copy_flat, exact, search
from tests.shards.helpers import assert_same_knn

WRITES = 120


@pytest.mark.parametrize(
    "shard",
    [
        {"num_replicas": 2},
        {"autoscaling": {"max_replicas": 3}},
        {"shards_per_replica": 2},
        {"max_ongoing_requests": 8},
    ],
)
def test_settings_in_router_would_ignore_are_refused(shard):
    with pytest.raises(ValidationError, match="in_router: the router's replicas hold"):
        AppArgs(index_uri="x", shard={"in_router": True, **shard})


def test_in_router_batches_are_checked_against_the_routers_limit():
    with pytest.raises(ValidationError, match="router_max_ongoing_requests 8"):
        AppArgs(
            index_uri="x",
            shard={"in_router": True, "max_batch_size": 16},
            router_max_ongoing_requests=8,
        )
    # the router's own settings are what hold: a batch past the shard default is fine
    AppArgs(index_uri="x", shard={"in_router": True, "max_batch_size": 48})


def test_in_router_swap_overrides_name_only_the_router():
    over = swap_overrides(3, "v2", {"nprobe": 4}, in_router=True)
    assert [d["name"] for d in over] == ["router"]
    assert over[0]["user_config"] == {"index_version": "v2", "default_params": {"nprobe": 4}}


@pytest.mark.ray
@pytest.mark.slow
def test_routers_holding_the_shards_answer_exactly_through_writes_and_a_swap(
    serve_base, indexes, tmp_path
):
    from ray import serve

    from deployments.client import VsearchClient

    root, xb, ids = copy_flat(indexes, tmp_path)
    shard = {"in_router": True, "search_slots": 1}  # requests queue behind one search
    args = {"index_uri": str(root), "shard": shard, "router_replicas": 2}
    deploy("inrouter", args)
    url = f"{serve_base}/inrouter"
    deployments = serve.status().applications["inrouter"].deployments
    assert set(deployments) == {"router", "coordinator"}  # no shard deployment, one hop
    xq = clustered(40, 16, seed=31)
    live = {int(i): v for i, v in zip(ids, xb, strict=True)}
    (Dref, Iref), tol = exact(live, xq, 10)
    for _ in range(4):  # both router replicas
        assert_same_knn(Dref, Iref, *search(url, xq)[:2], tol)
    handle = VsearchClient("inrouter")
    res = handle.search(xq, 10)
    assert_same_knn(Dref, Iref, res.D, res.I, tol)
    stats = httpx.get(f"{url}/v1/stats").json()
    assert sorted(s["shard"] for s in stats["shards"]) == [0, 1, 2]
    assert httpx.get(f"{url}/v1/health").json() == {"status": "ok"}

    # concurrent requests that queue behind the search running are merged into one search
    # (deployments.coalesce): each still gets exactly its own rows' answers. A filter that
    # every row matches keeps them off the event loop's inline path (filtered searches
    # never run there), and 100 rows let two share a sub-batch of 256.
    rows, callers = 100, 8
    everything = {"tag": {"$ne": "no such tag"}}
    many = clustered(callers * rows, 16, seed=32)
    (Dmany, Imany), tol_many = exact(live, many, 10)
    for _ in range(3):
        got: dict[int, tuple] = {}
        start = threading.Barrier(callers)

        def call(i: int, got=got, start=start) -> None:
            start.wait()
            got[i] = search(url, many[i::callers], filter=everything)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(callers):
            assert_same_knn(Dmany[i::callers], Imany[i::callers], *got[i][:2], tol_many)

    def merged() -> bool:  # a search that answered several requests at once, exported
        text = httpx.get(f"{url}/metrics", timeout=30).text
        name = "ray_vsearch_shard_batch_requests_bucket"
        buckets = samples(text, name, "inrouter")
        alone = sum(b.value for b in buckets if float(b.labels["le"]) == 1.0)
        every = sum(b.value for b in buckets if b.labels["le"] == "+Inf")
        return alone < every

    wait_for(merged, 30)

    # writes under searches: every answer after them equals brute force over the live set
    failed: list[str] = []

    class Searches(LoadThreads):
        def run(self) -> None:
            while not self.stop.is_set():
                r = httpx.post(f"{url}/v1/search", json={"vectors": xq[:4].tolist()}, timeout=30)
                if r.status_code != 200:
                    failed.append(r.text)

    with Searches(1), Writers(url, ids[100:], threads=3, limit=WRITES) as writers:
        wait_for(lambda: not any(t.is_alive() for t in writers.threads), 120)
    assert writers.failed == [] and failed == [], (writers.failed[:3], failed[:3])
    last = max(a[0] for a in writers.acked)
    (Dref, Iref), tol = exact(writers.expected(xb, ids), xq, 10)
    for _ in range(4):
        D_, I_, body = search(url, xq, min_sequence=last)
        assert body["sequence"] >= last
        assert_same_knn(Dref, Iref, D_, I_, tol)

    # a live swap: the compacted version, committed once both router replicas hold it
    v2 = ShardedIndex.open(str(root)).compact().index_version
    deploy("inrouter", args, swap_overrides(3, v2, in_router=True))
    # each router replica adopts the commit on its own (its next report): wait until
    # several answers in a row, from both, come from v2; each answer names its version
    deadline, in_a_row = time.time() + 60, 0
    while time.time() < deadline and in_a_row < 8:
        fresh = search(url, xq[:1])[2]["index_version"] == v2
        in_a_row = in_a_row + 1 if fresh else 0
        time.sleep(0.05 if fresh else 0.2)
    D_, I_, body = search(url, xq)
    assert body["index_version"] == v2
    assert_same_knn(Dref, Iref, D_, I_, tol)

    # each router replica's shards learn the commit on their next report (health checks,
    # every 5 s): stats converge on v2 within a few of them
    def converged() -> bool:
        stats = httpx.get(f"{url}/v1/stats", timeout=30).json()
        return stats["problems"] == [] and all(s["index_version"] == v2 for s in stats["shards"])

    for _ in range(4):  # both router replicas say so
        wait_for(converged, 30)


def _deployments(args: dict) -> dict:
    """The deployments ``build_app(args)`` makes, by name (nothing deployed)."""
    from deployments.app import build_app

    router = build_app(args)._bound_deployment
    shards = router.init_args[0] or []
    found = {d.name: d for d in (s._bound_deployment for s in shards)}
    return {"router": router, **found, "coordinator": router.init_args[4]._bound_deployment}


def test_the_app_graph_holds_shards_in_the_router_and_logs_no_access_lines(tmp_path):
    from shards import BuildOptions, VectorSource, build_index

    np.save(tmp_path / "xb.npy", clustered(300, 8, seed=3))
    opts = BuildOptions(num_shards=3, index="Flat", progress=False)
    build_index(VectorSource(str(tmp_path / "xb.npy")), str(tmp_path / "idx"), opts)
    uri = str(tmp_path / "idx")
    apart = _deployments({"index_uri": uri})
    assert set(apart) == {"router", "shard-0", "shard-1", "shard-2", "coordinator"}
    for d in apart.values():  # Serve's access log is off unless asked for
        assert d._deployment_config.logging_config["enable_access_log"] is False
    shard = {"in_router": True, "num_cpus": 0.5, "resources": {"big": 1}, "omp_threads": 2}
    held = _deployments({"index_uri": uri, "shard": shard, "router_resources": {"edge": 1}})
    assert set(held) == {"router", "coordinator"}
    router = held["router"]
    assert router.init_args[1] == [[0, 1, 2]]  # one group: every shard
    actor = router.ray_actor_options
    assert actor["num_cpus"] == 0.5 and actor["resources"] == {"edge": 1, "big": 1}
    assert actor["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"
    logged = _deployments({"index_uri": uri, "access_log": True})
    assert all(d._deployment_config.logging_config["enable_access_log"] for d in logged.values())
