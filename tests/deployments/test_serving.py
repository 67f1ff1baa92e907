"""HTTP and handle answers against in-process `shards`, errors, auth, readiness (real Ray)."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from deployments.http import encode_vectors_b64
from shards import ShardedIndex
from tests.conftest import clustered
from tests.shards.helpers import float_tolerance

pytestmark = pytest.mark.ray


def post(url: str, body, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{url}/v1/search", content=content, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def xq():
    return clustered(20, 16, seed=5)


def test_http_json_b64_and_handle_equal_in_process_flat(apps, indexes, xq):
    from deployments.client import VsearchClient

    ref = ShardedIndex.open(str(indexes["root"] / "flat"))
    D, I = ref.search(xq, 10)
    r = post(apps["flat"], {"vectors": xq.tolist(), "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_array_equal(body["ids"], I)
    # BLAS rounding differs with the thread count (replicas use 1 thread, this process 2)
    tol = float_tolerance(indexes["xb"], xq, "l2")
    np.testing.assert_allclose(body["scores"], D, rtol=0, atol=tol)
    assert body["coverage"] == 1.0 and body["degraded"] is False
    assert body["index_version"] == ref.index_version and body["took_ms"] > 0
    b64 = encode_vectors_b64(xq)
    r = post(apps["flat"], {"vectors_b64": b64, "k": 10})
    np.testing.assert_array_equal(r.json()["ids"], I)
    res = VsearchClient("flat").search(xq, 10)
    np.testing.assert_array_equal(res.I, I)
    assert res.D.dtype == np.float32 and res.I.dtype == np.int64


def test_a_large_batch_parsed_and_encoded_off_the_loop_is_right(apps, indexes):
    """1,024 queries: a body above ``OFF_LOOP_BYTES`` and an answer above
    ``OFF_LOOP_RESULTS`` pairs, both handled in a thread of the router."""
    from deployments.http import OFF_LOOP_BYTES, OFF_LOOP_RESULTS

    big = clustered(1024, 16, seed=8)
    body = {"vectors": big.tolist(), "k": 10, "params": {"nprobe": 4}}
    assert len(json.dumps(body)) >= OFF_LOOP_BYTES and big.shape[0] * 10 >= OFF_LOOP_RESULTS
    r = post(apps["ivf"], body)
    assert r.status_code == 200, r.text
    expected = ShardedIndex.open(str(indexes["root"] / "ivf")).search(big, 10, {"nprobe": 4})[1]
    np.testing.assert_array_equal(r.json()["ids"], expected)


def test_overrides_apply_per_request_even_concurrently(apps, indexes, xq):
    ref = ShardedIndex.open(str(indexes["root"] / "ivf"))
    settings = [{"nprobe": p} for p in (1, 2, 4, 8, 32)] * 4
    expected = [ref.search(xq, 10, s)[1] for s in settings]
    assert not np.array_equal(expected[0], expected[4])  # nprobe matters on this data
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda s: post(apps["ivf"], {"vectors": xq.tolist(), "params": s}), settings)
        )
    for exp, r in zip(expected, answers, strict=True):
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(r.json()["ids"], exp)


def test_target_recall_is_honoured(apps, indexes, xq):
    ref = ShardedIndex.open(str(indexes["root"] / "ivf"))
    for target in (0.5, 0.9, 0.99):
        r = post(apps["ivf"], {"vectors": xq.tolist(), "params": {"target_recall": target}})
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(r.json()["ids"], ref.search(xq, 10, target_recall=target)[1])


def test_metadata_and_search_by_id(apps, indexes):
    from deployments.client import VsearchClient

    ref = ShardedIndex.open(str(indexes["root"] / "flat"))
    ids = indexes["ids"][[0, 7, 100]]
    r = post(apps["flat"], {"ids": ids.tolist(), "k": 5, "include_metadata": True})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_array_equal(body["ids"], ref.search_by_id(ids, 5)[1])
    assert [[m["tag"] for m in row] for row in body["metadata"]] == [
        [f"t{i}" for i in row] for row in body["ids"]
    ]
    res = VsearchClient("flat").search(ids=ids, k=5)
    np.testing.assert_array_equal(res.I, body["ids"])


NAN_BODY = '{"vectors": [[' + ", ".join(["NaN"] * 16) + ']], "k": 3}'
INF_BODY = '{"vectors": [[' + ", ".join(["1e400"] * 16) + ']], "k": 3}'


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, "bad_request"),
        ("plain text", 400, "bad_request"),
        ({"k": 3}, 400, "bad_request"),
        ({"vectors": [[0.0] * 16], "ids": [1]}, 400, "bad_request"),
        ({"vectors": [[0.0] * 15]}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16, [0.0] * 15]}, 400, "bad_request"),
        ({"vectors": []}, 400, "invalid_query"),
        (NAN_BODY, 400, "invalid_query"),
        (INF_BODY, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16] * 1025}, 400, "invalid_query"),  # max_queries 1024
        ({"vectors": [[0.0] * 16], "k": "ten"}, 400, "bad_request"),
        ({"vectors": [[0.0] * 16], "k": 2.5}, 400, "bad_request"),
        ({"vectors": [[0.0] * 16], "deadline_ms": -5}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "deadline_ms": 10**9}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "min_coverage": "all"}, 400, "bad_request"),
        ({"vectors": [[0.0] * 16], "params": {"itopk_size": 64}}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "params": "nprobe=4"}, 400, "bad_request"),
        ({"vectors": "abc"}, 400, "bad_request"),
        ({"ids": [-1]}, 400, "bad_request"),  # -1 is the padding id: never an id
        ({"ids": [2**64]}, 400, "bad_request"),  # found by the schema fuzzing: was a 500
        ({"ids": [2**63]}, 400, "bad_request"),
        ({"ids": []}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "k": 0}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "k": 5000}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "params": {"bogus": 1}}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "params": {"nprobe": 4}}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "params": {"target_recall": 2}}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "min_coverage": 1.5}, 400, "bad_request"),
        ({"vectors": [[0.0] * 16], "deadline_ms": 0}, 400, "invalid_query"),
        ({"vectors": [[0.0] * 16], "extra": 1}, 400, "bad_request"),
        ({"vectors_b64": base64.b64encode(b"x" * 60).decode()}, 400, "bad_request"),
        ({"vectors_b64": "***"}, 400, "bad_request"),
        ({"ids": [2]}, 404, "unknown_id"),
        ({"vectors": [[0.0] * 16] * 5000}, 413, "body_too_large"),
        ({"vectors": [[0.5] * 16] * 600, "deadline_ms": 1}, 504, "deadline_exceeded"),
    ],
)
def test_errors_are_json_with_status(apps, body, status, code):
    r = post(apps["flat"], body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]
    assert post(apps["flat"], {"vectors": [[0.1] * 16], "k": 2}).status_code == 200


def test_wrong_content_type_is_415(apps):
    body = {"vectors": [[0.1] * 16], "k": 2}
    r = post(apps["flat"], body, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = post(apps["flat"], body, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c, x: c.search(x[:, :15], 5), "InvalidQuery"),
        (lambda c, x: c.search(np.full_like(x, np.nan), 5), "InvalidQuery"),
        (lambda c, x: c.search(np.full_like(x, np.inf), 5), "InvalidQuery"),
        (lambda c, x: c.search(x[:0], 5), "InvalidQuery"),
        (lambda c, x: c.search(x, 0), "InvalidQuery"),
        (lambda c, x: c.search(x, 5000), "InvalidQuery"),
        (lambda c, x: c.search(np.repeat(x, 60, axis=0), 5), "InvalidQuery"),  # 1,200 > 1,024
        (lambda c, x: c.search(x, 5, {"nprobe": 4}), "InvalidQuery"),
        (lambda c, x: c.search(x, 5, {"bogus": 1}), "InvalidQuery"),
        (lambda c, x: c.search(x, 5, min_coverage=1.5), "InvalidQuery"),
        (lambda c, x: c.search(x, 5, deadline_ms=-1), "InvalidQuery"),
        (lambda c, x: c.search(ids=[2], k=5), "UnknownId"),
        (lambda c, x: c.search(x, 5, ids=[1]), "InvalidQuery"),
        (lambda c, x: c.search(ids=[2**63], k=5), "InvalidQuery"),
        (lambda c, x: c.search(ids=[1.5], k=5), "InvalidQuery"),
    ],
)
def test_handle_rejects_bad_input_with_typed_errors(apps, xq, call, error):
    from deployments.client import VsearchClient

    client = VsearchClient("flat")
    with pytest.raises(Exception) as info:
        call(client, xq)
    assert type(info.value).__name__ == error, repr(info.value)
    assert client.search(xq[:2], 3).I.shape == (2, 3)  # the next valid query still works


def test_unknown_route_is_json_404(apps):
    r = httpx.get(f"{apps['flat']}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "http_404"


def test_auth(apps):
    from tests.deployments.conftest import TOKEN

    base = apps["auth"]
    query = {"vectors": [[0.1] * 16], "k": 2}
    good = {"authorization": f"Bearer {TOKEN}"}
    assert post(base, query).status_code == 401
    assert post(base, query, headers={"authorization": "Bearer nope"}).status_code == 401
    assert post(base, query, headers=good).status_code == 200
    for path in ("/v1/stats", "/v1/ready", "/docs", "/openapi.json"):
        assert httpx.get(base + path).status_code == 401
        assert httpx.get(base + path, headers=good).status_code == 200
    assert httpx.get(base + "/v1/health").status_code == 200
    assert post(apps["flat"], query).status_code == 200  # auth is per application


def test_ready_stats_health_docs(apps, indexes):
    ref = ShardedIndex.open(str(indexes["root"] / "flat"))
    r = httpx.get(apps["flat"] + "/v1/ready")
    assert r.status_code == 200 and r.json()["ready"] is True
    stats = httpx.get(apps["flat"] + "/v1/stats").json()
    assert [s["shard"] for s in stats["shards"]] == [0, 1, 2]
    assert sum(s["ntotal"] for s in stats["shards"]) == ref.ntotal
    assert {s["device"] for s in stats["shards"]} == {"cpu"}
    assert httpx.get(apps["flat"] + "/v1/health").json()["status"] == "ok"
    spec = httpx.get(apps["flat"] + "/openapi.json").json()
    assert "/v1/search" in spec["paths"]


def test_several_shards_per_replica(serve_base, indexes, xq):
    from tests.deployments.conftest import deploy

    root = indexes["root"]
    deploy("grouped", {"index_uri": str(root / "flat"), "shard": {"shards_per_replica": 2}})
    base = f"{serve_base}/grouped"
    ref = ShardedIndex.open(str(root / "flat"))
    r = post(base, {"vectors": xq.tolist(), "k": 10})
    assert r.status_code == 200 and r.json()["coverage"] == 1.0
    np.testing.assert_array_equal(r.json()["ids"], ref.search(xq, 10)[1])
    stats = httpx.get(base + "/v1/stats").json()["shards"]
    assert [s["replica_shards"] for s in stats] == [[0, 1], [0, 1], [2]]
    assert httpx.get(base + "/v1/ready").json()["ready"] is True


def test_overload_answers_429_with_retry_after(serve_base, indexes):
    from tests.deployments.conftest import deploy

    deploy(
        "overload",
        {
            "index_uri": str(indexes["root"] / "ivf"),
            "router_max_ongoing_requests": 1,
            "router_max_queued_requests": 1,
            "overload_status": 429,
            "retry_after_s": 2,
        },
    )
    url = f"{serve_base}/overload/v1/search"
    heavy = {
        "vectors": clustered(1000, 16, seed=9).tolist(),
        "k": 50,
        "params": {"nprobe": 32},
        "deadline_ms": 30000,
    }
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, json=heavy, timeout=60), range(16)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
    assert all(r.headers.get("retry-after") == "2" for r in answers if r.status_code == 429)
    assert httpx.post(url, json={"vectors": [[0.1] * 16], "k": 2}).status_code == 200


def test_shared_http_contract_check(apps, indexes, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    check = Path(__file__).resolve().parents[3] / "shared" / "checks" / "http_contract.py"
    if not check.exists():
        pytest.skip("the shared HTTP contract check is not beside this checkout")
    np.save(tmp_path / "q.npy", indexes["xb"][:16])
    proc = subprocess.run(
        [sys.executable, str(check), apps["flat"], str(tmp_path / "q.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failed" in proc.stdout


def test_partial_coverage_503_and_504(serve_base, indexes, xq):
    from tests.deployments.conftest import deploy

    faults = {"fail_shards": [1], "delay_ms": {2: 800}}
    deploy("faulty", {"index_uri": str(indexes["root"] / "flat"), "shard": {"faults": faults}})
    url = f"{serve_base}/faulty/v1/search"
    query = {"vectors": xq[:3].tolist(), "k": 5, "deadline_ms": 3000}
    r = httpx.post(url, json=query, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shards_unavailable"
    r = httpx.post(url, json={**query, "min_coverage": 0.6}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["coverage"] == pytest.approx(2 / 3) and r.json()["degraded"] is True
    t0 = time.perf_counter()
    r = httpx.post(url, json={**query, "deadline_ms": 200, "min_coverage": 0.3}, timeout=30)
    assert r.status_code == 200 and r.json()["coverage"] == pytest.approx(1 / 3)
    assert time.perf_counter() - t0 < 0.7  # the slow shard was not waited for
    r = httpx.post(url, json={**query, "deadline_ms": 200, "min_coverage": 0.5}, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"


def test_metadata_failure_is_an_error_not_null_rows(serve_base, indexes, xq):
    """Every shard searches, but one fails to read its results' metadata (each shard reads
    it with its search, from the states the search read): 503, not an answer whose rows
    from that shard are silently null."""
    from tests.deployments.conftest import deploy

    faults = {"fail_shards": [1], "fail_methods": ["metadata"]}
    deploy("nometa", {"index_uri": str(indexes["root"] / "flat"), "shard": {"faults": faults}})
    url = f"{serve_base}/nometa/v1/search"
    query = {"vectors": xq[:8].tolist(), "k": 10, "deadline_ms": 3000}
    r = httpx.post(url, json=query, timeout=30)
    assert r.status_code == 200 and r.json()["coverage"] == 1.0  # the search itself is whole
    r = httpx.post(url, json={**query, "include_metadata": True}, timeout=30)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "shards_unavailable"


def test_default_params_change_live(serve_base, indexes, xq):
    from deployments.versions import swap_overrides
    from tests.deployments.conftest import deploy

    root = indexes["root"]
    ref = ShardedIndex.open(str(root / "ivf"))
    args = {"index_uri": str(root / "ivf")}
    deploy("defaults", args)
    url = f"{serve_base}/defaults"
    before = post(url, {"vectors": xq.tolist()}).json()["ids"]
    np.testing.assert_array_equal(before, ref.search(xq, 10)[1])
    deploy("defaults", args, swap_overrides(2, ref.index_version, {"nprobe": 1}))
    np.testing.assert_array_equal(
        post(url, {"vectors": xq.tolist()}).json()["ids"], ref.search(xq, 10, {"nprobe": 1})[1]
    )
    assert httpx.get(url + "/v1/stats").json()["default_params"]["nprobe"] == 1
    deploy("defaults", args, swap_overrides(2, ref.index_version, {"nprobe": 10**6}))
    health = httpx.get(url + "/v1/health").json()
    assert health == {"status": "degraded"}  # the open route says no more than that
    stats = httpx.get(url + "/v1/stats").json()
    assert "nprobe" in " ".join(stats["problems"])
    assert stats["default_params"]["nprobe"] == 1  # kept
