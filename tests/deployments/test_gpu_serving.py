"""A shard replica on a GPU (markers gpu and ray; skipped without a GPU): served answers equal
in-process GPU search, and /v1/stats shows the device, cuVS and GPU memory. The CPU twin is
the whole of test_serving.py (device "cpu")."""

from __future__ import annotations

import httpx
import pytest

from tests.deployments.conftest import deploy

pytestmark = [pytest.mark.gpu, pytest.mark.ray]


def test_gpu_replica_serves_and_reports_its_device(serve_base, indexes):
    from deployments.client import VsearchClient
    from shards import ShardedIndex

    root = indexes["root"]
    shard = {"num_gpus": 1, "shards_per_replica": 3, "gpu": {"temp_memory_mb": 256}}
    deploy("gpu", {"index_uri": str(root / "flat"), "shard": shard})
    xq = indexes["xb"][:200] + 0.01
    local = ShardedIndex.open(str(root / "flat"))
    local.place("cuda:0")
    _, I = local.search(xq, 10)
    served = VsearchClient("gpu").search(xq, 10)
    assert (served.I == I).mean() > 0.99  # Flat: exact, ties aside
    stats = httpx.get(f"{serve_base}/gpu/v1/stats").json()["shards"]
    assert {s["device"] for s in stats} == {"cuda:0"}
    assert all(s["cuvs"] and s["gpu_index_bytes"] > 0 for s in stats)
    assert all(s["gpu_memory_used_bytes"] > 0 for s in stats)
