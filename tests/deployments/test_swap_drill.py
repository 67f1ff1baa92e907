"""The swap drill: 4 shards x 2 replicas under continuous HTTP load, six swaps in a row.

Swaps: a compaction (IVF), a rebuild as HNSW (the index type changes), a compaction of that,
a version whose shard 1 cannot load (refused at prepare: the old version stays active), a
good one after it, and a version with another layout (8 shards: refused). Every answer must
equal the in-process search of the version it names: an answer mixing versions, or one
searched with another version's knobs, differs from all of them.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from deployments.versions import swap_overrides
from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from tests.conftest import clustered
from tests.deployments.conftest import LoadThreads, deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]
K = 5


class HttpLoad(LoadThreads):
    """Threads posting the same queries until stopped; keeps (version, ids) of each answer."""

    def __init__(self, url: str, xq: np.ndarray, threads: int = 3) -> None:
        # a long deadline: on 2 shared cores the suite runs many apps at once, and the drill
        # checks which version answers, not how fast
        self.url, self.body = url, {"vectors": xq.tolist(), "k": K, "deadline_ms": 20_000}
        self.answers: list[tuple[str, list]] = []
        self.failures: list[tuple[int, str]] = []
        super().__init__(threads)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                r = client.post(self.url, json=self.body)
                if r.status_code != 200:
                    self.failures.append((r.status_code, f"{time.monotonic():.1f} {r.text}"))
                else:
                    body = r.json()
                    self.answers.append((body["index_version"], body["ids"]))


def wait_until(predicate, timeout_s: float = 90.0, what: str = "") -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.25)
    return time.monotonic() - t0


def test_swap_drill_under_http_load(serve_base, tmp_path):
    root = str(tmp_path / "idx")
    xb = clustered(4000, 16, seed=21)
    np.save(tmp_path / "xb.npy", xb)
    src = VectorSource(str(tmp_path / "xb.npy"))
    opts = {"num_shards": 4, "progress": False, "default_recall": 0.9}
    v1 = build_index(src, root, BuildOptions(index="IVF16,Flat", **opts)).index_version
    xq = clustered(6, 16, seed=22)
    versions = [v1]

    def compacted(parent: str, gone) -> str:
        """``parent`` with ``gone`` and the queries' nearest ids deleted (so it answers
        differently from ``parent``)."""
        index = ShardedIndex.open(root, parent, log=False)
        index.delete(np.union1d(gone, index.search(xq, K)[1][:, 0]))
        return index.compact().index_version

    versions.append(compacted(v1, np.arange(0, 200)))  # v2: IVF, deletes applied
    idx = ShardedIndex.open(root, versions[-1], log=False)
    live = np.concatenate([s.ids[s.live_rows()] for s in idx.shards.values()])
    np.save(tmp_path / "live.npy", xb[np.sort(live)])  # v3: HNSW over v2's rows
    v3 = build_index(
        VectorSource(str(tmp_path / "live.npy")), root, BuildOptions(index="HNSW16,Flat", **opts)
    ).index_version
    versions.append(v3)
    versions.append(compacted(v3, np.arange(0, 300)))  # v4: HNSW, more deletes
    v5 = ShardedIndex.open(root, versions[-1], log=False)
    v5.delete([500])
    broken = v5.compact()  # v5: shard 1 truncated below, cannot load
    path = tmp_path / "idx" / broken.index_version / broken.shards[1].files["index"].path
    path.write_bytes(path.read_bytes()[:100])
    (tmp_path / "idx" / "CURRENT").write_text(versions[-1])
    v6 = compacted(versions[-1], np.arange(300, 400))
    eight = build_index(src, root, BuildOptions(index="Flat", num_shards=8, progress=False))
    refs = {
        v: ShardedIndex.open(root, v).search(xq, K)[1].tolist()
        for v in [*versions, v6]  # in process, each with its own tuned defaults
    }
    assert len({str(r) for r in refs.values()}) == len(refs)  # every version answers apart

    print(f"\nversions {versions}, broken {broken.index_version}, v6 {v6}")
    args = {"index_uri": root, "index_version": v1, "shard": {"num_replicas": 2}}
    deploy("drill", args)
    base = f"{serve_base}/drill"
    timings = {}
    with HttpLoad(f"{base}/v1/search", xq) as load:
        for v in [*versions[1:], v6]:
            if v == v6:  # first the version that cannot load: refused, nothing changes
                deploy("drill", args, swap_overrides(4, broken.index_version))
                wait_until(
                    lambda: httpx.get(f"{base}/v1/stats").json()["swap"]["state"] == "failed",
                    what="the broken version's prepare fails",
                )
                stats = httpx.get(f"{base}/v1/stats").json()
                assert stats["index_version"] == versions[-1]
                assert str(path) in " ".join(stats["problems"])
                assert httpx.get(f"{base}/v1/ready").status_code == 200  # still whole
                assert httpx.get(f"{base}/v1/health").json() == {"status": "degraded"}
            seen = len(load.answers)
            deploy("drill", args, swap_overrides(4, v))
            timings[v] = wait_until(
                lambda v=v, seen=seen: any(a[0] == v for a in load.answers[seen:]),
                what=f"answers from {v}",
            )
        # another layout (8 shards) is refused: the service stays on v6, ready and whole
        deploy("drill", args, swap_overrides(4, eight.index_version))
        wait_until(
            lambda: httpx.get(f"{base}/v1/stats").json()["swap"]["state"] == "refused",
            what="the 8-shard version refused",
        )
        time.sleep(1.0)
    stats = httpx.get(f"{base}/v1/stats").json()
    assert "num_shards 4 -> 8" in stats["swap"]["why"]
    assert stats["index_version"] == v6
    assert httpx.get(f"{base}/v1/ready").status_code == 200
    r = httpx.post(f"{base}/v1/search", json={"vectors": xq.tolist(), "k": K}).json()
    assert r["index_version"] == v6 and r["ids"] == refs[v6] and r["coverage"] == 1.0
    # the operator asks for the active version again: no swap is pending, and the failures
    # of versions nobody asks for any more (the broken one, the 8-shard one) are gone
    deploy("drill", args, swap_overrides(4, v6))
    wait_until(
        lambda: httpx.get(f"{base}/v1/health").json() == {"status": "ok"},
        timeout_s=30,
        what="health ok once no refused or failed version is wanted",
    )
    assert httpx.get(f"{base}/v1/stats").json()["problems"] == []

    assert load.failures == [], load.failures[:3]
    wrong = [(v, ids) for v, ids in load.answers if ids != refs.get(v)]
    by_version = {v: sum(a[0] == v for a in load.answers) for v in refs}
    print(
        f"\nswap drill: {len(load.answers)} answers, {len(load.failures)} failed, "
        f"{len(wrong)} not equal to their version's in-process answer; per version "
        f"{by_version}; seconds from deploy to first answer of each: "
        f"{[round(t, 1) for t in timings.values()]}"
    )
    assert wrong == []
    assert all(n > 0 for n in by_version.values())
