"""The FastAPI app the router serves: JSON error answers and bearer-token auth."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from deployments.errors import BadRequest, Unauthorized
from deployments.http import error_body
from shards.errors import VsearchError

OPEN_PATHS = {"/v1/health"}

app = FastAPI(
    title="vsearch",
    description="Sharded vector search on FAISS. Errors: {'error': {'code', 'message'}}.",
    version="0.1.0",
)


@app.exception_handler(VsearchError)
async def _vsearch_error(request: Request, exc: VsearchError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(BadRequest(str(exc.errors()[0]["msg"]))), status_code=400)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    body = {"error": {"code": f"http_{exc.status_code}", "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code)


class BearerAuth:
    """Pure ASGI middleware: every route but /v1/health needs the bearer token, when set.

    (Starlette's ``@app.middleware("http")`` costs about a millisecond per request.)
    """

    def __init__(self, asgi_app) -> None:
        self.app = asgi_app

    async def __call__(self, scope, receive, send) -> None:
        serving = scope.get("app", app)  # the app instance Serve runs (it may not be `app`)
        token = getattr(serving.state, "token", None) if scope["type"] == "http" else None
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


app.add_middleware(BearerAuth)
