"""The router: HTTP ingress and handle API; fans each query out to every shard and merges."""

import asyncio
import json
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.config import AppArgs
from deployments.errors import DeadlineExceeded, ShardsUnavailable
from deployments.http import (
    SearchRequest,
    SearchResponse,
    error_responses,
    id_array,
    parse_search,
    queries_of,
    response_body,
)
from deployments.ingress import app
from deployments.metrics import RouterMetrics
from deployments.scrape import scrape_cluster
from shards.artefact import open_version
from shards.errors import IndexLoadError, InvalidQuery, UnknownId, VsearchError
from shards.merge import exclude_ids, merge_results
from shards.params import SearchOverrides
from shards.planner import QueryPlanner

log = logging.getLogger("ray.serve")


def unwrap(exc: BaseException | None) -> BaseException | None:
    """The exception raised inside a replica (Ray wraps it in a RayTaskError)."""
    return getattr(exc, "cause", None) or exc


@serve.deployment(name="router")
@serve.ingress(app)
class Router:
    """Fans queries out to every shard deployment with a deadline and merges the top-k."""

    def __init__(
        self, shards: list[DeploymentHandle], group_sizes: list[int], args: dict[str, Any]
    ) -> None:
        self.args = AppArgs(**args)
        self.shards = shards  # one handle per shard deployment (a group of shards)
        self.group_sizes = group_sizes
        self.error: str | None = None
        self.metrics = RouterMetrics()
        self._plan: QueryPlanner | None = None
        self._load_planner()  # on failure the router starts anyway and says why (no crash loop)
        env = self.args.auth_token_env
        token = os.environ.get(env) if env else None
        if env and not token:
            raise RuntimeError(f"auth_token_env names {env}, but that variable is empty")
        app.state.token = token

    @property
    def planner(self) -> QueryPlanner:
        if self._plan is None:
            raise IndexLoadError(self.error or "the index manifest is not loaded")
        return self._plan

    def _load_planner(self) -> None:
        try:
            self._plan = self._planner(self.args.index_version, self.args.default_params)
            self.error = None
        except Exception as exc:
            self.error = f"cannot open the index at {self.args.index_uri}: {exc}"
            log.error(self.error)

    async def check_health(self) -> None:
        """Serve's periodic check; a router that could not read the manifest retries here."""
        if self._plan is None:
            await asyncio.to_thread(self._load_planner)

    def _planner(self, version: str | None, defaults: dict[str, Any]) -> QueryPlanner:
        _, manifest = open_version(self.args.index_uri, version)
        lim = self.args.limits
        planner = QueryPlanner(manifest, max_k=lim.max_k, max_queries=lim.max_queries)
        planner.defaults = SearchOverrides.parse(defaults).over(planner.defaults)
        planner.knobs.check(planner.defaults, 1)
        return planner

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """``{"index_version": V, "default_params": {...}}``; a bad config keeps the old one."""
        try:
            self._plan = self._planner(
                config.get("index_version") or self.args.index_version,
                config.get("default_params", self.args.default_params),
            )
            self.error = None
        except Exception as exc:  # keep serving with the previous planner, say why
            self.error = f"router config rejected: {exc}"
            log.error(self.error)

    # ---- the search path (handle API) ----

    async def search(self, *args, **kwargs) -> dict[str, Any]:
        """Search by vectors ``xq`` (nq, d) or by stored ``ids``; numpy in, numpy out.

        Same arguments as ``_search``; counts the request by status class and its latency.
        """
        t0 = time.perf_counter()
        try:
            out = await self._search(*args, **kwargs)
        except Exception as exc:
            status = exc.status_code if isinstance(exc, VsearchError) else 500
            self.metrics.requests.inc(tags={"status": f"{status // 100}xx"})
            raise
        self.metrics.requests.inc(tags={"status": "2xx"})
        self.metrics.latency.observe(time.perf_counter() - t0)
        return out

    async def _search(
        self,
        xq: np.ndarray | None = None,
        k: int = 10,
        params: dict[str, Any] | None = None,
        *,
        ids: list[int] | np.ndarray | None = None,
        min_coverage: float = 1.0,
        deadline_ms: int | None = None,
        include_metadata: bool = False,
        metadata_columns: list[str] | None = None,
    ) -> dict[str, Any]:
        """Search by vectors ``xq`` (nq, d) or by stored ``ids``; numpy in, numpy out."""
        t0 = time.perf_counter()
        if (xq is None) == (ids is None):
            raise InvalidQuery("give exactly one of query vectors or ids")
        planner, m = self.planner, self.metrics
        if params is not None and not isinstance(params, dict):
            raise InvalidQuery(f"params must be a mapping, got {type(params).__name__}")
        params = dict(params or {})
        target = params.pop("target_recall", None)
        k = planner.check_k(k)
        ov = planner.resolve(params, target, k)
        if not 0.0 <= min_coverage <= 1.0:
            raise InvalidQuery(f"min_coverage must be in [0, 1], got {min_coverage}")
        deadline = time.monotonic() + self._deadline_s(deadline_ms)
        if ids is not None:
            ids = id_array(ids)
            xq = await self._vectors_of(ids, deadline)
        xq = planner.prepare(xq)
        kk = min(k + 1, planner.max_k) if ids is not None else k
        m.k.observe(k)
        m.queries.observe(len(xq))
        if ov.nprobe is not None:
            m.nprobe.observe(ov.nprobe)
        t_fan = time.perf_counter()
        results, coverage = await self._fanout(
            "search", deadline, min_coverage, xq, kk, ov.to_dict()
        )
        t_merge = time.perf_counter()
        m.fanout.observe(t_merge - t_fan)
        D, I = merge_results([(r[0], r[1]) for r in results], planner.metric.keep_max)
        m.merge.observe(time.perf_counter() - t_merge)
        if coverage < 1.0:
            m.degraded.inc()
        if ids is not None:
            D, I = exclude_ids(D, I, ids, k)
        out = {
            "D": D,
            "I": I,
            "coverage": coverage,
            "degraded": coverage < 1.0,
            "index_version": ",".join(sorted({r[2] for r in results})),
        }
        if include_metadata:
            out["metadata"] = await self._metadata(I, metadata_columns, deadline)
        out["took_ms"] = round(1000 * (time.perf_counter() - t0), 3)
        return out

    def _deadline_s(self, deadline_ms: int | None) -> float:
        lim = self.args.limits
        ms = lim.default_deadline_ms if deadline_ms is None else deadline_ms
        if isinstance(ms, bool) or not isinstance(ms, int) or not 1 <= ms <= lim.max_deadline_ms:
            raise InvalidQuery(f"deadline_ms must be an integer in [1, {lim.max_deadline_ms}]")
        return ms / 1000

    async def _fanout(self, method: str, deadline: float, min_coverage: float, *args):
        """Call ``method`` on every shard; ``(answers, coverage)`` or raise by coverage rules."""
        tasks = [asyncio.ensure_future(self._call(h, method, deadline, args)) for h in self.shards]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        for task in pending:
            task.cancel()
        answers, failures = [], []
        for task in tasks:
            if task in done and task.exception() is None:
                answers.append(task.result())
            elif task in done:
                failures.append(unwrap(task.exception()))
        for exc in failures:  # a mistake in the request is the caller's, whatever the coverage
            if isinstance(exc, VsearchError) and exc.status_code < 500:
                raise exc
        answered = sum(
            n
            for t, n in zip(tasks, self.group_sizes, strict=True)
            if t in done and t.exception() is None
        )
        coverage = answered / sum(self.group_sizes)
        if coverage < min_coverage or not answers:
            total = sum(self.group_sizes)
            what = f"{answered} of {total} shards answered (min_coverage {min_coverage})"
            if pending:
                raise DeadlineExceeded(f"deadline passed: {what}")
            raise ShardsUnavailable(f"{what}; first failure: {failures[0]!r}")
        return answers, coverage

    async def _call(self, handle: DeploymentHandle, method: str, deadline: float, args: tuple):
        """One shard call; retried while time is left when its replica dies under it (Serve
        drops the dead replica, so the retry goes to another one)."""
        for attempt in range(self.args.replica_retries + 1):
            try:
                return await getattr(handle, method).remote(*args)
            except RayActorError:
                if attempt == self.args.replica_retries or time.monotonic() >= deadline:
                    raise
                self.metrics.retries.inc()
        raise AssertionError("unreachable")

    async def _vectors_of(self, ids: np.ndarray, deadline: float) -> np.ndarray:
        answers, _ = await self._fanout("reconstruct", deadline, 1.0, ids)
        out = np.zeros((len(ids), self.planner.dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for here, vectors in answers:
            if vectors is not None:
                out[here] = vectors
                found |= here
        if not found.all():
            raise UnknownId(f"id {int(ids[~found][0])} is not in the index")
        return out

    async def _metadata(self, I: np.ndarray, columns, deadline: float):
        flat = np.unique(I[I >= 0])
        answers, _ = await self._fanout("metadata", deadline, 0.0, flat, columns)
        rows: dict[int, dict] = {}
        for part in answers:
            rows.update(part)
        return [[rows.get(int(i)) for i in row] for row in I]

    # ---- HTTP ----

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        responses=error_responses(400, 401, 404, 413, 415, 429, 503, 504),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SearchRequest.model_json_schema()}},
            }
        },
    )
    async def http_search(self, request: Request) -> Response:
        req = parse_search(
            await request.body(),
            self.args.limits.max_body_bytes,
            request.headers.get("content-type", ""),
        )
        result = await self.search(
            queries_of(req, self.planner.dim),
            req.k,
            req.params,
            ids=req.ids,
            min_coverage=req.min_coverage,
            deadline_ms=req.deadline_ms,
            include_metadata=req.include_metadata,
        )
        return Response(json.dumps(response_body(result)), media_type="application/json")

    async def shard_infos(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Each shard's info, or an entry with its error when it does not answer."""
        tasks = [asyncio.ensure_future(h.info.remote()) for h in self.shards]
        done, _ = await asyncio.wait(tasks, timeout=timeout_s)
        infos, first = [], 0
        for task, size in zip(tasks, self.group_sizes, strict=True):
            if task in done and task.exception() is None:
                infos.extend(task.result())
            else:
                why = repr(unwrap(task.exception())) if task in done else "no answer in time"
                infos.extend(
                    {"shard": n, "error": why, "index_version": None}
                    for n in range(first, first + size)
                )
            first += size
        return infos

    @app.get("/v1/health")
    async def health(self) -> dict[str, Any]:
        infos = await self.shard_infos()
        problems = [i["error"] for i in infos if i.get("error")] + (
            [self.error] if self.error else []
        )
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "index_version": self._plan.manifest.index_version if self._plan else None,
        }

    @app.get("/v1/ready", responses=error_responses(401, 503))
    async def ready(self) -> JSONResponse:
        infos = await self.shard_infos()
        versions = {i.get("index_version") for i in infos}
        ok = (
            self._plan is not None
            and len(versions) == 1
            and None not in versions
            and not any(i.get("error") for i in infos)
        )
        body = {"ready": ok, "index_versions": sorted(v or "none" for v in versions)}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=error_responses(401))
    async def metrics_page(self) -> Response:
        """Prometheus text: the metrics of every replica on every node, merged."""
        return Response(await scrape_cluster(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/stats", responses=error_responses(401))
    async def stats(self) -> dict[str, Any]:
        if self._plan is None:
            return {"router_error": self.error, "shards": await self.shard_infos()}
        m = self.planner.manifest
        return {
            "index_version": m.index_version,
            "dim": m.dim,
            "metric": m.metric,
            "factory": m.factory,
            "default_params": self.planner.defaults.to_dict(),
            "router_error": self.error,
            "shards": await self.shard_infos(),
        }
