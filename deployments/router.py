"""The router: the handle API (HTTP routes in ``deployments.api``); fans each query out to
every shard and merges.

Every request is pinned to the active index version when it starts: every shard answers
it from that version or the call is retried on another replica, so an answer never mixes
versions. A swap is committed only when every running replica of every shard holds the
next version, through the app's coordinator (``deployments.tracker``).
"""

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.answer import merged_answer, metadata_rows
from deployments.api import HttpApi
from deployments.calls import ShardCalls, moved_ids
from deployments.config import AppArgs
from deployments.embedder import TextsIn
from deployments.fanout import unwrap
from deployments.ingress import make_app
from deployments.inrouter import InRouter
from deployments.metrics import RouterMetrics
from deployments.reads import RowReads
from deployments.sampler import pick
from deployments.shard import ShardServer
from deployments.tracker import VersionTracker
from deployments.versions import owner_groups
from deployments.writes import counting, log_write
from shards.artefact import descends_from, metadata_schema_of, open_version
from shards.errors import (
    InvalidInput,
    InvalidQuery,
    UnknownId,
    VsearchError,
)
from shards.filters import parse_filter
from shards.ids import check_ids
from shards.metadata import check_columns
from shards.params import SearchOverrides
from shards.planner import QueryPlanner
from shards.query import Query
from shards.writes import delete_of, upsert_of

log = logging.getLogger(__name__)

LOG_END_S = 2.0  # how long a search waits for the coordinator to say where the log ends


