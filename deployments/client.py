"""A small typed client over the Serve handle: numpy in, numpy out, no JSON."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve


@dataclass
class SearchResult:
    """``D``/``I`` are (nq, k) float32 / int64, -1 padded, like faiss."""

    D: np.ndarray
    I: np.ndarray
    coverage: float
    degraded: bool
    index_version: str
    took_ms: float
    sequence: int = 0  # the mutation sequence every answering shard had applied
    metadata: list[list[dict[str, Any] | None]] | None = None
    plan: str | None = None  # with a filter: exact, ann, ann-cpu or mixed
    shard_plans: dict[int, str] | None = None


class VsearchClient:
    """Calls the router of a running vsearch application through a deployment handle."""

    def __init__(self, app_name: str = "vsearch") -> None:
        self.handle = serve.get_app_handle(app_name)
        # With RAY_SERVE_THROUGHPUT_OPTIMIZED=1 a driver's .result() needs the handle's router
        # on its own event loop (Ray 2.60; a private option of DeploymentHandle._init).
        # (TypeError/RuntimeError: an older Ray without the option, or already initialised)
        with contextlib.suppress(TypeError, RuntimeError):
            self.handle._init(_run_router_in_separate_loop=True)

    def search(
        self,
        xq: np.ndarray | None = None,
        k: int = 10,
        params: dict[str, Any] | None = None,
        *,
        ids: list[int] | np.ndarray | None = None,
        min_coverage: float = 1.0,
        deadline_ms: int | None = None,
        include_metadata: bool = False,
        min_sequence: int = 0,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        timeout_s: float = 60.0,
    ) -> SearchResult:
        """Search by vectors ``xq`` (nq, d) or by stored ``ids``; raises vsearch's typed errors.

        ``min_sequence``: a write's ``sequence``; the answer then includes that write.
        ``filter``: a metadata predicate (``{"lang": "en", "year": {"$gte": 2000}}``)."""
        response = self.handle.search.remote(
            None if xq is None else np.asarray(xq, dtype=np.float32),
            k,
            params,
            ids=ids,
            min_coverage=min_coverage,
            deadline_ms=deadline_ms,
            include_metadata=include_metadata,
            min_sequence=min_sequence,
            filter=filter,
            score_threshold=score_threshold,
        )
        return SearchResult(**_result(response, timeout_s))

    def upsert(
        self,
        ids: list[int] | np.ndarray,
        vectors: np.ndarray,
        metadata: list[dict[str, Any] | None] | None = None,
        *,
        timeout_s: float = 60.0,
        idempotency_key: str | None = None,
    ) -> int:
        """Insert or replace ``vectors`` (n, d) under ``ids``; returns the write's sequence
        once durable (pass it as ``min_sequence`` to read it back). With an
        ``idempotency_key``, a retry after a lost answer is not applied twice."""
        x = np.asarray(vectors, dtype=np.float32)
        response = self.handle.upsert.remote(
            np.asarray(ids), x, metadata, idempotency_key=idempotency_key
        )
        return int(_result(response, timeout_s)["sequence"])

    def delete(
        self,
        ids: list[int] | np.ndarray,
        *,
        timeout_s: float = 60.0,
        idempotency_key: str | None = None,
    ) -> tuple[int, int]:
        """Delete ``ids``; returns ``(sequence, deleted)`` (deleted: how many were live)."""
        call = self.handle.delete.remote(np.asarray(ids), idempotency_key=idempotency_key)
        out = _result(call, timeout_s)
        return int(out["sequence"]), out["deleted"]


def _result(response: Any, timeout_s: float) -> dict[str, Any]:
    try:
        return response.result(timeout_s=timeout_s)
    except Exception as exc:  # re-raise the replica's own error type (InvalidQuery, ...)
        raise (getattr(exc, "cause", None) or exc) from None
