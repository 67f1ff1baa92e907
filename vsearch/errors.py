"""The service's typed errors, raised by the client from the answer's ``error.code``.

Every error the service documents (``{"error": {"code", "message"}}``) has a class here of
the same name, so that ``except vsearch.UnknownId`` reads like the service's own code.
"""

from __future__ import annotations


class VsearchError(Exception):
    """Base of every error the client raises: ``status`` (HTTP, 0 when none came back),
    ``code`` (stable, machine-readable), ``message`` (for a person) and ``retry_after``
    (seconds, when the service said to come back later)."""

    status_code = 500
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = self.status_code if status is None else status
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}"


class ConnectionFailed(VsearchError):
    """No answer: the service could not be reached, or the connection broke or timed out."""

    status_code = 0
    code = "connection_failed"


class InvalidQuery(VsearchError):
    status_code = 400
    code = "invalid_query"


class BadRequest(InvalidQuery):
    code = "bad_request"


class TargetUnreachable(InvalidQuery):
    code = "target_unreachable"


class InvalidInput(VsearchError):
    status_code = 400
    code = "invalid_input"


class UnsupportedOperation(VsearchError):
    status_code = 400
    code = "unsupported"


class Unauthorized(VsearchError):
    status_code = 401
    code = "unauthorized"


class UnknownId(VsearchError):
    status_code = 404
    code = "unknown_id"


class NotFound(VsearchError):
    """A route or collection that does not exist."""

    status_code = 404
    code = "http_404"


class IdempotencyConflict(VsearchError):
    status_code = 409
    code = "idempotency_conflict"


class ConcurrentUpdate(VsearchError):
    status_code = 409
    code = "concurrent_update"


class BodyTooLarge(VsearchError):
    status_code = 413
    code = "body_too_large"


class UnsupportedMediaType(VsearchError):
    status_code = 415
    code = "unsupported_media_type"


class Overloaded(VsearchError):
    """The service shed the request (429 or 503 with ``Retry-After``), after the retries."""

    status_code = 503
    code = "overloaded"


class ShardsUnavailable(VsearchError):
    status_code = 503
    code = "shards_unavailable"


class IndexLoadError(VsearchError):
    status_code = 503
    code = "index_unavailable"


class MissingFile(IndexLoadError):
    code = "missing_file"


class CorruptFile(IndexLoadError):
    code = "corrupt_file"


class ManifestMismatch(IndexLoadError):
    code = "manifest_mismatch"


class CorruptLogSegment(IndexLoadError):
    code = "corrupt_log_segment"


class LogRetired(IndexLoadError):
    code = "log_retired"


class LogGap(IndexLoadError):
    code = "log_gap"


class DeltaFull(VsearchError):
    status_code = 503
    code = "delta_full"


class GpuUnavailable(VsearchError):
    status_code = 503
    code = "gpu_unavailable"


class GpuOutOfMemory(VsearchError):
    status_code = 503
    code = "gpu_out_of_memory"


class GpuUnsupportedIndex(VsearchError):
    status_code = 503
    code = "gpu_unsupported_index"


class VersionMismatch(VsearchError):
    status_code = 503
    code = "version_unavailable"


class SequenceBehind(VersionMismatch):
    code = "sequence_unavailable"


class MetricsNotReady(VsearchError):
    status_code = 503
    code = "metrics_not_ready"


class EmbeddingMismatch(VsearchError):
    status_code = 503
    code = "embedding_mismatch"


class DeadlineExceeded(VsearchError):
    status_code = 504
    code = "deadline_exceeded"


def _classes(base: type[VsearchError]) -> list[type[VsearchError]]:
    out = []
    for sub in base.__subclasses__():
        out += [sub, *_classes(sub)]
    return out


BY_CODE: dict[str, type[VsearchError]] = {c.code: c for c in _classes(VsearchError)}


def from_answer(status: int, body: object, retry_after: float | None = None) -> VsearchError:
    """The error of an answer with HTTP ``status`` and decoded JSON ``body`` (or text)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code, message = error["code"], str(error.get("message", ""))
    else:  # not the service's JSON (a proxy's answer): typed by its status
        code = (
            "overloaded" if status == 429 or (status == 503 and retry_after) else f"http_{status}"
        )
        message = body if isinstance(body, str) and body else f"HTTP {status}"
    cls = BY_CODE.get(code)
    if cls is None:
        by_status = [c for c in BY_CODE.values() if c.status_code == status]
        cls = by_status[0] if by_status else VsearchError
    return cls(str(message)[:2000], status=status, code=code, retry_after=retry_after)