class Router(HttpApi, RowReads, TextsIn):
    """Fans queries out to every shard deployment with a deadline and merges the top-k."""

    def __init__(
        self,
        shards: list[DeploymentHandle] | None,
        groups: list[list[int]],
        names: list[str],
        args: dict[str, Any],
        coordinator: DeploymentHandle,
        embedder: DeploymentHandle | None = None,
    ) -> None:
        self.args = AppArgs(**args)
        self.embedder = embedder
        # shard.in_router (no shard deployments): this replica holds every shard itself
        self.held: ShardServer | None = None
        self.shards: list[Any] = shards or []
        if shards is None:
            self.held = self._hold(groups[0], coordinator)
            self.shards = [InRouter(self.held)]
        self.groups, self.names = groups, names
        self.coordinator = coordinator
        self.app_name = serve.get_replica_context().app_name
        self._schemas: dict[str, Any] = {}  # version -> its metadata columns (writes check)
        self._log_end = 0  # the mutation log's last sequence, as last heard
        self.versions = VersionTracker(
            self._planner,
            self._coordinator,
            self._running,
            self.args.index_version,
            self.args.default_params,
            lambda version, ancestor: descends_from(self.args.index_uri, version, ancestor),
        )
        self.metrics = RouterMetrics()
        self.calls = ShardCalls(self.shards, groups, self.args.replica_retries, self.metrics)
        self._fan_out = self.calls.fan_out
        self._rng = np.random.default_rng()
        env = self.args.auth_token_env
        if env and not os.environ.get(env):
            raise RuntimeError(f"auth_token_env names {env}, but that variable is empty")

    def _hold(self, numbers: list[int], coordinator: DeploymentHandle) -> ShardServer:
        a = self.args
        return ShardServer(
            a.index_uri, numbers, a.shard.model_dump(), coordinator, a.recall.model_dump()
        )

    def __serve_build_asgi_app__(self):
        """This replica's FastAPI app (Serve calls it after the constructor)."""
        return make_app(self.args.auth_token_env, self, self.args.collection)

    @property
    def planner(self) -> QueryPlanner:
        return self.versions.planner

    def _planner(self, version: str | None, defaults: dict[str, Any]) -> QueryPlanner:
        store, manifest = open_version(self.args.index_uri, version)
        self._schemas[manifest.index_version] = metadata_schema_of(store, manifest)
        lim = self.args.limits
        planner = QueryPlanner(
            manifest,
            max_k=lim.max_k,
            max_queries=lim.max_queries,
            max_candidates=lim.max_candidates,
        )
        planner.defaults = SearchOverrides.parse(defaults).over(planner.defaults)
        if defaults:  # the app's own defaults: not the ones tuned for a target
            planner.tuned_for = None
        planner.knobs.check(planner.defaults, 1)
        return planner

    async def _coordinator(self, method: str, *args: Any) -> Any:
        return await getattr(self.coordinator, method).remote(*args)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """``{"index_version": V, "default_params": {...}}``: V becomes the next version
        (``deployments.tracker``); shards held here load it first."""
        version = config.get("index_version") or self.args.index_version
        if self.held is not None:  # the same version the tracker is told
            await self.held.reconfigure({"index_version": version})
        await self.versions.configure(
            version, config.get("default_params", self.args.default_params)
        )

    async def check_health(self) -> None:
        """Shards held here: their health check (reports, retirement, probe)."""
        if self.held is not None:
            await self.held.check_health()

    def _running(self) -> dict[str, int]:
        """Running replicas of each shard deployment, from Serve's controller."""
        status = serve.status().applications[self.app_name].deployments
        return {
            name: int(status[name].replica_states.get("RUNNING", 0)) if name in status else 0
            for name in self.names
        }

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
        min_sequence: int = 0,
        filter: dict[str, Any] | None = None,
        score_threshold: float | None = None,
        texts: list[str] | None = None,
    ) -> dict[str, Any]:
        """Search by vectors ``xq`` (nq, d), by stored ``ids`` or by ``texts`` (embedded by
        the app's model); numpy in, numpy out.

        ``min_sequence``: answer only from shards that have applied this mutation sequence
        (a write's answer): read-your-writes; shards wait for it within the deadline.
        ``filter``: only rows whose metadata match (``shards.filters``); the answer's
        ``plan`` says how the shards searched. ``score_threshold``: only results within that
        distance (L2) or at least that similarity (inner product, cosine)."""
        t0 = time.perf_counter()
        if sum(v is not None for v in (xq, ids, texts)) != 1:
            raise InvalidQuery("give exactly one of query vectors, ids or texts")
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
        if isinstance(min_sequence, bool) or not isinstance(min_sequence, int) or min_sequence < 0:
            raise InvalidQuery(f"min_sequence must be an integer >= 0, got {min_sequence!r}")
        await self._check_written(min_sequence)
        if texts is not None:
            xq = await self.vectors_of_texts(texts, self.args.limits.max_queries, deadline)
        exclude = None
        if ids is not None:
            exclude = check_ids(ids)
            planner.check_count(len(exclude))  # before any vector is fetched
            xq = await self._vectors_of(planner, exclude, deadline, min_sequence)
        xq = planner.prepare(xq)
        filt = parse_filter(filter, self._schemas.get(version))
        threshold = planner.check_threshold(score_threshold)
        if not isinstance(include_metadata, bool):
            raise InvalidQuery("include_metadata must be true or false")
        columns = check_columns(metadata_columns, self._schemas.get(version))
        # the recall monitor's sample: rows re-run exactly by the shards after answering
        goal = (target if target is not None else planner.tuned_for) if not params else None
        query = Query(
            k,
            ov,
            exclude=exclude,
            version=version,
            min_sequence=min_sequence,
            filter=filt,
            sample=pick(self._rng, len(xq), self.args.recall.sample_rate, goal),
            with_metadata=include_metadata,
            metadata_columns=columns,
        )
        planner.check_cost(len(xq), query.fetch_k, ov)
        m.k.observe(k)
        m.queries.observe(len(xq))
        if ov.nprobe is not None:
            m.nprobe.observe(ov.nprobe)
        t_fan = time.perf_counter()
        outcome = await self._fan_out(
            lambda h, q: h.search.remote(xq, q),
            query,
            deadline,
            min_coverage,
            sequence_of=moved_ids(planner, 3),
        )
        t_merge = time.perf_counter()
        m.fanout.observe(t_merge - t_fan)
        parts = [a for a in outcome.answers if a is not None]
        out = merged_answer(
            parts,
            query,
            planner.metric.keep_max,
            range_partition=planner.manifest.partition == "range",
            threshold=threshold,
        )
        m.merge.observe(time.perf_counter() - t_merge)
        if outcome.coverage < 1.0:
            m.degraded.inc()
        out["coverage"], out["degraded"] = outcome.coverage, outcome.coverage < 1.0
        for plan in out.get("shard_plans", {}).values():
            m.plans.inc(tags={"plan": plan})
        if include_metadata:  # read by each shard from the states its search read
            out["metadata"] = metadata_rows([p[5] for p in parts], out["I"])
        out["took_ms"] = round(1000 * (time.perf_counter() - t0), 3)
        return out

    async def _check_written(self, sequence: int) -> None:
        """InvalidQuery for a ``min_sequence`` the log has not reached: no write was ever
        acknowledged with it, so waiting for it could only end at the deadline. The log's
        end is asked of the coordinator only when ``sequence`` is past the last one heard."""
        if sequence <= self._log_end:
            return
        try:
            state = await asyncio.wait_for(self.coordinator.log_state.remote(), LOG_END_S)
        except Exception:  # the coordinator is restarting: the shards wait within the deadline
            return
        self._log_end = max(self._log_end, state["sequence"] or 0)
        if sequence > self._log_end:
            raise InvalidQuery(
                f"min_sequence {sequence} has not been written: the mutation log ends at "
                f"{self._log_end} (use the sequence a write answered)"
            )

    # ---- the write path (handle API) ----

    async def upsert(
        self,
        ids: Any,
        vectors: Any,
        metadata: Any = None,
        *,
        deadline_ms: int | None = None,
        idempotency_key: str | None = None,
        texts: list[str] | None = None,
    ) -> dict[str, Any]:
        """Insert or replace ``vectors`` (n, d), or the vectors of ``texts`` (the app's
        embedding model), with ``ids`` and optional ``metadata`` rows;
        ``{"sequence", "upserted"}`` once durable in the log (searches with that
        ``min_sequence`` see it). ``idempotency_key``: a retry under it gets the first
        attempt's answer (``deployments.writer``)."""
        with counting(self.metrics, "upsert"):
            deadline = self._write_deadline(deadline_ms)
            planner = self.planner
            if texts is not None:
                if vectors is not None:
                    raise InvalidInput("give vectors or texts, not both")
                limit = self.args.limits.max_write_rows
                vectors = await self.vectors_of_texts(texts, limit, deadline)
            m = upsert_of(
                vectors,
                ids,
                metadata,
                dim=planner.dim,
                metric=planner.metric,
                schema=self._schemas.get(planner.manifest.index_version),
                max_rows=self.args.limits.max_write_rows,
                key=idempotency_key,
            )
            seq = await log_write(self.coordinator, self.metrics, m, deadline)
            return {"sequence": seq, "upserted": len(m)}

    async def delete(
        self, ids: Any, *, deadline_ms: int | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Delete ``ids``; ``{"sequence", "deleted"}``: how many were live, counted by the
        owner shards when they apply it (None if they do not within the deadline; the
        delete itself is durable either way)."""
        with counting(self.metrics, "delete"):
            deadline = time.monotonic() + self._deadline_s(deadline_ms)
            planner = self.planner
            m = delete_of(ids, self.args.limits.max_write_rows, idempotency_key)
            seq = await log_write(
                self.coordinator, self.metrics, m, self._write_deadline(deadline_ms)
            )
            query = Query(1, version=planner.manifest.index_version, min_sequence=seq)
            groups = self._owner_groups(planner, m.ids)
            try:
                outcome = await self._fan_out(
                    lambda h, q: h.removed.remote(seq, q), query, deadline, 1.0, groups
                )
                deleted: int | None = sum(outcome.answers)
            except VsearchError as exc:
                log.warning("delete at sequence %d is logged; not counted: %s", seq, exc)
                deleted = None
            return {"sequence": seq, "deleted": deleted}

    def _write_deadline(self, deadline_ms: int | None) -> float | None:
        """When a write stops waiting to be durable (``time.monotonic()``): only at a
        deadline it names (``limits.default_deadline_ms`` is a search's); else it waits for
        the log."""
        seconds = self._deadline_s(deadline_ms)  # checked either way
        return None if deadline_ms is None else time.monotonic() + seconds

    def _deadline_s(self, deadline_ms: int | None) -> float:
        lim = self.args.limits
        ms = lim.default_deadline_ms if deadline_ms is None else deadline_ms
        if isinstance(ms, bool) or not isinstance(ms, int) or not 1 <= ms <= lim.max_deadline_ms:
            raise InvalidQuery(f"deadline_ms must be an integer in [1, {lim.max_deadline_ms}]")
        return ms / 1000

    def _owner_groups(self, planner: QueryPlanner, ids: np.ndarray) -> list[int]:
        return owner_groups(planner.manifest, self.groups, ids)

    async def _vectors_of(
        self, planner: QueryPlanner, ids: np.ndarray, deadline: float, min_sequence: int = 0
    ):
        groups = self._owner_groups(planner, ids)
        query = Query(1, version=planner.manifest.index_version, min_sequence=min_sequence)
        outcome = await self._fan_out(
            lambda h, q: h.reconstruct.remote(ids, q),
            query,
            deadline,
            1.0,
            groups,
            moved_ids(planner, 2),
        )
        out = np.zeros((len(ids), planner.dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for here, vectors, _ in outcome.answers:
            if vectors is not None:
                out[here] = vectors
                found |= here
        if not found.all():
            raise UnknownId(f"id {int(ids[~found][0])} is not in the index")
        return out
