"""The client's request bodies and error mapping, without a service."""

import base64

import httpx
import numpy as np
import pytest

import vsearch
from vsearch import _wire
from vsearch.errors import from_answer


def test_bodies_carry_every_knob_given_and_refuse_ambiguity():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    frame, body = (
        send.get("json")
        for send in _wire.search_requests(
            x,
            None,
            None,
            5,
            {"nprobe": 4},
            {"a": 1},
            min_sequence=3,
            deadline_ms=None,
            include_metadata=True,
        )
    )
    assert frame is None  # the vectors go as a binary frame (test_frames), base64 JSON after
    assert np.frombuffer(base64.b64decode(body.pop("vectors_b64")), "<f4").tolist() == list(
        range(6)
    )
    assert body == {
        "k": 5,
        "params": {"nprobe": 4},
        "filter": {"a": 1},
        "min_sequence": 3,
        "include_metadata": True,
    }
    (by_text,) = _wire.search_requests(None, None, "one text", 1, None, None)
    assert by_text["json"]["texts"] == ["one text"]
    for args in [(x, [1], None), (None, None, None), (x, None, ["t"])]:
        with pytest.raises(ValueError, match="exactly one"):
            _wire.search_requests(*args, 1, None, None)
    with pytest.raises(ValueError, match="not both"):
        _wire.upsert_body([1], x[:1], None, None, ["t"])
    keys = {_wire.upsert_body([1], x[:1], None, None)["idempotency_key"] for _ in range(3)}
    assert len(keys) == 3  # a new key per call, so the client's own retries reuse one
    with pytest.raises(ValueError, match="integers"):
        _wire.id_list([1.5])
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        _wire.matrix(np.ones((2, 2, 2)))
    assert _wire.get_body([3], None, None, None, False, None, 0) == {
        "include_vectors": False,
        "ids": [3],
    }
    assert _wire.get_body(None, {"a": 1}, 7, 9, True, ["a"], 4) == {
        "include_vectors": True,
        "limit": 7,
        "filter": {"a": 1},
        "after": 9,
        "columns": ["a"],
        "min_sequence": 4,
    }


def test_answers_become_typed_errors():
    e = from_answer(404, {"error": {"code": "unknown_id", "message": "id 5 is not in the index"}})
    assert type(e) is vsearch.UnknownId and e.status == 404 and "id 5" in str(e)
    assert type(from_answer(400, {"error": {"code": "target_unreachable", "message": ""}})) is (
        vsearch.TargetUnreachable
    )
    over = from_answer(503, "Service Unavailable", retry_after=2.0)  # a proxy's text answer
    assert type(over) is vsearch.Overloaded and over.retry_after == 2.0
    assert type(from_answer(429, "")) is vsearch.Overloaded
    novel = from_answer(400, {"error": {"code": "something_new", "message": "m"}})
    assert isinstance(novel, vsearch.VsearchError) and novel.code == "something_new"
    assert novel.status == 400


def test_search_result_pads_with_nan_and_minus_one():
    r = _wire.search_result(
        {
            "ids": [[4, -1]],
            "scores": [[0.5, None]],
            "coverage": 1.0,
            "degraded": False,
            "index_version": "v",
            "took_ms": 1.0,
            "metadata": [[{"w": "x"}, None]],
        }
    )
    assert r.ids.tolist() == [[4, -1]] and np.isnan(r.scores[0, 1])
    assert r.hits(0) == [(4, 0.5, {"w": "x"})]


def test_the_client_does_not_retry_what_cannot_succeed():
    calls = []

    def answer(request):
        calls.append(request)
        return httpx.Response(400, json={"error": {"code": "invalid_query", "message": "bad k"}})

    c = vsearch.Client("http://x", transport=httpx.MockTransport(answer), retries=5)
    with pytest.raises(vsearch.InvalidQuery, match="bad k"):
        c.search(np.ones(3), k=0)
    assert len(calls) == 1
    assert vsearch.Client("http://x/", collection="docs")._path("/v1/search") == (
        "/v1/collections/docs/search"
    )
    with pytest.raises(ValueError, match="retries"):
        vsearch.Client(retries=-1)
