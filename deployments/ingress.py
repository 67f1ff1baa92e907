"""The FastAPI app the router serves, made by each router replica: routes, errors, auth.

Route handlers are marked on the router class with ``route``; each replica builds its own
FastAPI app after its constructor (Serve's late-bound ingress) with the marked methods bound
to itself, so no FastAPI state is global and every application has its own.
"""

from __future__ import annotations

import hmac
import inspect
import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException

from deployments.errors import BadRequest, Unauthorized
from deployments.http import error_body
from shards.errors import VsearchError

OPEN_PATHS = {"/v1/health", "/health"}  # "/health": a collection's (see ``make_app``)


def route(method: str, path: str, **options: Any) -> Callable:
    """Mark a method as the handler of ``method path`` (FastAPI's keyword options)."""

    def mark(fn: Callable) -> Callable:
        fn._vsearch_route = (method, path, options)  # type: ignore[attr-defined]
        return fn

    return mark


def make_app(
    token_env: str | None = None, handlers: object | None = None, collection: str | None = None
) -> FastAPI:
    """A new FastAPI app with vsearch's JSON errors, with ``token_env`` bearer auth (the
    token is read from that variable in the serving process), and the ``route``-marked
    methods of ``handlers`` as its routes.

    ``collection``: the app serves a collection from the route prefix
    ``/v1/collections/NAME``, so its routes drop their ``/v1``: ``/v1/search`` is served
    at ``/v1/collections/NAME/search``."""
    app = FastAPI(
        title="vsearch" if collection is None else f"vsearch: collection {collection}",
        description="Sharded vector search on FAISS. Errors: {'error': {'code', 'message'}}.",
        version="0.1.0",
    )
    app.add_exception_handler(VsearchError, _vsearch_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_middleware(BearerAuth, token_env=token_env)
    if handlers is not None:
        for name, fn in inspect.getmembers(type(handlers), inspect.isfunction):
            marked = getattr(fn, "_vsearch_route", None)
            if marked is not None:
                method, path, options = marked
                if collection is not None and path.startswith("/v1/"):
                    if path.startswith("/v1/collections"):
                        continue  # the cluster's list: served by the default collection
                    path = path.removeprefix("/v1")
                bound = getattr(handlers, name)
                app.add_api_route(path, bound, methods=[method.upper()], **options)
    return app


def make_ingress(cls: type) -> Any:
    """``cls`` as a Serve ingress whose replicas build their app with
    ``cls.__serve_build_asgi_app__`` (after the constructor)."""
    return serve.ingress()(cls)


async def _vsearch_error(request: Request, exc: VsearchError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(BadRequest(str(exc.errors()[0]["msg"]))), status_code=400)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    body = {"error": {"code": f"http_{exc.status_code}", "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code)


class BearerAuth:
    """Pure ASGI middleware: every route but /v1/health needs the bearer token, when set.

    (Starlette's ``@app.middleware("http")`` costs about a millisecond per request.)
    """

    def __init__(self, asgi_app, token_env: str | None = None) -> None:
        self.app = asgi_app
        self.token_env = token_env
        self._token: str | None = None

    def token(self) -> str | None:
        if self.token_env and self._token is None:
            self._token = os.environ.get(self.token_env) or None
        return self._token

    async def __call__(self, scope, receive, send) -> None:
        token = self.token() if scope["type"] == "http" else None
        if token:
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            given = dict(scope["headers"]).get(b"authorization", b"")
            if path not in OPEN_PATHS and not hmac.compare_digest(
                given, f"Bearer {token}".encode()
            ):
                exc = Unauthorized("missing or wrong bearer token")
                response = JSONResponse(
                    error_body(exc), status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
