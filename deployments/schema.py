"""The HTTP contract's bodies as pydantic models: requests (read strictly), answers and
errors (for the OpenAPI document). Parsing and encoding are ``deployments.http``'s."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

# request bodies: unknown fields refused, and no type is coerced into another ("k": true or
# "k": 2.5 or "vectors": [["1"]] are 400s, as the handle refuses them, not k=1 or a 1.0)
STRICT = ConfigDict(extra="forbid", strict=True)


class SearchOptions(BaseModel):
    """How to search: everything in a search body but the queries (a binary frame's header
    holds these, ``vsearch.frames``)."""

    model_config = STRICT

    k: int = Field(10, description="results per query")
    params: dict[str, Any] | None = Field(
        None, description="nprobe, ef_search, quantizer_ef_search, k_factor, target_recall"
    )
    min_coverage: float = Field(1.0, ge=0.0, le=1.0, description="fraction of shards required")
    deadline_ms: int | None = Field(None, description="default from the service limits")
    include_metadata: bool = False
    min_sequence: int = Field(
        0,
        ge=0,
        description="answer from shards that applied this write sequence (read-your-writes)",
    )
    filter: dict[str, Any] | None = Field(
        None,
        description='metadata predicate: {"lang": "en", "year": {"$gte": 2000}}; operators '
        "$eq $ne $gt $gte $lt $lte $in $nin $exists, combinators $and $or $not",
    )
    score_threshold: float | None = Field(
        None,
        description="only results within this distance (l2) or at least this similarity "
        "(ip, cosine); the rest of the k is null",
    )


class SearchRequest(SearchOptions):
    """Body of POST /v1/search: exactly one of ``vectors``, ``vectors_b64``, ``ids`` or
    ``texts``; or a binary frame of float32 queries (``application/octet-stream``,
    ``vsearch.frames``)."""

    vectors: list[list[float]] | None = Field(None, description="queries, one list per vector")
    vectors_b64: str | None = Field(None, description="base64 of little-endian float32, row-major")
    ids: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] | None = Field(
        None, description="search with these stored vectors (ids in [0, 2**63))"
    )
    texts: list[str] | None = Field(
        None, description="queries as texts, embedded by the app's model (args.embedding)"
    )
    _matrix: np.ndarray | None = PrivateAttr(None)  # the queries of a binary frame

    @model_validator(mode="after")
    def _one_query_form(self) -> SearchRequest:
        forms = ("vectors", "vectors_b64", "ids", "texts")
        given = [n for n in forms if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of vectors, vectors_b64, ids, texts (got {given or 'none'})"
            )
        return self


class WriteOptions(BaseModel):
    """What every write body may add: its deadline and its idempotency key."""

    model_config = STRICT

    deadline_ms: int | None = Field(
        None,
        description="stop waiting for the write to be durable after this long (a 504: it may "
        "still be applied; retry with the same idempotency_key); default: wait for the log",
    )
    idempotency_key: str | None = Field(
        None,
        description="unique per write (e.g. a UUID), sent again on a retry: a write already "
        "logged under it is answered again, not applied twice",
    )


class UpsertRequest(WriteOptions):
    """Body of POST /v1/upsert: ids with ``vectors`` or ``vectors_b64``, optional metadata."""

    model_config = STRICT

    ids: list[int] = Field(..., description="ids in [0, 2**63); an existing id is replaced")
    vectors: list[list[float]] | None = Field(None, description="one list per id")
    vectors_b64: str | None = Field(None, description="base64 of little-endian float32, row-major")
    texts: list[str] | None = Field(
        None, description="one text per id, embedded by the app's model (args.embedding)"
    )
    metadata: list[dict[str, Any] | None] | None = Field(
        None, description="one object per id: columns of the index's metadata schema"
    )

    @model_validator(mode="after")
    def _one_vector_form(self) -> UpsertRequest:
        given = [n for n in ("vectors", "vectors_b64", "texts") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of vectors, vectors_b64, texts (got {given})")
        return self


class DeleteRequest(WriteOptions):
    """Body of POST /v1/delete."""

    model_config = STRICT

    ids: list[int] = Field(..., description="ids to delete; absent ones are not an error")


class GetRequest(BaseModel):
    """Body of POST /v1/get: stored rows by ``ids``, or a page of the rows matching
    ``filter`` (every row without one), in id order from ``after``."""

    model_config = STRICT

    ids: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] | None = Field(
        None, description="these rows (the live ones, in this order)"
    )
    filter: dict[str, Any] | None = Field(None, description="the form of a search filter")
    limit: int | None = Field(None, description="rows per page (default 100, at most 10,000)")
    after: int | None = Field(None, description="the page after this id (next_after)")
    include_vectors: bool = Field(False, description="the stored vectors too")
    columns: list[str] | None = Field(None, description="metadata columns (default: all)")
    min_sequence: int = Field(0, ge=0, description="read-your-writes, as for search")
    deadline_ms: int | None = None


class GetResponse(BaseModel):
    """Body of a successful get."""

    ids: list[int]
    metadata: list[dict[str, Any] | None] | None = None
    vectors: list[list[float]] | None = Field(None, description="as stored (cosine: unit)")
    next_after: int | None = Field(None, description="pass as after for the next page")
    sequence: int
    index_version: str


class WriteResponse(BaseModel):
    """Body of a successful write."""

    sequence: int = Field(..., description="the write's log position: use as min_sequence")
    upserted: int | None = None
    deleted: int | None = Field(None, description="ids that were live (null: not counted yet)")


class ErrorDetail(BaseModel):
    code: str = Field(..., description="stable machine-readable code, e.g. invalid_query")
    message: str = Field(..., description="what is wrong, for a person")


class ErrorBody(BaseModel):
    """Body of every error answer."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses."""
    what = {
        400: "invalid request (schema, dimension, NaN/Inf, k, overrides, deadline)",
        401: "missing or wrong bearer token (when auth is on)",
        404: "unknown id",
        409: "the idempotency key was used for another write",
        413: "body larger than the limit",
        415: "body not JSON (a search may also be a binary frame, application/octet-stream)",
        429: "overloaded (with Retry-After), when overload_status is 429",
        503: "overloaded (with Retry-After), too few shards, or index unavailable",
        504: "the deadline passed before enough shards answered",
    }
    return {s: {"model": ErrorBody, "description": what[s]} for s in statuses}


class SearchResponse(BaseModel):
    """Body of a successful search (documented in OpenAPI)."""

    ids: list[list[int]]
    scores: list[list[float | None]]
    coverage: float
    degraded: bool
    index_version: str
    sequence: int = Field(0, description="mutation sequence all answering shards had applied")
    plan: str | None = Field(
        None,
        description="with a filter: exact (brute force over the matching rows: an exact "
        "answer), ann (the index with the filter, widened), ann-cpu (on the CPU copy of a GPU "
        "replica), or mixed (shards differed: see shard_plans)",
    )
    shard_plans: dict[str, str] | None = None
    took_ms: float
    metadata: list[list[dict[str, Any] | None]] | None = None
