"""``Client`` and ``AsyncClient``: the HTTP API of a vsearch service from Python.

Bounded retries: an answer of 429, or 503 with ``Retry-After`` (the service shedding
load), is retried after the time it asks for (capped), and a connection that failed or
timed out is retried with backoff. Writes carry an idempotency key (made per call unless
given), so a retried write is never applied twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from vsearch import _wire, frames
from vsearch._wire import Rows, SearchResult, WriteResult
from vsearch.errors import ConnectionFailed, UnsupportedMediaType, VsearchError, from_answer

DEFAULT_URL = "http://127.0.0.1:8000"
RETRYABLE = (httpx.TransportError,)  # connect, read and write errors and timeouts


class _Base:
    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float,
        retries: int,
        max_retry_wait_s: float,
        collection: str | None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.retries, self.max_retry_wait_s = retries, max_retry_wait_s
        self.prefix = "" if collection is None else f"/v1/collections/{collection}"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout

    def _path(self, route: str) -> str:
        """``route`` (``/v1/search``...) under this client's collection, if any."""
        if self.prefix and route.startswith("/v1/"):
            return self.prefix + route[3:]
        return route

    def _outcome(self, response: httpx.Response) -> Any:
        """The decoded body of a 2xx answer; the typed error of any other."""
        if response.is_success:
            if response.headers.get("content-type", "").startswith(frames.MEDIA_TYPE):
                return response.content  # a binary frame (``vsearch.frames``)
            return response.json() if response.content else None
        try:
            body: Any = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = response.text
        return from_answer(response.status_code, body, _retry_after(response))

    def _wait(self, attempt: int, error: VsearchError) -> float | None:
        """Seconds to wait before retry ``attempt`` (1, 2, ...) after ``error``; None: raise."""
        if attempt > self.retries:
            return None
        if isinstance(error, ConnectionFailed):
            return min(self.max_retry_wait_s, 0.1 * 2 ** (attempt - 1))
        if error.status in (429, 503) and error.retry_after is not None:
            return min(self.max_retry_wait_s, error.retry_after)
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: treated as no hint


def _failed(exc: httpx.TransportError, method: str, url: str) -> ConnectionFailed:
    return ConnectionFailed(f"{method} {url}: {type(exc).__name__}: {exc}")


