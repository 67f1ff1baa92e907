"""One scrape of /metrics sees every replica's metrics with the right counts (real Ray)."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deployments.conftest import deploy

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def samples(text: str, name: str, app: str) -> list:
    return [
        s
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and s.labels.get("application") == app
    ]


def test_metrics_scrape_counts(serve_base, indexes, tmp_path):
    root = tmp_path / "flat"  # a copy: this test writes to it
    shutil.copytree(indexes["root"] / "flat", root, ignore=shutil.ignore_patterns("log"))
    deploy("metrics", {"index_uri": str(root)})
    base = f"{serve_base}/metrics"
    for _ in range(7):
        assert httpx.post(base + "/v1/search", json={"vectors": [[0.2] * 16], "k": 3}).is_success
    assert httpx.post(base + "/v1/search", json={"vectors": [[0.2] * 3]}).status_code == 400
    new = [int(i) for i in range(10**6, 10**6 + 5)]  # five rows more: the size gauges follow
    body = {"ids": new, "vectors": [[0.1] * 16] * 5, "metadata": [{"tag": "new"}] * 5}
    assert httpx.post(base + "/v1/upsert", json=body, timeout=30).is_success
    deadline, text = time.time() + 60, ""
    while time.time() < deadline:  # Ray exports metrics every few seconds
        r = httpx.get(base + "/metrics", timeout=30)  # every node's export, merged
        # never an empty 200 while Ray has not exported yet: a 503 saying so
        ready = r.status_code == 200 and "vsearch_" in r.text
        assert ready or (
            r.status_code == 503 and r.json()["error"]["code"] == "metrics_not_ready"
        ), (r.status_code, r.text[:200])
        text = r.text if ready else ""
        ok = samples(text, "ray_vsearch_requests_total", "metrics")
        searched = samples(text, "ray_vsearch_shard_searches_total", "metrics")
        sized = samples(text, "ray_vsearch_shard_vectors", "metrics")
        if (
            sum(s.value for s in ok if s.labels["status"] == "2xx") >= 7
            and sum(s.value for s in searched) >= 21
            and {s.labels["shard"] for s in sized} == {"0", "1", "2"}
            and sum(s.value for s in sized) == len(indexes["ids"]) + 5
        ):
            break  # every replica exported each metric (each on its own schedule)
        time.sleep(1)
    requests = {
        s.labels["status"]: s.value for s in samples(text, "ray_vsearch_requests_total", "metrics")
    }
    assert requests == {"2xx": 7, "4xx": 1}
    searches = samples(text, "ray_vsearch_shard_searches_total", "metrics")
    assert {s.labels["shard"] for s in searches} == {"0", "1", "2"}
    assert sum(s.value for s in searches) == 7 * 3  # one search per shard per request
    vectors = samples(text, "ray_vsearch_shard_vectors", "metrics")
    assert sum(s.value for s in vectors) == len(indexes["ids"]) + len(new)
    latency = samples(text, "ray_vsearch_request_seconds_count", "metrics")
    assert sum(s.value for s in latency) == 7
    assert samples(text, "ray_vsearch_shard_search_seconds_bucket", "metrics")
