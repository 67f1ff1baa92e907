"""The HTTP contract's work: request parsing and validation (into ``deployments.schema``'s
models), response bodies (JSON or binary frames), JSON errors."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import decimal
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from deployments.errors import BadRequest, BodyTooLarge, UnsupportedMediaType
from deployments.schema import SearchOptions, SearchRequest, UpsertRequest
from shards.errors import VsearchError
from vsearch import frames

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def get_json(result: dict[str, Any]) -> str:
    """``GetResponse`` JSON of a ``Router.get`` result."""
    body: dict[str, Any] = {
        "ids": result["ids"].tolist(),
        "sequence": result["sequence"],
        "index_version": result["index_version"],
    }
    if result.get("metadata") is not None:
        body["metadata"] = jsonable(result["metadata"])
    if result.get("vectors") is not None:
        body["vectors"] = result["vectors"].tolist()
    if "next_after" in result:
        body["next_after"] = result["next_after"]
    return json.dumps(body, allow_nan=False)


def parse_search(body: bytes, max_bytes: int, content_type: str = "") -> SearchRequest:
    """Parse and validate a search body, JSON or a binary frame (UnsupportedMediaType,
    BodyTooLarge, BadRequest)."""
    media = _media(content_type)
    if media != frames.MEDIA_TYPE:
        if not _json_or_unset(media):
            raise UnsupportedMediaType(
                "content-type must be application/json, or application/octet-stream for a "
                f"binary frame of queries, got {media!r}"
            )
        return parse_body(SearchRequest, body, max_bytes, content_type)
    if len(body) > max_bytes:
        raise BodyTooLarge(f"request body is {len(body):,} bytes; the limit is {max_bytes:,}")
    try:
        header, (xq,) = frames.decode(body, frames.REQUEST, [np.float32])
    except frames.FrameError as exc:
        raise BadRequest(f"binary search body: {exc}") from None
    req = SearchRequest.model_construct(**_validated(SearchOptions, header).model_dump())
    req._matrix = xq
    return req


def _media(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _json_or_unset(media: str) -> bool:
    """A body declared as JSON (``+json`` suffixes too), or not declared (read as JSON)."""
    return not media or media == "application/json" or media.endswith("+json")


def wants_frame(accept: str) -> bool:
    """The client asked for a binary answer: ``application/octet-stream`` in ``Accept`` with
    a quality above 0 and not below JSON's."""
    q = {frames.MEDIA_TYPE: 0.0, "application/json": 0.0}
    for part in accept.split(","):
        media, *options = (p.strip() for p in part.split(";"))
        media = media.lower()
        if media not in q:
            continue
        quality = 1.0
        for opt in options:
            name, _, value = opt.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        q[media] = max(q[media], quality)
    return q[frames.MEDIA_TYPE] > 0 and q[frames.MEDIA_TYPE] >= q["application/json"]


def parse_body(model: type[M], body: bytes, max_bytes: int, content_type: str = "") -> M:
    """Parse and validate a request body as ``model`` (UnsupportedMediaType, BodyTooLarge,
    BadRequest). A body without a content type is read as JSON; other types are refused.
    """
    media = _media(content_type)
    if not _json_or_unset(media):
        raise UnsupportedMediaType(f"content-type must be application/json, got {media!r}")
    if len(body) > max_bytes:
        raise BodyTooLarge(f"request body is {len(body):,} bytes; the limit is {max_bytes:,}")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    return _validated(model, raw)


