"""The binary search frame (``vsearch.frames``) both ways, and the service's parsing of it,
without a service: round trips, and every malformed frame refused with what is wrong."""

import json
import struct

import numpy as np
import pytest

from deployments.errors import BadRequest, BodyTooLarge, UnsupportedMediaType
from deployments.http import parse_search, queries_of, response_frame, wants_frame
from vsearch import _wire, frames


def test_a_request_round_trips_exactly_with_its_options():
    xq = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    xq[0, 0] = np.float32(1e-38)  # a denormal-adjacent value survives as bits, not as text
    send, fallback = _wire.search_requests(
        xq, None, None, 7, {"nprobe": 4}, {"a": 1}, min_sequence=2
    )
    assert send["headers"]["content-type"] == frames.MEDIA_TYPE
    req = parse_search(send["content"], 10**6, frames.MEDIA_TYPE)
    assert (req.k, req.params, req.filter, req.min_sequence) == (7, {"nprobe": 4}, {"a": 1}, 2)
    got = queries_of(req, 5)
    assert got.dtype == np.float32 and got.flags.writeable
    np.testing.assert_array_equal(got, xq)
    assert fallback["json"]["k"] == 7 and "vectors_b64" in fallback["json"]  # old services
    # ids and texts still travel as JSON, and ask for a binary answer all the same
    (by_ids,) = _wire.search_requests(None, [3, 4], None, 2, None, None)
    assert by_ids["json"] == {"k": 2, "ids": [3, 4]}
    assert wants_frame(by_ids["headers"]["accept"])


def test_the_base64_fallback_is_encoded_only_when_asked_for(monkeypatch):
    def refuse(x):
        raise AssertionError("base64 encoded for a service that takes frames")

    monkeypatch.setattr(_wire, "b64", refuse)
    xq = np.ones((256, 8), np.float32)
    forms = _wire.search_requests(xq, None, None, 5, None, None)
    assert next(forms)["headers"]["content-type"] == frames.MEDIA_TYPE
    with pytest.raises(AssertionError, match="base64 encoded"):
        next(forms)


@pytest.mark.parametrize(
    ("accept", "frame"),
    [
        ("application/octet-stream", True),
        ("Application/Octet-Stream; q=1", True),
        ("application/octet-stream, application/json", True),
        ("application/json, application/octet-stream;q=0.1", False),
        ("application/octet-stream;q=0, application/json", False),
        ("application/octet-stream;q=zero", False),
        ("application/json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_a_frame_answers_only_who_prefers_one(accept, frame):
    assert wants_frame(accept) is frame


def test_an_answer_round_trips_with_padding_and_metadata():
    I = np.array([[5, 2, -1], [7, -1, -1]], dtype=np.int64)
    D = np.array([[0.25, 0.5, np.inf], [1.5, np.nan, 0.0]], dtype=np.float32)
    result = {
        "D": D,
        "I": I,
        "coverage": 0.5,
        "degraded": True,
        "index_version": "v1",
        "sequence": 9,
        "took_ms": 1.25,
        "metadata": [[{"w": "a"}, {"w": "b"}, None], [{"w": "c"}, None, None]],
    }
    r = _wire.search_result(response_frame(result))
    assert r.ids.tolist() == I.tolist() and r.scores.dtype == np.float32
    np.testing.assert_array_equal(r.scores[I >= 0], D[I >= 0])
    assert np.isnan(r.scores[I < 0]).all()  # padding is NaN, whatever faiss left there
    assert (r.coverage, r.degraded, r.index_version, r.sequence) == (0.5, True, "v1", 9)
    assert r.metadata == result["metadata"] and r.hits(1) == [(7, 1.5, {"w": "c"})]


def frame(header: dict, payload: bytes, magic: bytes = frames.REQUEST) -> bytes:
    head = json.dumps(header).encode()
    return magic + struct.pack("<I", len(head)) + head + payload


GOOD = np.ones((2, 4), np.float32).tobytes()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "not a VSQ1 frame"),
        (frame({"shape": [2, 4]}, GOOD, frames.ANSWER), "not a VSQ1 frame"),
        (frames.REQUEST + b"\x01\x00", "ends before its header size"),
        (frames.REQUEST + struct.pack("<I", 99) + b"{}", "ends inside its header"),
        (frames.REQUEST + struct.pack("<I", 3) + b"{{{" + GOOD, "header is not JSON"),
        (frame([2, 4], GOOD), "must be a JSON object"),  # type: ignore[arg-type]
        (frame({"k": 3}, GOOD), "needs shape"),
        (frame({"shape": [2, -4]}, GOOD), "needs shape"),
        (frame({"shape": [2**61, 0]}, b""), "positive integers"),
        (frame({"shape": [0, 10**30]}, b""), "positive integers"),
        (frame({"shape": [True, 4]}, GOOD[:16]), "needs shape"),
        (frames.REQUEST + struct.pack("<I", 1000) + b"[" * 1000, "nested too deeply"),
        (frame({"shape": [2.0, 4]}, GOOD), "needs shape"),
        (frame({"shape": [2, 4]}, GOOD[:-4]), "holds 5[38] bytes.*needs 57"),
        (frame({"shape": [2, 4]}, GOOD + b"\x00"), "holds 5[38] bytes.*needs 57"),
        (frame({"shape": [2, 4], "k": "many"}, GOOD), "k: Input should be a valid integer"),
        (frame({"shape": [2, 4], "vectors": [[1.0]]}, GOOD), "vectors: Extra inputs"),
        (frame({"shape": [2, 4], "nprobe": 3}, GOOD), "nprobe: Extra inputs"),
    ],
)
def test_malformed_frames_are_refused_with_what_is_wrong(body, why):
    with pytest.raises(BadRequest, match=why):
        parse_search(body, 10**6, frames.MEDIA_TYPE)


def test_limits_and_media_types():
    body = frame({"shape": [2, 4]}, GOOD)
    with pytest.raises(BodyTooLarge):
        parse_search(body, len(body) - 1, frames.MEDIA_TYPE)
    with pytest.raises(UnsupportedMediaType, match="application/octet-stream"):
        parse_search(body, 10**6, "text/plain")
    with pytest.raises(BadRequest, match="not valid JSON"):  # a frame sent as JSON
        parse_search(body, 10**6, "application/json")
    with pytest.raises(ValueError, match="one shape"):
        frames.encode(frames.ANSWER, {}, np.zeros((2, 3)), np.zeros((3, 2)))


def test_the_client_falls_back_to_json_for_a_service_without_frames():
    """A service from before frames answers a frame with 415: the client asks again in
    base64 JSON (a rolling update can have both kinds of routers)."""
    import httpx

    import vsearch

    seen = []

    def old_service(request):
        seen.append(request.headers["content-type"])
        if request.headers["content-type"] == frames.MEDIA_TYPE:
            err = {"error": {"code": "unsupported_media_type", "message": "json only"}}
            return httpx.Response(415, json=err)
        body = json.loads(request.content)
        assert body["k"] == 2 and len(body["vectors_b64"]) == 12  # one 2-d query
        answer = {"ids": [[1, -1]], "scores": [[0.5, None]], "coverage": 1.0}
        return httpx.Response(
            200, json={**answer, "degraded": False, "index_version": "v", "took_ms": 1.0}
        )

    c = vsearch.Client("http://x", transport=httpx.MockTransport(old_service))
    r = c.search(np.ones(2), k=2)
    assert r.ids.tolist() == [[1, -1]] and seen == [frames.MEDIA_TYPE, "application/json"]
