"""The online recall monitor on a real local Ray: live queries drift away from the ones the
index was tuned on, the measured recall falls with the true recall (brute force over the
same answers), the monitor re-tunes on the live queries through a versioned swap, and the
measured recall comes back to the target, again against brute force."""

import math
import time

import faiss
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import clustered
from tests.deployments.conftest import deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]

D, N, K = 32, 20_000, 10
ROWS = 4  # rows per request: every one sampled (sample_rate 1, at most 4 rows a query)


def midpoints(seed: int, n: int) -> np.ndarray:
    """Queries between two clusters: another distribution than the tuning queries'."""
    q = clustered(2 * n, D, seed=seed)
    return (q[:n] + q[n:]) / 2


def ask(base: str, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Search every row of ``xq`` (defaults: the target the index was tuned for): the ids
    and the index version that answered each row."""
    out, versions = [], []
    with httpx.Client(timeout=30) as c:
        for start in range(0, len(xq), ROWS):
            body = {"vectors": xq[start : start + ROWS].tolist(), "k": K}
            r = c.post(base + "/v1/search", json=body)
            assert r.status_code == 200, r.text
            out.append(np.asarray(r.json()["ids"]))
            versions += [r.json()["index_version"]] * len(out[-1])
    return np.vstack(out), np.asarray(versions)


def true_recall(xb: np.ndarray, xq: np.ndarray, I: np.ndarray) -> np.ndarray:
    """Per query: the share of its brute-force top-k that ``I`` holds."""
    _, gt = faiss.knn(xq, xb, K)
    return (I[:, :, None] == gt[:, None, :]).any(axis=2).mean(axis=1)


def recall_stats(base: str) -> dict:
    return httpx.get(base + "/v1/stats", timeout=30).json()["recall"]


def wait(what, predicate, timeout_s=90.0, state=None):
    """``predicate()`` once true; on timeout the failure says ``state()`` (what it was at)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state else ""))


@pytest.fixture(scope="module")
def served(serve_base, tmp_path_factory):
    from shards import BuildOptions, VectorSource, build_index

    root = tmp_path_factory.mktemp("recall")
    xb = clustered(N, D, seed=1)
    np.save(root / "xb.npy", xb)
    opts = BuildOptions(num_shards=2, index="IVF64,Flat", progress=False)  # tuned for 0.95
    build_index(VectorSource(str(root / "xb.npy")), str(root / "ivf"), opts)
    args = {
        "index_uri": str(root / "ivf"),
        "shard": {"health_check_period_s": 1.0},
        "recall": {
            "sample_rate": 1.0,
            "cpu_share": 1000.0,  # every sample measured: this test is about drift, not cost
            "min_samples": 150,
            "auto_retune": True,
            "retune_queries": 200,
            "retune_cooldown_s": 0,
        },
    }
    deploy("recall", args)
    return f"{serve_base}/recall", xb


