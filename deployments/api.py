"""The HTTP surface of the router: its routes, each a thin wrapper over the handle API.

``Router`` inherits these handlers; each router replica builds its own FastAPI app from the
``route``-marked methods (``deployments.ingress.make_app``). What a route does beyond
parsing and answering lives in the router (the search path) or the tracker (versions).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from deployments.collections import listed
from deployments.errors import MetricsNotReady
from deployments.http import (
    OFF_LOOP_BYTES,
    OFF_LOOP_RESULTS,
    M,
    get_json,
    off_loop,
    parse_body,
    parse_search,
    queries_of,
    read_body,
    response_frame,
    response_json,
    wants_frame,
)
from deployments.ingress import route
from deployments.schema import (
    DeleteRequest,
    GetRequest,
    GetResponse,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    WriteResponse,
    error_responses,
)
from deployments.scrape import scrape_cluster
from vsearch import frames


def _body_schema(model: type[BaseModel], frame: bool = False) -> dict[str, Any]:
    """OpenAPI for a route that reads its own body (size limit first, then the model);
    ``frame``: a binary frame of queries too (``vsearch.frames``)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if frame:
        content[frames.MEDIA_TYPE] = {
            "schema": {"type": "string", "format": "binary", "description": FRAME_DOC}
        }
    return {"requestBody": {"required": True, "content": content}}


