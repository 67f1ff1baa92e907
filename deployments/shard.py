"""The shard deployment: each replica serves a group of shards (one by default).

A replica holds the active index version and, during a swap, the next one
(``deployments.held``); every call names its version and is answered from exactly that one
(``VersionMismatch`` otherwise, which the router retries on another replica). It follows the
mutation log (``deployments.follow``) and reports what it holds to the coordinator. See
``deployments.swap`` for the phases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from deployments.coalesce import Coalescer
from deployments.config import RecallOptions, ShardOptions
from deployments.follow import Follower
from deployments.held import METADATA_INLINE, SUB_BATCH, HeldVersions, LoadedShards
from deployments.http import off_loop
from deployments.metrics import ShardMetrics
from deployments.sampler import ShardSampler
from shards import ShardedIndex
from shards._faiss import faiss
from shards.artefact import descends_from
from shards.errors import SequenceBehind
from shards.fetch import Rows, by_ids, matching
from shards.gpu import gpu_memory_in_use
from shards.query import Query

log = logging.getLogger("ray.serve")
REPORT_TIMEOUT_S = 2.0  # a health check must not wait on the coordinator (Serve's is 30 s)


class ShardServer:
    """Searches its shards; merges concurrent calls; prepares and retires index versions."""

    def __init__(
        self,
        index_uri: str,
        numbers: list[int],
        options: dict,
        coordinator,
        recall: dict | None = None,
    ) -> None:
        self.opts = ShardOptions(**options)
        monitor = RecallOptions(**(recall or {}))
        faiss.omp_set_num_threads(self.opts.omp_threads)
        self.numbers = list(numbers)
        self.coordinator = coordinator
        self._task: asyncio.Task | None = None
        ctx = serve.get_replica_context()
        self.replica, self.deployment = ctx.replica_id.unique_id, ctx.deployment
        label = f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"
        self.metrics, self.tags = ShardMetrics(), {"shard": label}
        self.sampler = ShardSampler(self.numbers[0], label, monitor.cpu_share)
        self.held = HeldVersions(index_uri, self.numbers, self.opts, self.metrics, self.tags)
        self.follower = Follower(self._tail, lambda: [v.index for v in self.versions.values()])
        self._following: asyncio.Task | None = None
        opts = self.opts  # merged searches stop at a sub-batch: beyond, merging gains nothing
        self.coalescer = Coalescer(
            self._run, opts.slots(), opts.batch_size, opts.batch_wait_timeout_s, SUB_BATCH
        )

    # ---- versions ----

    @property
    def error(self) -> str | None:
        """Why the wanted (or active) version is not held, if it is not."""
        return next(iter(self._failures().values()), None)

    @property
    def versions(self) -> dict[str, LoadedShards]:
        return self.held.versions

    def _failures(self) -> dict[str, str]:
        return self.held.failures(self.follower.broken)

    async def reconfigure(self, config: dict) -> None:
        """``{"index_version": V}``: prepare V beside the versions held.

        The first load happens here, before the replica takes traffic: the coordinator's
        active version and V. Later versions load in the background (Serve routes no
        request to a replica while reconfigure runs); a failed load changes nothing served.
        """
        held = self.held
        held.wanted = config.get("index_version")
        if not self.versions:
            await self._report()  # learns the active version
            if held.active and held.wanted and held.active != held.wanted:
                made = await asyncio.to_thread(descends_from, held.uri, held.active, held.wanted)
                if made:  # an online compaction of the configured version is active
                    held.wanted = held.active
            wanted = [v for v in (held.active, held.wanted) if v is not None]
            for v in dict.fromkeys(wanted or [None]):  # None: the root's CURRENT
                await held.load(v)  # replays the log's files after the version's base
            await self._report()
            self._following = asyncio.get_running_loop().create_task(self.follower.run())
            return
        if held.wanted not in self.versions:
            self._task = asyncio.get_running_loop().create_task(self._prepare(held.wanted))
        else:
            await self._report()

    async def _tail(self, after: int, wait_s: float):
        return await self.coordinator.tail.remote(after, wait_s)

    async def _prepare(self, version: str | None) -> None:
        await self.held.load(version)
        await self._report()

    async def _report(self) -> str | None:
        """Tell the coordinator what this replica holds; learn the active version.

        Best effort: a coordinator that does not answer within ``REPORT_TIMEOUT_S`` (it is
        being restarted) changes nothing here; the next health check reports again.
        """
        active = self.held.active
        held = self.versions.get(active) if active else None
        changes = 0 if held is None else held.index.changes
        delta = 0 if held is None else sum(len(s.delta_ids) for s in held.index.shards.values())
        applied = self.follower.sequence() or 0
        parts = self.sampler.drain()
        call = self.coordinator.report.remote(
            self.replica,
            self.deployment,
            list(self.versions),
            self._failures(),
            changes,
            delta,
            applied,
            parts,  # the recall monitor's exact re-runs since the last report
            self.sampler.state(),
        )
        try:
            active, proposed = await asyncio.wait_for(call, REPORT_TIMEOUT_S)
        except Exception as exc:
            log.warning("shards %s: no report to the coordinator: %r", self.numbers, exc)
            self.sampler.requeue(parts)  # the next report takes them
            return self.held.active
        self.held.set_active(active)
        if proposed is not None and proposed != self.held.wanted and self.versions:
            # a compaction published the next version: prepare it as a swap's next one
            self.held.wanted = proposed
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._prepare(proposed))
        return active

    def _held(self, version: str | None) -> LoadedShards:
        return self.held.held(version, self.error)

    # ---- the search path ----

    async def search(self, xq: np.ndarray, query: Query):
        """``(D, I, version, sequence, plans, metadata)`` for prepared queries ``xq`` (nq, d)
        over these shards (plans: each shard's plan for the query's filter, else empty;
        metadata: for ``query.with_metadata``, a table of the results' rows, read from the
        states the search read, else None)."""
        if self.opts.faults is not None:
            await self._inject(self.opts.faults, "search")
        deadline = None if query.budget_s is None else time.monotonic() + query.budget_s
        if query.min_sequence:
            await self._caught_up(self._held(query.version), query.min_sequence, deadline)
        loaded = self._held(query.version)
        if loaded.cheap(xq, query):  # answered on the loop at once
            out = await self._run(xq, query, deadline)
        else:  # at most search_slots at once, merged while they queue (max_batch_size > 1)
            out = await self.coalescer.search(xq, query, deadline)
        D, I, version, sequence, plans, states = out
        meta = None
        if query.with_metadata:
            if self.opts.faults is not None:
                await self._inject(self.opts.faults, "metadata")
            meta = await off_loop(
                loaded.metadata_of,
                I,
                query.metadata_columns,
                states,
                size=I.size,
                threshold=METADATA_INLINE + 1,  # above it: in a thread
            )
        return D, I, version, sequence, plans, meta

    async def _run(
        self, xq: np.ndarray, query: Query, deadline: float | None, members=None
    ) -> tuple:
        """Search ``xq`` for ``query``; ``members``: the ``(query, rows)`` of each request of
        a batch (one request by default), whose sampled rows the recall monitor re-runs."""
        loaded = self._held(query.version)
        m, tags, v = self.metrics, self.tags, loaded.version
        t0 = time.perf_counter()
        self.held.in_flight[v] += 1
        try:
            # each GPU clone serialises its own searches (shards.gpu.Placed); the sequence an
            # answer names is read before its states are taken (``LoadedShards.snapshot``)
            taken = loaded.inline_snapshot(xq, query)
            if taken is not None:  # cheap enough to answer here, without a thread hop
                D, I, plans, states, seq, cpu_s = loaded.timed(xq, query, deadline, taken)
            else:
                D, I, plans, states, seq, cpu_s = await asyncio.to_thread(
                    loaded.timed, xq, query, deadline
                )
        except Exception:
            m.errors.inc(tags=tags)
            raise
        finally:
            self.held.in_flight[v] -= 1
        took = time.perf_counter() - t0
        if len(xq) and not loaded.placement.on_gpu:  # CPU seconds per query row, smoothed
            row = cpu_s / len(xq)
            loaded.row_s = row if loaded.row_s is None else 0.8 * loaded.row_s + 0.2 * row
        # the recall monitor may spend a share of the search's CPU (of a GPU search's time:
        # its thread waits on the GPU)
        self.sampler.searched(took if loaded.placement.on_gpu else cpu_s)
        m.latency.observe(took, tags=tags)
        m.searches.inc(tags=tags)
        m.queries.inc(len(xq), tags=tags)
        m.batch.observe(len(xq), tags=tags)
        m.merged.observe(len(members or [None]), tags=tags)
        start = 0
        for q, n in members or [(query, len(xq))]:
            if q.sample is not None:  # after the answer, never in its way
                part = slice(start, start + n)
                try:
                    self.sampler.offer(loaded.index, xq[part], q, D[part], I[part], states, plans)
                except Exception as exc:  # the monitor never fails a search
                    self.sampler.skipped["error"] += 1
                    log.warning("shards %s: recall sample not taken: %r", self.numbers, exc)
            start += n
        return D, I, v, seq, plans, states

    async def _caught_up(self, loaded: LoadedShards, sequence: int, deadline: float | None):
        """Wait (until ``deadline``) for ``loaded`` to apply ``sequence``, or SequenceBehind."""
        if not await self.follower.wait_for(loaded.index, sequence, deadline):
            raise SequenceBehind(
                f"shards {self.numbers} are at mutation sequence {loaded.index.sequence}, "
                f"the query needs {sequence}"
            )

    async def removed(self, sequence: int, query: Query) -> int:
        """How many ids the mutation at ``sequence`` removed from these shards (waiting for
        it to be applied within the query's budget)."""
        loaded = self._held(query.version)
        deadline = None if query.budget_s is None else time.monotonic() + query.budget_s
        await self._caught_up(loaded, sequence, deadline)
        return loaded.index.removed_at(sequence)

    async def _inject(self, faults, method: str) -> None:
        delay = max((faults.delay_ms.get(n, 0) for n in self.numbers), default=0)
        if delay and method == "search":
            await asyncio.sleep(delay / 1000)
        if set(self.numbers) & set(faults.fail_shards) and method in faults.fail_methods:
            raise RuntimeError(f"injected fault in shards {self.numbers}")

    async def _state_for(self, query: Query, method: str) -> ShardedIndex:
        """The index ``query`` is pinned to, once its ``min_sequence`` is applied."""
        if self.opts.faults is not None:
            await self._inject(self.opts.faults, method)
        loaded = self._held(query.version)
        if query.min_sequence:
            deadline = None if query.budget_s is None else time.monotonic() + query.budget_s
            await self._caught_up(loaded, query.min_sequence, deadline)
        return loaded.index

    async def reconstruct(self, ids: np.ndarray, query: Query):
        """``(found, vectors, sequence)``: which ids live here (at ``query``'s version, once
        its ``min_sequence`` is applied) and their stored vectors, in the state at
        ``sequence``."""
        index = await self._state_for(query, "reconstruct")
        sequence, states = index.snapshot()
        found = index.contains(ids, states)
        vectors = index.reconstruct(ids[found], states) if found.any() else None
        return found, vectors, sequence

    async def fetch(self, ids: np.ndarray, columns, vectors: bool, query: Query):
        """The live rows among ``ids`` in these shards (``shards.fetch.by_ids``), as
        ``(ids, metadata rows, vectors, sequence)``: the rows of one snapshot of these
        shards, and the sequence read before it (``ShardedIndex.snapshot``)."""
        index = await self._state_for(query, "fetch")
        sequence, states = index.snapshot()
        return _wire(by_ids(index, ids, columns, vectors, states), sequence)

    async def scan(self, limit: int, after: int, columns, vectors: bool, query: Query):
        """The first ``limit`` live rows above id ``after`` matching ``query.filter``
        (``shards.fetch.matching``), as ``fetch`` answers."""
        index = await self._state_for(query, "scan")
        sequence, states = index.snapshot()
        rows = matching(index, query.filter, limit, after, columns, vectors, states)
        return _wire(rows, sequence)

    # ---- health, stats, metrics ----

    async def info(self) -> list[dict[str, Any]]:
        """One entry per shard for /v1/stats and /v1/ready."""
        common = {
            "versions_held": sorted(self.versions),
            "wanted_version": self.held.wanted,
            "error": self.error,
            "replica_shards": self.numbers,
        }
        cur = self.held.serving()
        if cur is None:
            return [{"shard": n, "index_version": None, **common} for n in self.numbers]
        manifest = cur.index.manifest
        gpu_used = gpu_memory_in_use(cur.placement) if cur.placement.on_gpu else None
        if gpu_used is not None:
            self.metrics.gpu_memory.set(float(gpu_used), tags=self.tags)
        return [
            {
                "shard": number,
                "index_version": cur.version,
                "sequence": shard.sequence,
                **common,
                "ntotal": shard.ntotal,
                "delta_rows": len(shard.delta_ids),
                "tombstones": shard.tombstones,
                "log_error": cur.index.log_error or self.follower.broken,
                "log_writer_error": self.follower.error,
                "factory": manifest.factory,
                "device": cur.placement.device,
                "cuvs": cur.placement.cuvs,
                "float16": cur.placement.float16,
                "multi_gpu": cur.placement.multi_gpu,
                "gpu_index_bytes": cur.placement.gpu_bytes,
                "gpu_memory_used_bytes": gpu_used,
                "index_bytes": manifest.shards[number].files["index"].size,
            }
            for number, shard in cur.index.shards.items()
        ]

    async def check_health(self) -> None:
        """Report to the coordinator, retire old versions, retry failed loads, probe.

        A replica holding no version retries its load every ``reload_retry_s`` and stays
        healthy (not ready) for ``unhealthy_after_s``; after that it fails the check, so
        Serve replaces it (a slow restart, not a crash loop). The probe vector must find
        its own score first (itself or an exact duplicate).
        """
        await self._report()
        held = self.held
        held.retire()
        if self._following is not None and self._following.done():
            raise RuntimeError(f"shards {self.numbers}: the log follower stopped")
        since = self.follower.broken_since
        if since is not None and time.monotonic() - since > self.opts.unhealthy_after_s:
            # this replica's versions cannot follow the log (a retired or missing part):
            # a replacement loads the active version afresh
            raise RuntimeError(f"shards {self.numbers}: {self.follower.broken}")
        busy = self._task is not None and not self._task.done()
        retry = held.retry_at is not None and time.monotonic() >= held.retry_at and not busy
        if retry and held.wanted not in self.versions:
            held.retry_at = None
            self._task = asyncio.get_running_loop().create_task(self._prepare(held.wanted))
        if not self.versions:
            since = held.empty_since
            if since is not None and time.monotonic() - since > self.opts.unhealthy_after_s:
                raise RuntimeError(f"shards {self.numbers}: no version loaded: {self.error}")
            return
        cur = held.serving() or next(iter(self.versions.values()))
        held.publish(cur)
        shards = cur.index.shards.values()
        self.metrics.sequence.set(float(cur.index.sequence), tags=self.tags)
        self.metrics.delta_rows.set(float(sum(len(s.delta_ids) for s in shards)), tags=self.tags)
        self.metrics.tombstones.set(float(sum(s.tombstones for s in shards)), tags=self.tags)
        if cur.placement.on_gpu:  # every health check refreshes the GPU memory gauge
            self.metrics.gpu_memory.set(float(gpu_memory_in_use(cur.placement)), tags=self.tags)
        if cur.probe is not None and not await asyncio.to_thread(cur.probe_ok, cur.probe):
            raise RuntimeError(f"shards {self.numbers}: known-answer search failed")


def _wire(rows: Rows, sequence: int) -> tuple:
    meta = None if rows.metadata is None else rows.metadata.to_pylist()
    return rows.ids, meta, rows.vectors, sequence