class Client(_Base):
    """A vsearch service over HTTP. ``url``: its base (with the application's route
    prefix, if any); ``token``: the bearer token when auth is on; ``collection``: one
    collection of a multi-collection service (the default one when None)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        max_retry_wait_s: float = 10.0,
        collection: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout, retries, max_retry_wait_s, collection)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(
        self, method: str, route: str, body: dict[str, Any] | None = None, **send: Any
    ) -> Any:
        """``method route`` with a JSON ``body`` (or httpx's ``send`` arguments), retried
        as the class says; the decoded answer."""
        path = self._path(route)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, **{"json": body, **send})
                out = self._outcome(response)
            except RETRYABLE as exc:
                out = _failed(exc, method, self.url + path)
            if not isinstance(out, VsearchError):
                return out
            wait = self._wait(attempt, out)
            if wait is None:
                raise out
            time.sleep(wait)

    def search(
        self,
        vectors: Any = None,
        k: int = 10,
        *,
        ids: Any = None,
        texts: Sequence[str] | None = None,
        params: dict[str, Any] | None = None,
        filter: dict[str, Any] | None = None,
        min_sequence: int | None = None,
        deadline_ms: int | None = None,
        include_metadata: bool = False,
        score_threshold: float | None = None,
        min_coverage: float | None = None,
    ) -> SearchResult:
        """The ``k`` nearest stored vectors of each of ``vectors`` ((nq, d) or (d,)), or of
        the stored vectors of ``ids``, or of ``texts`` (embedded by the service's model);
        ``params``: per-request overrides (nprobe,
        ef_search, k_factor, target_recall...); ``filter``: a metadata predicate;
        ``min_sequence``: a write's sequence, to read it back."""
        forms = _wire.search_requests(
            vectors, ids, texts, k, params, filter, min_sequence=min_sequence,
            deadline_ms=deadline_ms, include_metadata=include_metadata or None,
            score_threshold=score_threshold, min_coverage=min_coverage,
        )  # fmt: skip
        refused: UnsupportedMediaType | None = None
        for send in forms:  # the next form is built only when one is refused
            try:
                return _wire.search_result(self._call("POST", "/v1/search", **send))
            except UnsupportedMediaType as exc:  # a service from before binary frames
                refused = exc
        assert refused is not None
        raise refused

    def upsert(
        self,
        ids: Any,
        vectors: Any = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        *,
        texts: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> WriteResult:
        """Insert or replace ``vectors`` (or the vectors of ``texts``, embedded by the
        service) under ``ids`` with optional ``metadata`` rows; returns once durable."""
        body = _wire.upsert_body(ids, vectors, metadata, idempotency_key, texts)
        return _wire.written(self._call("POST", "/v1/upsert", body), "upserted")

    def delete(self, ids: Any, *, idempotency_key: str | None = None) -> WriteResult:
        """Delete ``ids`` (absent ones are no error); ``count``: how many were live."""
        body = _wire.delete_body(ids, idempotency_key)
        return _wire.written(self._call("POST", "/v1/delete", body), "deleted")

    def get(
        self,
        ids: Any = None,
        *,
        filter: dict[str, Any] | None = None,
        limit: int | None = None,
        after: int | None = None,
        include_vectors: bool = False,
        columns: list[str] | None = None,
        min_sequence: int | None = None,
    ) -> Rows:
        """Stored rows: the live ones of ``ids`` in that order; or a page of ``limit`` rows
        (100 by default) matching ``filter`` (all rows without one) in id order after id
        ``after``."""
        body = _wire.get_body(ids, filter, limit, after, include_vectors, columns, min_sequence)
        return _wire.rows_of(self._call("POST", "/v1/get", body))

    def scan(
        self, filter: dict[str, Any] | None = None, *, page: int = 1000, **kw: Any
    ) -> Iterator[Rows]:
        """Every live row matching ``filter``, a page at a time (``get`` with ``after``)."""
        after = None
        while True:
            rows = self.get(filter=filter, limit=page, after=after, **kw)
            if len(rows.ids):
                yield rows
            if rows.next_after is None:
                return
            after = rows.next_after

    def stats(self) -> dict[str, Any]:
        """The service's state: index version, shards and their replicas, the log."""
        return self._call("GET", "/v1/stats")

    def ready(self) -> bool:
        """True when every shard answers from the active version."""
        try:
            return bool(self._call("GET", "/v1/ready")["ready"])
        except VsearchError as exc:
            if exc.status == 503 or isinstance(exc, ConnectionFailed):
                return False
            raise

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until ``ready`` (TimeoutError after ``timeout_s``)."""
        end = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > end:
                raise TimeoutError(f"{self.url} was not ready within {timeout_s} s")
            time.sleep(0.5)


class AsyncClient(_Base):
    """``Client`` for asyncio: the same methods, awaited."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        max_retry_wait_s: float = 10.0,
        collection: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout, retries, max_retry_wait_s, collection)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _call(
        self, method: str, route: str, body: dict[str, Any] | None = None, **send: Any
    ) -> Any:
        """``method route`` with a JSON ``body`` (or httpx's ``send`` arguments), retried
        as the class says; the decoded answer."""
        path = self._path(route)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(method, path, **{"json": body, **send})
                out = self._outcome(response)
            except RETRYABLE as exc:
                out = _failed(exc, method, self.url + path)
            if not isinstance(out, VsearchError):
                return out
            wait = self._wait(attempt, out)
            if wait is None:
                raise out
            await asyncio.sleep(wait)

    async def search(
        self,
        vectors: Any = None,
        k: int = 10,
        *,
        ids: Any = None,
        texts: Sequence[str] | None = None,
        params: dict[str, Any] | None = None,
        filter: dict[str, Any] | None = None,
        min_sequence: int | None = None,
        deadline_ms: int | None = None,
        include_metadata: bool = False,
        score_threshold: float | None = None,
        min_coverage: float | None = None,
    ) -> SearchResult:
        """``Client.search``."""
        forms = _wire.search_requests(
            vectors, ids, texts, k, params, filter, min_sequence=min_sequence,
            deadline_ms=deadline_ms, include_metadata=include_metadata or None,
            score_threshold=score_threshold, min_coverage=min_coverage,
        )  # fmt: skip
        refused: UnsupportedMediaType | None = None
        for send in forms:  # the next form is built only when one is refused
            try:
                return _wire.search_result(await self._call("POST", "/v1/search", **send))
            except UnsupportedMediaType as exc:  # a service from before binary frames
                refused = exc
        assert refused is not None
        raise refused

    async def upsert(
        self,
        ids: Any,
        vectors: Any = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        *,
        texts: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> WriteResult:
        """``Client.upsert``."""
        body = _wire.upsert_body(ids, vectors, metadata, idempotency_key, texts)
        return _wire.written(await self._call("POST", "/v1/upsert", body), "upserted")

    async def delete(self, ids: Any, *, idempotency_key: str | None = None) -> WriteResult:
        """``Client.delete``."""
        body = _wire.delete_body(ids, idempotency_key)
        return _wire.written(await self._call("POST", "/v1/delete", body), "deleted")

    async def get(
        self,
        ids: Any = None,
        *,
        filter: dict[str, Any] | None = None,
        limit: int | None = None,
        after: int | None = None,
        include_vectors: bool = False,
        columns: list[str] | None = None,
        min_sequence: int | None = None,
    ) -> Rows:
        """``Client.get``."""
        body = _wire.get_body(ids, filter, limit, after, include_vectors, columns, min_sequence)
        return _wire.rows_of(await self._call("POST", "/v1/get", body))

    async def scan(
        self, filter: dict[str, Any] | None = None, *, page: int = 1000, **kw: Any
    ) -> AsyncIterator[Rows]:
        """``Client.scan``."""
        after = None
        while True:
            rows = await self.get(filter=filter, limit=page, after=after, **kw)
            if len(rows.ids):
                yield rows
            if rows.next_after is None:
                return
            after = rows.next_after

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/stats")

    async def ready(self) -> bool:
        try:
            return bool((await self._call("GET", "/v1/ready"))["ready"])
        except VsearchError as exc:
            if exc.status == 503 or isinstance(exc, ConnectionFailed):
                return False
            raise
