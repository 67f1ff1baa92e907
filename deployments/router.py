"""The router: HTTP ingress and handle API; fans each query out to every shard and merges.

Every request is pinned to the active index version when it starts: every shard answers
it from that version or the call is retried on another replica, so an answer never mixes
versions. A swap is committed only when every running replica of every shard holds the
next version, through the app's coordinator (``deployments.tracker``).
"""

import asyncio
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import OutOfMemoryError, RayActorError
from ray.serve.handle import DeploymentHandle

from deployments.config import AppArgs
from deployments.errors import MetricsNotReady
from deployments.fanout import fan_out, unwrap
from deployments.http import (
    SearchRequest,
    SearchResponse,
    error_responses,
    parse_search,
    queries_of,
    read_body,
    response_json,
)
from deployments.ingress import make_app, route
from deployments.metrics import RouterMetrics
from deployments.scrape import scrape_cluster
from deployments.tracker import VersionTracker
from shards.artefact import open_version
from shards.errors import (
    IndexLoadError,
    InvalidQuery,
    UnknownId,
    VersionMismatch,
    VsearchError,
)
from shards.ids import check_ids
from shards.merge import merge_results
from shards.params import SearchOverrides
from shards.partition import assign_shards
from shards.planner import QueryPlanner
from shards.query import Query

UNAVAILABLE_RETRIES = 6  # a replica that lacks the version or its files: try others


def retryable(max_deaths: int):
    """Retry rule: a replica that died (not by the memory monitor: the query itself may be
    what killed it) up to ``max_deaths`` times; a replica without the version or its files
    up to ``UNAVAILABLE_RETRIES`` times; nothing else."""

    def rule(exc: BaseException, attempt: int) -> bool:
        inner = unwrap(exc)
        if isinstance(exc, OutOfMemoryError) or isinstance(inner, OutOfMemoryError):
            return False
        if isinstance(exc, RayActorError):
            return "memory monitor" not in str(exc) and attempt <= max_deaths
        return isinstance(inner, VersionMismatch | IndexLoadError) and (
            attempt <= UNAVAILABLE_RETRIES
        )

    return rule