FRAME_ANSWER = {
    "description": "the answer; a binary frame when asked with Accept: application/octet-stream",
    "content": {frames.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}
FRAME_DOC = (
    'b"VSQ1", a uint32 LE header size, a JSON header (the JSON body\'s options and '
    '"shape": [nq, d]), then nq * d float32 LE queries. With Accept: '
    'application/octet-stream the answer is b"VSR1", a header size, a JSON header (the '
    'answer\'s fields and "shape": [nq, k]), nq * k int64 ids, nq * k float32 scores.'
)


def _columns_of(schema: Any) -> dict[str, str]:
    """The metadata columns of a version and their Arrow types, as text."""
    return {} if schema is None else {f.name: str(f.type) for f in schema}


class HttpApi:
    """The routes of ``/v1``; mixed into ``deployments.router.Router``."""

    # supplied by the router
    args: Any
    versions: Any
    planner: Any
    search: Callable[..., Awaitable[dict[str, Any]]]
    shard_infos: Callable[..., Awaitable[list[dict[str, Any]]]]
    count_failure: Callable[[BaseException], None]

    get: Any  # deployments.reads.RowReads.get
    upsert: Callable[..., Awaitable[dict[str, Any]]]
    delete: Callable[..., Awaitable[dict[str, Any]]]
    coordinator: Any
    names: list[str]  # the shard deployments
    _schemas: dict[str, Any]

    @route(
        "post",
        "/v1/search",
        response_model=SearchResponse,
        responses={**error_responses(400, 401, 404, 413, 415, 429, 503, 504), 200: FRAME_ANSWER},
        openapi_extra=_body_schema(SearchRequest, frame=True),
    )
    async def http_search(self, request: Request) -> Response:
        try:
            limit = self.args.limits.max_body_bytes
            body = await read_body(request, limit)
            ctype = request.headers.get("content-type", "")
            req = await off_loop(
                parse_search, body, limit, ctype, size=len(body), threshold=OFF_LOOP_BYTES
            )
            query = queries_of(req, self.planner.dim)
        except Exception as exc:  # counted like every other failed request
            self.count_failure(exc)
            raise
        result = await self.search(
            query,
            req.k,
            req.params,
            ids=req.ids,
            min_coverage=req.min_coverage,
            deadline_ms=req.deadline_ms,
            include_metadata=req.include_metadata,
            min_sequence=req.min_sequence,
            filter=req.filter,
            score_threshold=req.score_threshold,
            texts=req.texts,
        )
        pairs = int(result["I"].size)
        if wants_frame(request.headers.get("accept", "")):
            frame = await off_loop(response_frame, result, size=pairs, threshold=OFF_LOOP_RESULTS)
            return Response(frame, media_type=frames.MEDIA_TYPE)
        text = await off_loop(response_json, result, size=pairs, threshold=OFF_LOOP_RESULTS)
        return Response(text, media_type="application/json")

    @route(
        "post",
        "/v1/upsert",
        response_model=WriteResponse,
        response_model_exclude_none=True,
        responses=error_responses(400, 401, 409, 413, 415, 503),
        openapi_extra=_body_schema(UpsertRequest),
    )
    async def http_upsert(self, request: Request) -> dict[str, Any]:
        req = await self._parse(request, UpsertRequest)
        vectors = queries_of(req, self.planner.dim)
        return await self.upsert(
            req.ids,
            vectors,
            req.metadata,
            deadline_ms=req.deadline_ms,
            idempotency_key=req.idempotency_key,
            texts=req.texts,
        )

    @route(
        "post",
        "/v1/delete",
        response_model=WriteResponse,
        responses=error_responses(400, 401, 409, 413, 415, 503),
        openapi_extra=_body_schema(DeleteRequest),
    )
    async def http_delete(self, request: Request) -> dict[str, Any]:
        req = await self._parse(request, DeleteRequest)
        return await self.delete(
            req.ids, deadline_ms=req.deadline_ms, idempotency_key=req.idempotency_key
        )

    @route(
        "post",
        "/v1/get",
        response_model=GetResponse,
        responses=error_responses(400, 401, 413, 415, 503, 504),
        openapi_extra=_body_schema(GetRequest),
    )
    async def http_get(self, request: Request) -> Response:
        """Stored rows by id, or a page of the rows matching a filter (scroll with
        ``after`` = the last page's ``next_after``)."""
        req = await self._parse(request, GetRequest)
        result = await self.get(
            req.ids,
            filter=req.filter,
            limit=req.limit,
            after=req.after,
            include_vectors=req.include_vectors,
            columns=req.columns,
            min_sequence=req.min_sequence,
            deadline_ms=req.deadline_ms,
        )
        size = len(result["ids"]) * (self.planner.dim if req.include_vectors else 1)
        text = await off_loop(get_json, result, size=size, threshold=OFF_LOOP_RESULTS)
        return Response(text, media_type="application/json")

    @route("post", "/v1/compact", responses=error_responses(401, 503))
    async def http_compact(self) -> dict[str, Any]:
        """Start compacting the active version online (the log's writes merged into a new
        version, swapped in when every replica holds it); the compaction's state."""
        return await self.coordinator.compact.remote("POST /v1/compact")

    async def _parse(self, request: Request, model: type[M]) -> M:
        limit = self.args.limits.max_body_bytes
        body = await read_body(request, limit)
        ctype = request.headers.get("content-type", "")
        return await off_loop(
            parse_body, model, body, limit, ctype, size=len(body), threshold=OFF_LOOP_BYTES
        )

    @route("get", "/v1/collections", responses=error_responses(401))
    async def collections(self) -> dict[str, Any]:
        """The collections this cluster serves: one vsearch application each."""
        from ray.serve.context import _get_global_client

        details = await asyncio.to_thread(_get_global_client().get_serve_details)
        return {"collections": listed(details)}

    @route("get", "/v1/health")
    async def health(self) -> dict[str, Any]:
        """Open route: ok or degraded, from the replicas' reports as the coordinator holds
        them now (one call, no fan-out; no paths or messages: those are in the
        authenticated /v1/stats)."""
        problems = await self.versions.current_problems(self.names)
        return {"status": "degraded" if problems else "ok"}

    @route("get", "/v1/ready", responses=error_responses(401, 503))
    async def ready(self) -> JSONResponse:
        """200 when every shard answers from the active version."""
        infos = await self.shard_infos()
        v = self.versions
        active = v.active.manifest.index_version if v.active else None
        held = [i.get("versions_held") or [] for i in infos]
        ok = active is not None and all(active in h for h in held)
        versions = sorted({i.get("index_version") or "none" for i in infos})
        body = {"ready": ok, "index_version": active, "index_versions": versions}
        return JSONResponse(body, status_code=200 if ok else 503)

    @route("get", "/metrics", response_class=PlainTextResponse, responses=error_responses(401, 503))
    async def metrics_page(self) -> Response:
        """Prometheus text: the metrics of every replica on every node, merged."""
        page = await scrape_cluster()
        if b"vsearch_" not in page:
            raise MetricsNotReady("metrics are not exported yet (Ray exports every few seconds)")
        return Response(page, media_type=CONTENT_TYPE_LATEST)

    @route("get", "/v1/stats", responses=error_responses(401))
    async def stats(self) -> dict[str, Any]:
        v = self.versions
        body: dict[str, Any] = {
            "router_error": v.error,
            "problems": await v.current_problems(self.names),
            "swap": v.swap,
            "next_version": v.next.manifest.index_version if v.next else None,
        }
        if v.active is not None:
            m = v.active.manifest
            body.update(
                index_version=m.index_version,
                dim=m.dim,
                metric=m.metric,
                factory=m.factory,
                default_params=v.active.defaults.to_dict(),
                metadata_columns=_columns_of(self._schemas.get(m.index_version)),
            )
        body["shards"] = await self.shard_infos()
        try:
            body["log"] = await asyncio.wait_for(self.coordinator.log_state.remote(), 5.0)
            state = self.coordinator.compaction.remote()
            body["compaction"] = await asyncio.wait_for(state, 5.0)
            body["recall"] = await asyncio.wait_for(self.coordinator.recall.remote(), 5.0)
            end = body["log"]["sequence"]
            for info in body["shards"]:  # how far each shard is behind the log
                if info.get("sequence") is not None and end is not None:
                    info["lag"] = max(0, end - info["sequence"])
        except Exception as exc:  # the coordinator restarts: say so, the rest still answers
            body["log"] = {"sequence": None, "error": f"coordinator did not answer: {exc!r}"}
        return body
