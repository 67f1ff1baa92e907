"""Live index version swaps under continuous queries (real Ray): nothing lost, failures visible."""

from __future__ import annotations

import os
import threading
import time

import httpx
import numpy as np
import pytest

from deployments.versions import swap_overrides
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from tests.deployments.conftest import deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def wait_for(url: str, ok, timeout_s: float = 30.0) -> dict:
    deadline = time.time() + timeout_s
    while True:
        body = httpx.get(url).json()
        if ok(body) or time.time() > deadline:
            return body
        time.sleep(0.2)


def test_swap_under_load_then_a_failing_swap(serve_base, indexes, tmp_path_factory):
    root = tmp_path_factory.mktemp("swap")
    xb = indexes["xb"][:3000]
    np.save(root / "xb.npy", xb)
    build_index(
        VectorSource(str(root / "xb.npy")),
        str(root / "idx"),
        BuildOptions(num_shards=2, index="Flat", progress=False),
    )
    v1 = ShardedIndex.open(str(root / "idx"), log=False)
    deploy("swap", {"index_uri": str(root / "idx")})
    gone = np.arange(0, 60)
    v1.delete(gone)
    v2 = v1.compact().index_version

    url = f"{serve_base}/swap/v1/search"
    stop, seen, failures, latencies = threading.Event(), [], [], []

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = client.post(url, json={"vectors": xb[:4].tolist(), "k": 5})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    seen.append(r.json()["index_version"])

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        deploy("swap", {"index_uri": str(root / "idx")}, swap_overrides(2, v2))
        deadline = time.time() + 60
        while time.time() < deadline and (not seen or seen[-1] != v2):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen[0] == v1.index_version and seen[-1] == v2
    print(
        f"{len(seen)} requests during the swap, versions seen: {sorted(set(seen))}, "
        f"max latency {max(latencies):.3f} s"
    )
    r = httpx.post(url, json={"vectors": xb[gone[:10]].tolist(), "k": 5})
    assert not np.isin(r.json()["ids"], gone).any()  # the new version has the deletes

    # a version with a corrupt shard file: its prepare fails, v2 stays active on every shard
    again = ShardedIndex.open(str(root / "idx"), v2, log=False)
    again.delete([100])
    v3 = again.compact()
    bad = os.path.join(root, "idx", v3.index_version, v3.shards[1].files["index"].path)
    with open(bad, "r+b") as f:
        f.truncate(100)
    deploy("swap", {"index_uri": str(root / "idx")}, swap_overrides(2, v3.index_version))
    stats = wait_for(f"{serve_base}/swap/v1/stats", lambda s: s["swap"].get("state") == "failed")
    assert stats["swap"]["state"] == "failed" and any(bad in p for p in stats["problems"])
    health = httpx.get(f"{serve_base}/swap/v1/health").json()
    assert health == {"status": "degraded"}  # the open route reveals nothing internal
    assert stats["index_version"] == v2 and all(s["index_version"] == v2 for s in stats["shards"])
    ready = httpx.get(f"{serve_base}/swap/v1/ready")  # still whole, from one version
    assert ready.status_code == 200 and ready.json()["index_version"] == v2
    r = httpx.post(url, json={"vectors": xb[:4].tolist(), "k": 5})
    assert r.status_code == 200 and r.json()["coverage"] == 1.0
    assert r.json()["index_version"] == v2