def test_drift_is_measured_then_retuned_back_to_the_target(served):
    base, xb = served
    first = httpx.get(base + "/v1/stats", timeout=30).json()
    v1, target = first["index_version"], first["recall"]["target"]
    assert target == 0.95 and first["recall"]["sample_rate"] == 1.0

    # queries like the tuning ones: measured recall is the true recall, above the target
    tuned_like = clustered(200, D, seed=7)
    I, versions = ask(base, tuned_like)
    assert set(versions) == {v1}
    good = true_recall(xb, tuned_like, I)
    stats = wait("200 measured", lambda: (s := recall_stats(base))["samples"] >= 200 and s)
    assert stats["samples"] == 200 and stats["index_version"] == v1
    assert stats["recall"] == pytest.approx(good.mean(), abs=1e-4)  # the same queries
    assert stats["recall"] >= target and stats["drift"] is None
    assert set(stats["by_shard"]) == {"0", "1"} and stats["skipped"] == {}

    # queries from another distribution: recall falls, the measured figure with it (the
    # re-tune may start before the last of them: only those v1 answered count for v1)
    drifted = midpoints(8, 500)
    I, versions = ask(base, drifted)
    per_row = true_recall(xb, drifted, I)
    bad = per_row[versions == v1]
    late = per_row[versions != v1]  # answered by the re-tuned version already
    assert len(bad) >= 200 and bad.mean() < target - 0.05, bad.mean()  # the drift is real
    expected = np.concatenate([good, bad]).mean()
    n1 = len(good) + len(bad)
    v1_figure = wait(
        "the drifted samples",
        lambda: (f := recall_stats(base)["by_version"].get(v1)) and f["samples"] == n1 and f,
    )
    assert v1_figure["recall"] == pytest.approx(expected, abs=1e-4)
    assert v1_figure["recall"] < target - 0.02  # below the target by more than the margin

    # the monitor re-tunes on live queries sampled after it found the drift, so the drifted
    # traffic goes on, as it would in production, until the re-tuned version answers (on a
    # slow machine the drift can be found only after the last of the 500 above)
    seeds = iter(range(100, 100_000))

    def retuned() -> dict | None:
        s = httpx.get(base + "/v1/stats", timeout=30).json()
        if s["index_version"] != v1:
            return s
        more = midpoints(next(seeds), 40)
        I_more, v_more = ask(base, more)
        late_more.append(true_recall(xb, more, I_more)[v_more != v1])
        return None

    late_more: list[np.ndarray] = []
    stats = wait(
        "the re-tuned version",
        retuned,
        timeout_s=120,
        state=lambda: recall_stats(base)["retune"],
    )
    late = np.concatenate([late, *late_more])
    v2 = stats["index_version"]
    assert stats["compaction"]["kind"] == "retune" and stats["compaction"]["state"] == "active"
    retune = stats["recall"]["retune"]
    assert retune["from"] == v1 and retune["version"] == v2 and retune["state"] == "active"
    assert "below target" in retune["why"] and retune["queries"] == 200
    assert stats["default_params"]["nprobe"] > first["default_params"]["nprobe"]

    # fresh queries of the drifted kind: the true and the measured recall are back
    assert set(versions) <= {v1, v2}
    fresh = midpoints(11, 400)
    I, versions = ask(base, fresh)
    assert set(versions) == {v2}
    on_v2 = np.concatenate([late, true_recall(xb, fresh, I)])
    back, n2 = float(on_v2.mean()), len(on_v2)
    assert back >= target - 0.02, back
    print(
        f"recall@{K}: tuned-like {good.mean():.4f}; drifted {bad.mean():.4f} (v1 measured "
        f"{v1_figure['recall']:.4f}); re-tuned nprobe {first['default_params']['nprobe']} -> "
        f"{stats['default_params']['nprobe']}: {back:.4f}"
    )
    after = wait("measured on v2", lambda: (s := recall_stats(base))["samples"] >= n2 and s)
    assert after["index_version"] == v2 and after["samples"] == n2
    assert after["recall"] == pytest.approx(back, abs=1e-4) and after["drift"] is None

    # the same figures reach Prometheus: the gauge, its sample count, the target
    def scraped():
        r = httpx.get(base + "/metrics", timeout=30)
        if r.status_code != 200:
            return None
        values = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                cell = (s.labels.get("shard", "all"), s.labels.get("plan", "all"))
                if s.labels.get("application") == "recall" and cell == ("all", "all"):
                    values[s.name] = s.value
        # each gauge reaches the merged export on its own schedule: a scrape can hold one
        # gauge's new value beside another's old one, so wait until all say the same (a
        # wrong figure never does, and the wait fails)
        current = [
            values.get("ray_vsearch_recall_samples") == n2,
            values.get("ray_vsearch_recall_at_target_samples") == n2,
            abs(values.get("ray_vsearch_recall", math.nan) - back) <= 1e-4,
            abs(values.get("ray_vsearch_recall_at_target", math.nan) - back) <= 1e-4,
        ]
        seen.update(values)
        return values if all(current) else None

    seen: dict = {}
    values = wait("the recall gauges", scraped, timeout_s=60, state=lambda: (back, n2, seen))
    assert values["ray_vsearch_recall_samples"] == n2
    assert values["ray_vsearch_recall"] == pytest.approx(back, abs=1e-4)
    assert values["ray_vsearch_recall_at_target"] == pytest.approx(back, abs=1e-4)
    assert values["ray_vsearch_recall_target"] == 0.95
