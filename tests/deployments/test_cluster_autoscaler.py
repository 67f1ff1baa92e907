"""Ray's cluster autoscaler adds the nodes shard replicas need and removes them when idle.

Ray's own fake multi-node provider (``ray.autoscaler._private.fake_multi_node``) launches
"nodes" as local raylets when resource demand does not fit. The head has one CPU and no
``shard_slot``; each worker node type has one ``shard_slot``, and every shard replica asks
for one: the same shape as ``cluster.yaml``, where the head has no GPU and each replica asks
for a GPU that only worker nodes have. Deploying two shard replicas must make the
autoscaler start two nodes, the replicas start there and answer exactly; deleting the
application must leave the nodes idle and the autoscaler remove them.

The drill runs in its own process (a second Ray cluster cannot share this test session's)
and prints one JSON line that the test checks and RELIABILITY.md records.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from tests.deployments.conftest import run_drill

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _config(gcs_address: str) -> dict:
    """The fake provider's cluster config (Ray ships the code, not its example file)."""
    return {
        "cluster_name": "vsearch-fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.05,  # 3 s: the drill waits for the removal
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "shard_worker": {
                "resources": {"CPU": 1, "shard_slot": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _workers() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("shard_slot")]


def drill(index_uri: str) -> dict:
    """Start the autoscaling cluster, deploy, search, undeploy; measure each step."""
    import numpy as np
    import ray
    from ray import serve

    from deployments.client import VsearchClient
    from deployments.local import deploy, free_port, undeploy
    from shards import ShardedIndex

    ip = ray._private.services.get_node_ip_address()
    port = free_port()
    gcs = f"{ip}:{port}"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(_config(gcs), f)
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    start = [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1"]
    start += [f"--autoscaling-config={f.name}", "--include-dashboard=false"]
    subprocess.run(start, env=env, check=True, capture_output=True)
    out: dict = {}
    try:
        ray.init(address=gcs, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        out["workers_before"] = len(_workers())
        t0 = time.monotonic()
        shard = {"num_replicas": 2, "resources": {"shard_slot": 1}}
        deploy("auto", {"index_uri": index_uri, "shard": shard})  # waits until it runs
        out["serving_after_s"] = round(time.monotonic() - t0, 1)
        out["workers_serving"] = len(_workers())
        xq = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
        got = VsearchClient("auto").search(xq, 10)
        expected = ShardedIndex.open(index_uri).search(xq, 10)[1]
        out["answers_exact"] = bool(np.array_equal(got.I, expected))
        out["replica_nodes"] = len(_replica_nodes("auto"))
        t1 = time.monotonic()
        undeploy("auto")
        while _workers() and time.monotonic() - t1 < 120:
            time.sleep(0.5)
        out["removed_after_s"] = round(time.monotonic() - t1, 1)
        out["workers_after"] = len(_workers())
    finally:
        ray.shutdown()
        _kill_cluster(port)
    return out


def _replica_nodes(app: str) -> set[str]:
    """The nodes the app's shard replicas run on (asked of each replica actor)."""
    import ray

    nodes = set()
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(f"SERVE_REPLICA::{app}#shard"):
            actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
            where = actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
            nodes.add(ray.get(where, timeout=10))
    return nodes


def _kill_cluster(port: int) -> None:
    """Stop this cluster's processes only (``ray stop`` would stop every Ray on the machine)."""
    import psutil

    mark = f":{port}"
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if mark in cmd or f"--gcs_server_port={port}" in cmd or f"--gcs-address={mark}" in cmd:
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_autoscaler_adds_nodes_for_replicas_and_removes_idle_ones(indexes):
    result = run_drill("tests.deployments.test_cluster_autoscaler", str(indexes["root"] / "tiny"))
    print(f"\ncluster autoscaler: {result}")
    assert result["workers_before"] == 0
    assert result["workers_serving"] == 2 and result["replica_nodes"] == 2
    assert result["answers_exact"] is True
    assert result["workers_after"] == 0
