"""Request bodies and answers of the HTTP contract, shared by ``Client`` and
``AsyncClient``: numpy in (searches as binary frames, writes as base64 float32), numpy out."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vsearch import frames


@dataclass
class SearchResult:
    """``ids`` (nq, k) int64, -1 where fewer than k matched; ``scores`` (nq, k) float32,
    NaN there (distances for l2, similarities for ip and cosine)."""

    ids: np.ndarray
    scores: np.ndarray
    coverage: float
    degraded: bool
    index_version: str
    sequence: int
    took_ms: float
    metadata: list[list[dict[str, Any] | None]] | None = None
    plan: str | None = None

    def hits(self, q: int = 0) -> list[tuple[int, float, dict[str, Any] | None]]:
        """Query ``q``'s results without the padding: ``(id, score, metadata)``."""
        out = []
        for j, i in enumerate(self.ids[q].tolist()):
            if i >= 0:
                meta = None if self.metadata is None else self.metadata[q][j]
                out.append((i, float(self.scores[q, j]), meta))
        return out


@dataclass
class Rows:
    """Stored rows (``Client.get``): ``ids`` (n,) int64, their ``metadata`` and ``vectors``
    (n, d) float32 when asked for; ``next_after``: the ``after`` of the next page."""

    ids: np.ndarray
    metadata: list[dict[str, Any] | None] | None
    vectors: np.ndarray | None
    sequence: int
    index_version: str
    next_after: int | None = None


@dataclass
class WriteResult:
    """``sequence``: the write's position in the log (search with it as ``min_sequence``
    to read it back); ``count``: rows upserted, or ids deleted that were live (None when
    the service could not count them in time)."""

    sequence: int
    count: int | None


def matrix(x: Any, what: str = "vectors") -> np.ndarray:
    """``x`` as a C-contiguous (n, d) float32 matrix (one vector becomes (1, d))."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{what} must be (n, d) or (d,), got shape {a.shape}")
    return np.ascontiguousarray(a)


def b64(x: np.ndarray) -> str:
    return base64.b64encode(x.astype("<f4", copy=False).tobytes()).decode()


def id_list(ids: Any) -> list[int]:
    a = np.asarray(ids).ravel()
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {a.dtype}")
    return [int(i) for i in a]


def search_options(
    vectors: Any,
    ids: Any,
    texts: Sequence[str] | None,
    k: int,
    params: dict[str, Any] | None,
    filter: dict[str, Any] | None,
    **extra: Any,
) -> dict[str, Any]:
    """A search body without its vectors (with its ids or texts)."""
    if sum(v is not None for v in (vectors, ids, texts)) != 1:
        raise ValueError("give exactly one of vectors, ids or texts")
    body: dict[str, Any] = {"k": k}
    if ids is not None:
        body["ids"] = id_list(ids)
    elif texts is not None:
        body["texts"] = text_list(texts)
    if params:
        body["params"] = dict(params)
    if filter:
        body["filter"] = filter
    body.update({n: v for n, v in extra.items() if v is not None})
    return body


def search_requests(
    vectors: Any, ids: Any, texts: Any, *args: Any, **extra: Any
) -> Iterator[dict[str, Any]]:
    """httpx's keyword arguments for a search, in the order to try them: queries as a binary
    frame (``frames``), then as base64 JSON for a service from before frames (it answers
    415); ids or texts as JSON. Every form asks for the answer as a frame. The arguments are
    checked now; the base64 form is encoded only when it is asked for."""
    body = search_options(vectors, ids, texts, *args, **extra)
    accept = {"accept": f"{frames.MEDIA_TYPE}, application/json"}
    if vectors is None:
        return iter([{"json": body, "headers": accept}])
    x = matrix(vectors, "query vectors")
    frame = frames.encode(frames.REQUEST, body, x)

    def forms() -> Iterator[dict[str, Any]]:
        yield {"content": frame, "headers": {**accept, "content-type": frames.MEDIA_TYPE}}
        yield {"json": {**body, "vectors_b64": b64(x)}, "headers": accept}

    return forms()


def search_result(body: dict[str, Any] | bytes) -> SearchResult:
    """A search answer, JSON or a binary frame."""
    if isinstance(body, bytes):
        body, (ids, scores) = frames.decode(body, frames.ANSWER, [np.int64, np.float32])
    else:
        raw = body["scores"]
        ids = np.asarray(body["ids"], dtype=np.int64).reshape(len(raw), -1)
        scores = np.array(
            [[np.nan if s is None else s for s in row] for row in raw], dtype=np.float32
        ).reshape(ids.shape)
    return SearchResult(
        ids=ids,
        scores=scores,
        coverage=body["coverage"],
        degraded=body["degraded"],
        index_version=body["index_version"],
        sequence=body.get("sequence", 0),
        took_ms=body["took_ms"],
        metadata=body.get("metadata"),
        plan=body.get("plan"),
    )


def text_list(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    return [str(t) for t in texts]


def upsert_body(
    ids: Any,
    vectors: Any,
    metadata: Sequence[dict[str, Any] | None] | None,
    key: str | None,
    texts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """An upsert; ``key``: its idempotency key (a new one when None, so that the client's
    retries of this call are applied once)."""
    if (vectors is None) == (texts is None):
        raise ValueError("give vectors or texts (embedded by the service), not both")
    body: dict[str, Any] = {"ids": id_list(ids), "idempotency_key": key or uuid.uuid4().hex}
    if texts is not None:
        body["texts"] = text_list(texts)
    else:
        body["vectors_b64"] = b64(matrix(vectors))
    if metadata is not None:
        body["metadata"] = list(metadata)
    return body


def delete_body(ids: Any, key: str | None) -> dict[str, Any]:
    return {"ids": id_list(ids), "idempotency_key": key or uuid.uuid4().hex}


def written(body: dict[str, Any], count: str) -> WriteResult:
    return WriteResult(body["sequence"], body.get(count))


def get_body(ids, filter, limit, after, include_vectors, columns, min_sequence) -> dict:
    body: dict[str, Any] = {"include_vectors": include_vectors}
    if ids is not None:  # the service refuses ids with a filter, limit or after
        body["ids"] = id_list(ids)
    if limit is not None:
        body["limit"] = limit
    if filter:
        body["filter"] = filter
    if after is not None:
        body["after"] = int(after)
    if columns is not None:
        body["columns"] = list(columns)
    if min_sequence:
        body["min_sequence"] = int(min_sequence)
    return body


def rows_of(body: dict[str, Any]) -> Rows:
    vectors = body.get("vectors")
    return Rows(
        ids=np.asarray(body["ids"], dtype=np.int64),
        metadata=body.get("metadata"),
        vectors=None
        if vectors is None
        else np.asarray(vectors, np.float32).reshape(len(body["ids"]), -1),
        sequence=body["sequence"],
        index_version=body["index_version"],
        next_after=body.get("next_after"),
    )
