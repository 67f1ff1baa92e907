"""Node loss: a Ray cluster of a head and two worker nodes on this machine
(``ray.cluster_utils.Cluster``), shard replicas (2 per shard) spread over the workers, the
router on the head; one worker node is removed under load, then a node comes back.

The drill runs in its own process (a second Ray cluster cannot share this test session's);
it prints one JSON line that the test checks and RELIABILITY.md records.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.deployments.conftest import run_drill

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def drill(index_uri: str) -> dict:
    import numpy as np
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from deployments.client import VsearchClient
    from deployments.local import deploy, free_port

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head": 1}, "include_dashboard": False},
    )
    workers = [cluster.add_node(num_cpus=1, resources={"worker": 1}) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    shard = {"num_replicas": 2, "resources": {"worker": 0.01}}
    deploy("nodes", {"index_uri": index_uri, "shard": shard, "router_resources": {"head": 0.01}})
    client = VsearchClient("nodes")
    xq = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    stats = {"ok": 0, "failed": 0, "degraded": 0, "errors": []}
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                res = client.search(xq, 5, deadline_ms=10_000)
                stats["ok"] += 1
                stats["degraded"] += int(res.degraded)
            except Exception as exc:  # every failure is counted
                stats["failed"] += 1
                stats["errors"].append(repr(exc)[:200])

    def replica_nodes() -> list[str]:
        """The node of every live shard replica (asked of each replica actor)."""
        nodes = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if not entry["name"].startswith("SERVE_REPLICA::nodes#shard"):
                continue
            try:
                actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
                where = actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
                nodes.append(ray.get(where, timeout=2))
            except Exception:  # dead or unreachable: not live
                continue
        return nodes

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    lost = workers[0].node_id
    on_lost = replica_nodes().count(lost)
    before = stats["ok"]
    cluster.remove_node(workers[0])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        nodes = replica_nodes()
        if len(nodes) == 6 and lost not in nodes:
            break
        time.sleep(0.5)
    recovered_s = time.monotonic() - t0
    time.sleep(max(0.0, 10 - recovered_s))  # load keeps running at least 10 s after the loss
    during = stats["ok"] - before
    cluster.add_node(num_cpus=1, resources={"worker": 1})  # the node comes back
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    out = {
        "answered": stats["ok"],
        "failed": stats["failed"],
        "degraded": stats["degraded"],
        "answered_after_loss": during,
        "replicas_back_s": round(recovered_s, 1),
        "replicas_on_lost_node": on_lost,
        "replicas_running": len(replica_nodes()),
        "errors": stats["errors"][:3],
    }
    ray.shutdown()
    cluster.shutdown()
    return out


def test_node_loss_keeps_coverage_and_recovers(indexes):
    result = run_drill("tests.deployments.test_node_loss", str(indexes["root"] / "flat"))
    print(f"\nnode loss: {result}")
    assert result["failed"] == 0, result["errors"]
    assert result["degraded"] == 0  # min_coverage 1: every answer covered every shard
    assert result["replicas_on_lost_node"] >= 1  # the loss did hit the service
    assert result["answered_after_loss"] > 0 and result["replicas_back_s"] < 120
    assert result["replicas_running"] == 6