def _validated(model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


def encode_vectors_b64(xq: np.ndarray) -> str:
    """The ``vectors_b64`` form of queries (nq, d): base64 of little-endian float32, row-major."""
    return base64.b64encode(np.ascontiguousarray(xq, dtype="<f4").tobytes()).decode()


def queries_of(req: SearchRequest | UpsertRequest, d: int) -> np.ndarray | None:
    """The (n, d) float32 vectors of a request, or None when it searches by ids."""
    if isinstance(req, SearchRequest) and req._matrix is not None:
        return req._matrix  # its dimension is checked with every query's (planner.prepare)
    if req.vectors is not None:
        if not req.vectors:
            return np.empty((0, d), dtype=np.float32)  # the planner says why that is wrong
        try:
            return np.asarray(req.vectors, dtype=np.float32).reshape(len(req.vectors), -1)
        except ValueError:
            raise BadRequest("vectors must all have the same length") from None
    if req.vectors_b64 is not None:
        try:
            raw = base64.b64decode(req.vectors_b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("vectors_b64 is not valid base64") from None
        if len(raw) == 0 or len(raw) % (4 * d):
            raise BadRequest(
                f"vectors_b64 holds {len(raw)} bytes, not a positive multiple of 4 * d = {4 * d}"
            )
        return np.frombuffer(raw, dtype="<f4").reshape(-1, d).astype(np.float32)
    return None


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The request body, refused (BodyTooLarge) as soon as it passes ``max_bytes``: by its
    Content-Length before anything is read, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length {declared!r}") from None
        if size > max_bytes:
            raise BodyTooLarge(f"request body is {size:,} bytes; the limit is {max_bytes:,}")
    parts, got = [], 0
    async for chunk in request.stream():
        got += len(chunk)
        if got > max_bytes:
            raise BodyTooLarge(f"request body is over the limit of {max_bytes:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


def response_body(result: dict[str, Any], arrays: bool = True) -> dict[str, Any]:
    """JSON body of a search result: padding and non-finite scores become null, metadata
    values of every Arrow type become JSON values (``jsonable``); ``arrays=False``: without
    ids and scores (a frame's header)."""
    body: dict[str, Any] = {}
    if arrays:
        scores = padded_scores(result["D"], result["I"]).tolist()
        body["ids"] = result["I"].tolist()
        body["scores"] = [[None if s != s else s for s in row] for row in scores]
    body |= {
        "coverage": result["coverage"],
        "degraded": result["degraded"],
        "index_version": result["index_version"],
        "sequence": result.get("sequence", 0),
        "took_ms": result["took_ms"],
    }
    if result.get("plan") is not None:
        body["plan"] = result["plan"]
        body["shard_plans"] = {str(n): p for n, p in result["shard_plans"].items()}
    if result.get("metadata") is not None:
        body["metadata"] = jsonable(result["metadata"])
    return body


def response_frame(result: dict[str, Any]) -> bytes:
    """A search result as a binary frame (``vsearch.frames``): the JSON answer's fields in
    the header, ids and scores (NaN where there is no result) as arrays."""
    body = response_body(result, arrays=False)
    I = result["I"].astype(np.int64, copy=False)
    scores = padded_scores(result["D"], I).astype(np.float32, copy=False)
    return frames.encode(frames.ANSWER, body, I, scores)


def padded_scores(D: np.ndarray, I: np.ndarray) -> np.ndarray:
    """``D`` with NaN where there is no result (id -1) or the score is not finite."""
    return np.where((I >= 0) & np.isfinite(D), D, np.nan)


OFF_LOOP_BYTES = 64 << 10  # bodies from this size are parsed in a thread, not on the loop
OFF_LOOP_RESULTS = 8192  # answers with this many (query, result) pairs are encoded in one


async def off_loop(fn: Callable[..., T], *args: Any, size: int, threshold: int) -> T:
    """``fn(*args)`` in a worker thread when ``size`` reaches ``threshold``, else inline.

    Parsing or encoding a large JSON body takes milliseconds of the router's event loop,
    which every other request on the replica waits for; in a thread the loop keeps
    answering between the interpreter's switches. Small bodies stay inline: a thread hop
    costs more than they do."""
    if size >= threshold:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def response_json(result: dict[str, Any]) -> str:
    """``response_body`` serialised (strict JSON: a NaN left anywhere is a bug, not output)."""
    return json.dumps(response_body(result), allow_nan=False)


def jsonable(value: Any) -> Any:
    """``value`` (from Arrow's ``to_pylist``) as JSON values: dates and times as ISO 8601
    strings, durations as seconds, decimals as strings (exact), bytes as base64, non-finite
    floats as null, nested lists and maps recursively."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], tuple) and len(value[0]) == 2:
            return {str(k): jsonable(v) for k, v in value}  # an Arrow map: (key, value) pairs
        return [jsonable(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return str(value)


def error_body(exc: VsearchError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message}}
