"""The typed errors of vsearch, each carrying the HTTP status the service maps it to."""

from __future__ import annotations


class VsearchError(Exception):
    """Base class of every error vsearch raises on purpose."""

    status_code = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # pickle cleanly across processes (Ray re-raises remotely)
        return (type(self), (self.message,))


class InvalidQuery(VsearchError):
    """The query itself is wrong: shape, dtype, NaN/Inf, k or an override out of range."""

    status_code = 400
    code = "invalid_query"


class InvalidInput(VsearchError):
    """Build input is wrong: missing column, bad dtype, mismatched lengths, duplicate ids."""

    status_code = 400
    code = "invalid_input"


class UnknownId(VsearchError):
    """An id asked for (search by id, metadata lookup) is not in the index."""

    status_code = 404
    code = "unknown_id"


class TargetUnreachable(InvalidQuery):
    """No tuned parameter set reaches the requested recall."""

    code = "target_unreachable"


class IndexLoadError(VsearchError):
    """An index artefact cannot be used; the message names the file."""

    status_code = 503
    code = "index_unavailable"

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        return (type(self), (self.message, self.path))


class MissingFile(IndexLoadError):
    """A file listed in (or needed by) the manifest does not exist."""

    code = "missing_file"


class CorruptFile(IndexLoadError):
    """A file's size or sha256 does not match the manifest, or faiss cannot read it."""

    code = "corrupt_file"


class ManifestMismatch(IndexLoadError):
    """The manifest and the files disagree (dim, metric, counts) or the manifest is invalid."""

    code = "manifest_mismatch"


class CorruptLogSegment(IndexLoadError):
    """A mutation log segment fails its checksum or cannot be decoded (it is named); the
    mutations before it still serve, none after it is applied, and writes are refused."""

    code = "corrupt_log_segment"


class LogRetired(IndexLoadError):
    """The log no longer holds the mutations a version needs (they were retired after a
    compaction included them): open a newer version."""

    code = "log_retired"


class LogGap(IndexLoadError):
    """A logged mutation arrived that does not follow the applied sequence: the ones in
    between must be read from the log first (never skipped)."""

    code = "log_gap"


class DeltaFull(VsearchError):
    """The shards' deltas hold ``max_delta_rows``: writes wait for the compaction that
    was started (retry after it; ``/v1/stats`` shows its state)."""

    status_code = 503
    code = "delta_full"


class UnsupportedOperation(VsearchError):
    """The operation is not possible for this index type or configuration."""

    status_code = 400
    code = "unsupported"


class GpuUnavailable(VsearchError):
    """A GPU was asked for but this process has no usable one (or no GPU faiss build)."""

    status_code = 503
    code = "gpu_unavailable"


class GpuOutOfMemory(VsearchError):
    """The shard does not fit in the GPU's free memory; nothing was cloned."""

    status_code = 503
    code = "gpu_out_of_memory"


class GpuUnsupportedIndex(VsearchError):
    """The index type has no GPU form (or needs cuVS, which this faiss build lacks)."""

    status_code = 503
    code = "gpu_unsupported_index"


class VersionMismatch(VsearchError):
    """A shard replica does not hold the index version a query is pinned to (retryable:
    another replica of the shard may hold it)."""

    status_code = 503
    code = "version_unavailable"


class SequenceBehind(VersionMismatch):
    """A shard replica has not applied the mutation sequence a query asks for yet
    (retryable: it catches up within milliseconds, or another replica has)."""

    code = "sequence_unavailable"


class IdempotencyConflict(VsearchError):
    """An idempotency key was used again for a write of other contents (a retry must send
    the same write)."""

    status_code = 409
    code = "idempotency_conflict"


class ConcurrentUpdate(VsearchError):
    """CURRENT moved while a new version was written from it: publish again from the new
    CURRENT (one writer at a time per index root)."""

    status_code = 409
    code = "concurrent_update"
