"""Serve autoscaling under a load ramp: shard and router replicas go from their minimum up
while eight callers search, and back down once the load falls to one slow caller; no
request fails in either direction and every answer equals the in-process one.

The times to scale up and down are printed and recorded in RELIABILITY.md; Serve's delays
are shortened here (``upscale_delay_s``, ``downscale_delay_s``) so that the drill is short.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.deployments.conftest import LoadThreads, deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]
FAST = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 0.5, "downscale_delay_s": 2.0}
FAST.update(look_back_period_s=2.0, metrics_interval_s=0.5)


def running(app: str) -> dict[str, int]:
    """RUNNING replicas per deployment of ``app`` (the router and its shard deployments)."""
    from ray import serve

    deployments = serve.status().applications[app].deployments
    return {
        name: d.replica_states.get("RUNNING", 0)
        for name, d in deployments.items()
        if name == "router" or name.startswith("shard")
    }


def wait_for(app: str, want: int, timeout_s: float) -> float:
    """Seconds until every router and shard deployment has ``want`` RUNNING replicas."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if all(n == want for n in running(app).values()):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"{app}: replicas {running(app)} after {timeout_s} s, wanted {want}")


class Callers(LoadThreads):
    """Handle searches in a loop; counts answers, failures and wrong answers."""

    def __init__(self, threads: int, xq, expected, pause_s: float = 0.0) -> None:
        from deployments.client import VsearchClient

        super().__init__(threads)
        self.client, self.xq, self.expected, self.pause_s = (
            VsearchClient("scale"),
            xq,
            expected,
            pause_s,
        )
        self.ok = self.failed = self.wrong = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                res = self.client.search(self.xq, 10, deadline_ms=20_000)
                right = np.array_equal(res.I, self.expected)
                with self.lock:
                    self.ok += 1
                    self.wrong += int(not right)
            except Exception as exc:  # every failure is counted and shown
                with self.lock:
                    self.failed += 1
                    self.errors.append(repr(exc)[:300])
            if self.pause_s:
                time.sleep(self.pause_s)


def test_replicas_scale_up_under_load_and_down_after(serve_base, indexes):
    from shards import ShardedIndex

    root = indexes["root"]
    shard = {"autoscaling": {**FAST, "target_ongoing_requests": 1}}
    args = {
        "index_uri": str(root / "tiny"),
        "shard": shard,
        "router_autoscaling": {**FAST, "target_ongoing_requests": 2},
    }
    deploy("scale", args)
    assert all(n == 1 for n in running("scale").values()), running("scale")
    xq = indexes["xb"][:16] + 0.01
    expected = ShardedIndex.open(str(root / "tiny")).search(xq, 10)[1]
    with Callers(8, xq, expected) as ramp:
        up_s = wait_for("scale", 2, timeout_s=90)
        time.sleep(2)  # keep searching on the scaled-out deployments
    with Callers(1, xq, expected, pause_s=0.5) as trickle:
        down_s = wait_for("scale", 1, timeout_s=90)
        time.sleep(1)
    print(
        f"autoscaling: up to 2 router + 2 shard replicas in {up_s:.1f} s under 8 callers "
        f"({ramp.ok} answers), down to 1 + 1 in {down_s:.1f} s under 1 slow caller "
        f"({trickle.ok} answers)"
    )
    for calls in (ramp, trickle):
        assert calls.failed == 0, calls.errors[:5]
        assert calls.wrong == 0 and calls.ok > 0
