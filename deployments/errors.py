"""Service errors (on top of ``shards.errors``), each with its HTTP status."""

from __future__ import annotations

from shards.errors import InvalidQuery, VsearchError


class BadRequest(InvalidQuery):
    """The HTTP body is malformed or does not match the request schema."""

    code = "bad_request"


class Unauthorized(VsearchError):
    status_code = 401
    code = "unauthorized"


class UnsupportedMediaType(VsearchError):
    """The request body is not declared as JSON."""

    status_code = 415
    code = "unsupported_media_type"


class BodyTooLarge(VsearchError):
    status_code = 413
    code = "body_too_large"


class ShardsUnavailable(VsearchError):
    """Fewer shards answered than ``min_coverage`` needs, and not for lack of time."""

    status_code = 503
    code = "shards_unavailable"


class DeadlineExceeded(VsearchError):
    """The deadline passed before enough shards answered for ``min_coverage``."""

    status_code = 504
    code = "deadline_exceeded"


class MetricsNotReady(VsearchError):
    """Ray has not exported the replicas' metrics yet (it does every few seconds)."""

    status_code = 503
    code = "metrics_not_ready"


class EmbeddingMismatch(VsearchError):
    """The application's embedding model does not give vectors of the index's dimension."""

    status_code = 503
    code = "embedding_mismatch"