class Router:
    """Fans queries out to every shard deployment with a deadline and merges the top-k."""

    def __init__(
        self,
        shards: list[DeploymentHandle],
        groups: list[list[int]],
        names: list[str],
        args: dict[str, Any],
        coordinator: DeploymentHandle,
    ) -> None:
        self.args = AppArgs(**args)
        self.shards, self.groups, self.names = shards, groups, names
        self.group_sizes = [len(g) for g in groups]
        self.coordinator = coordinator
        self.app_name = serve.get_replica_context().app_name
        self.versions = VersionTracker(
            self._planner,
            self._coordinator,
            self._running,
            self.args.index_version,
            self.args.default_params,
        )
        self.metrics = RouterMetrics()
        self._retryable = retryable(self.args.replica_retries)
        env = self.args.auth_token_env
        if env and not os.environ.get(env):
            raise RuntimeError(f"auth_token_env names {env}, but that variable is empty")

    def __serve_build_asgi_app__(self):
        """This replica's FastAPI app (Serve calls it after the constructor)."""
        return make_app(self.args.auth_token_env, self)

    @property
    def planner(self) -> QueryPlanner:
        return self.versions.planner

    def _planner(self, version: str | None, defaults: dict[str, Any]) -> QueryPlanner:
        _, manifest = open_version(self.args.index_uri, version)
        lim = self.args.limits
        planner = QueryPlanner(
            manifest,
            max_k=lim.max_k,
            max_queries=lim.max_queries,
            max_candidates=lim.max_candidates,
        )
        planner.defaults = SearchOverrides.parse(defaults).over(planner.defaults)
        planner.knobs.check(planner.defaults, 1)
        return planner

    async def _coordinator(self, method: str, *args: Any) -> Any:
        return await getattr(self.coordinator, method).remote(*args)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """``{"index_version": V, "default_params": {...}}``: V becomes the next version
        (``deployments.tracker``)."""
        await self.versions.configure(
            config.get("index_version") or self.args.index_version,
            config.get("default_params", self.args.default_params),
        )

    def _running(self) -> dict[str, int]:
        """Running replicas of each shard deployment, from Serve's controller."""
        status = serve.status().applications[self.app_name].deployments
        return {
            name: int(status[name].replica_states.get("RUNNING", 0)) if name in status else 0
            for name in self.names
        }

    # ---- the search path (handle API) ----

    async def search(self, *args, **kwargs) -> dict[str, Any]:
        """Search by vectors ``xq`` (nq, d) or by stored ``ids``; numpy in, numpy out.

        Same arguments as ``_search``; counts the request by status class and its latency.
        """
        t0 = time.perf_counter()
        try:
            out = await self._search(*args, **kwargs)
        except Exception as exc:
            self.count_failure(exc)
            raise
        self.metrics.requests.inc(tags={"status": "2xx"})
        self.metrics.latency.observe(time.perf_counter() - t0)
        return out

    def count_failure(self, exc: BaseException) -> None:
        status = exc.status_code if isinstance(exc, VsearchError) else 500
        self.metrics.requests.inc(tags={"status": f"{status // 100}xx"})

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
        planner, m = self.planner, self.metrics  # pinned: this version, whatever swaps
        if params is not None and not isinstance(params, dict):
            raise InvalidQuery(f"params must be a mapping, got {type(params).__name__}")
        params = dict(params or {})
        target = params.pop("target_recall", None)
        k = planner.check_k(k)
        ov = planner.resolve(params, target, k)
        if not 0.0 <= min_coverage <= 1.0:
            raise InvalidQuery(f"min_coverage must be in [0, 1], got {min_coverage}")
        deadline = time.monotonic() + self._deadline_s(deadline_ms)
        version = planner.manifest.index_version
        exclude = None
        if ids is not None:
            exclude = check_ids(ids)
            planner.check_count(len(exclude))  # before any vector is fetched
            xq = await self._vectors_of(planner, exclude, deadline)
        xq = planner.prepare(xq)
        query = Query(k, ov, exclude=exclude, version=version)
        planner.check_cost(len(xq), query.fetch_k, ov)
        m.k.observe(k)
        m.queries.observe(len(xq))
        if ov.nprobe is not None:
            m.nprobe.observe(ov.nprobe)
        t_fan = time.perf_counter()
        outcome = await self._fan_out(
            lambda h, q: h.search.remote(xq, q), query, deadline, min_coverage
        )
        t_merge = time.perf_counter()
        m.fanout.observe(t_merge - t_fan)
        parts = [a for a in outcome.answers if a is not None]
        for part in parts:
            if part[2] != version:  # an invariant: shards answer the pinned version or refuse
                raise VsearchError(f"a shard answered version {part[2]} for {version}")
        D, I = query.finish(*merge_results([(p[0], p[1]) for p in parts], planner.metric.keep_max))
        m.merge.observe(time.perf_counter() - t_merge)
        if outcome.coverage < 1.0:
            m.degraded.inc()
        out = {
            "D": D,
            "I": I,
            "coverage": outcome.coverage,
            "degraded": outcome.coverage < 1.0,
            "index_version": version,
            "sequence": min(p[3] for p in parts),
        }
        if include_metadata:
            out["metadata"] = await self._metadata(I, metadata_columns, deadline, version)
        out["took_ms"] = round(1000 * (time.perf_counter() - t0), 3)
        return out

    async def _fan_out(self, send, query: Query, deadline: float, min_coverage: float, groups=None):
        """``send(handle, query)`` to every shard group (or ``groups``), query budget set."""
        chosen = range(len(self.shards)) if groups is None else groups

        def call(i: int):
            async def once():  # each attempt carries the time left to the shard
                left = max(0.0, deadline - time.monotonic())
                return await send(self.shards[i], _with_budget(query, left))

            return once

        outcome = await fan_out(
            [call(i) for i in chosen],
            [self.group_sizes[i] for i in chosen],
            deadline,
            min_coverage,
            self._retryable,
        )
        if outcome.retries:
            self.metrics.retries.inc(outcome.retries)
        return outcome

    def _deadline_s(self, deadline_ms: int | None) -> float:
        lim = self.args.limits
        ms = lim.default_deadline_ms if deadline_ms is None else deadline_ms
        if isinstance(ms, bool) or not isinstance(ms, int) or not 1 <= ms <= lim.max_deadline_ms:
            raise InvalidQuery(f"deadline_ms must be an integer in [1, {lim.max_deadline_ms}]")
        return ms / 1000

    def _owner_groups(self, planner: QueryPlanner, ids: np.ndarray) -> list[int]:
        """The shard groups that can hold ``ids``: their owners under hash partitioning
        (adds go there too), every group under range partitioning."""
        man = planner.manifest
        if man.partition != "hash":
            return list(range(len(self.shards)))
        owners = set(assign_shards(ids, ids, man.num_shards, "hash", man.num_shards).tolist())
        return [i for i, g in enumerate(self.groups) if owners & set(g)]

    async def _vectors_of(self, planner: QueryPlanner, ids: np.ndarray, deadline: float):
        groups = self._owner_groups(planner, ids)
        query = Query(1, version=planner.manifest.index_version)
        outcome = await self._fan_out(
            lambda h, q: h.reconstruct.remote(ids, q.version), query, deadline, 1.0, groups
        )
        out = np.zeros((len(ids), planner.dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for here, vectors in outcome.answers:
            if vectors is not None:
                out[here] = vectors
                found |= here
        if not found.all():
            raise UnknownId(f"id {int(ids[~found][0])} is not in the index")
        return out

    async def _metadata(self, I: np.ndarray, columns, deadline: float, version: str):
        flat = np.unique(I[I >= 0])
        outcome = await self._fan_out(
            lambda h, q: h.metadata.remote(flat, columns, q.version),
            Query(1, version=version),
            deadline,
            0.0,
        )
        rows: dict[int, dict] = {}
        for part in outcome.answers:
            rows.update(part or {})
        return [[rows.get(int(i)) for i in row] for row in I]

    # ---- HTTP ----

    @route(
        "post",
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
        try:
            limit = self.args.limits.max_body_bytes
            req = parse_search(
                await read_body(request, limit), limit, request.headers.get("content-type", "")
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
        )
        return Response(response_json(result), media_type="application/json")

    async def shard_infos(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Each shard's info, or an entry with its error when it does not answer."""
        tasks = [asyncio.ensure_future(h.info.remote()) for h in self.shards]
        done, _ = await asyncio.wait(tasks, timeout=timeout_s)
        infos = []
        for task, group in zip(tasks, self.groups, strict=True):
            if task in done and task.exception() is None:
                infos.extend(task.result())
            else:
                why = repr(unwrap(task.exception())) if task in done else "no answer in time"
                infos.extend({"shard": n, "error": why, "index_version": None} for n in group)
        return infos

    @route("get", "/v1/health")
    async def health(self) -> dict[str, Any]:
        """Open route: ok or degraded, from state the router already holds (no fan-out,
        no paths or messages: those are in the authenticated /v1/stats)."""
        return {"status": "degraded" if self.versions.problems() else "ok"}

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
            "problems": v.problems(),
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
            )
        body["shards"] = await self.shard_infos()
        return body


def _with_budget(query: Query, left: float) -> Query:
    return replace(query, budget_s=left)
