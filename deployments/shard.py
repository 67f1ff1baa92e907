"""The shard deployment: each replica serves a group of shards (one by default) of a version."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from deployments.config import ShardOptions
from deployments.metrics import ShardMetrics
from shards import ShardedIndex
from shards._faiss import faiss
from shards.errors import IndexLoadError
from shards.gpu import gpu_memory_in_use
from shards.metadata import lookup_metadata
from shards.params import SearchOverrides

log = logging.getLogger("ray.serve")


class LoadedShards:
    """Shards of one version on their device, with a known answer for health checks."""

    def __init__(self, uri: str, numbers: list[int], version: str | None, opts: ShardOptions):
        self.index = ShardedIndex.open(uri, version, shards=numbers, mmap=opts.mmap)
        self.placement = self.index.place(opts.device())
        first = self.index.shards[numbers[0]]
        rows = first.live_rows()
        self.probe_id = int(first.ids[rows[0]]) if len(rows) else None
        self.probe = self.index.reconstruct([self.probe_id]) if len(rows) else None

    @property
    def version(self) -> str:
        return self.index.index_version

    def search(self, xq: np.ndarray, k: int, ov: SearchOverrides):
        return self.index.search_prepared(xq, k, ov)


@serve.deployment(name="shard")
class ShardServer:
    """Searches its shards; batches concurrent calls; swaps index versions live."""

    def __init__(self, index_uri: str, numbers: list[int], options: dict) -> None:
        self.opts = ShardOptions(**options)
        faiss.omp_set_num_threads(self.opts.omp_threads)
        self.uri, self.numbers = index_uri, list(numbers)
        # the version comes with user_config: Serve calls reconfigure before any request
        self.current: LoadedShards | None = None
        self.wanted_version: str | None = None
        self.error: str | None = None
        self._swap_task: asyncio.Task | None = None
        self._retry_at: float | None = None  # when to retry a failed first load
        label = f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"
        self.metrics, self.tags = ShardMetrics(), {"shard": label}
        self._batched.set_max_batch_size(self.opts.batch_size)
        self._batched.set_batch_wait_timeout_s(self.opts.batch_wait_timeout_s)

    @property
    def loaded(self) -> LoadedShards:
        if self.current is None:
            raise IndexLoadError(self.error or f"shards {self.numbers} have no index loaded")
        return self.current

    async def search(self, xq: np.ndarray, k: int, params: dict[str, Any]):
        """Top-k of prepared queries over this replica's shards: ``(D, I, index_version)``."""
        if self.opts.faults is not None:
            await self._inject(self.opts.faults)
        if self.opts.batch_size <= 1:
            return await self._run(self.loaded, xq, k, params)
        return await self._batched(xq, k, params)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(self, xqs: list, ks: list, params: list) -> list:
        current = self.loaded  # one version for the whole batch
        groups: dict[tuple, list[int]] = {}
        for i, (k, p) in enumerate(zip(ks, params, strict=True)):
            groups.setdefault((k, tuple(sorted(p.items()))), []).append(i)
        out: list = [None] * len(xqs)
        for (k, _), members in groups.items():
            xq = np.concatenate([xqs[i] for i in members])
            D, I, version = await self._run(current, xq, k, params[members[0]])
            start = 0
            for i in members:
                n = len(xqs[i])
                out[i] = (D[start : start + n], I[start : start + n], version)
                start += n
        return out

    async def _run(
        self, current: LoadedShards, xq: np.ndarray, k: int, params: dict, record: bool = True
    ):
        ov = SearchOverrides.parse(params)
        m, tags = self.metrics, self.tags
        t0 = time.perf_counter()
        try:
            # each GPU clone serialises its own searches (shards.gpu.Placed)
            D, I = await asyncio.to_thread(current.search, xq, k, ov)
        except Exception:
            m.errors.inc(tags=tags)
            raise
        if not record:  # health probes stay out of the search metrics
            return D, I, current.version
        m.latency.observe(time.perf_counter() - t0, tags=tags)
        m.searches.inc(tags=tags)
        m.queries.inc(len(xq), tags=tags)
        m.batch.observe(len(xq), tags=tags)
        return D, I, current.version

    async def _inject(self, faults) -> None:
        delay = max((faults.delay_ms.get(n, 0) for n in self.numbers), default=0)
        if delay:
            await asyncio.sleep(delay / 1000)
        if set(self.numbers) & set(faults.fail_shards):
            raise RuntimeError(f"injected fault in shards {self.numbers}")

    def _publish(self, loaded: LoadedShards) -> None:
        """Gauges describing the index now served."""
        m, tags = self.metrics, self.tags
        manifest = loaded.index.manifest
        m.vectors.set(loaded.index.ntotal, tags=tags)
        m.dim.set(manifest.dim, tags=tags)
        m.code_size.set(
            sum(manifest.shards[i].files["index"].size for i in self.numbers), tags=tags
        )
        m.gpu.set(float(loaded.placement.on_gpu), tags=tags)
        m.cuvs.set(float(loaded.placement.cuvs), tags=tags)
        m.gpu_index_bytes.set(float(loaded.placement.gpu_bytes), tags=tags)
        m.build_s.set(float(manifest.build.get("total_seconds", 0.0)), tags=tags)

    async def reconstruct(self, ids: np.ndarray):
        """``(found, vectors)``: which ids live here and their stored vectors."""
        index = self.loaded.index
        found = index.contains(ids)
        return found, index.reconstruct(ids[found]) if found.any() else None

    async def metadata(self, ids: np.ndarray, columns: list[str] | None) -> dict[int, dict]:
        """Metadata rows of the ids that live in these shards, by id."""
        index = self.loaded.index
        found = index.contains(ids)
        if not found.any():
            return {}
        rows = lookup_metadata(index, ids[found], columns).to_pylist()
        return {row["id"]: row for row in rows}

    async def reconfigure(self, config: dict) -> None:
        """``{"index_version": V}``: load and verify V beside the current one, then swap.

        The first load happens here (a replica cannot serve without an index). Later versions
        load in the background: Serve routes no request to a replica while reconfigure runs,
        so returning at once keeps queries flowing; a failed load keeps the current version
        serving and reports why in info and health.
        """
        wanted = config.get("index_version")
        if self.current is None:
            self.wanted_version = wanted
            await self._first_load()
            return
        if wanted in (None, self.current.version):
            self.wanted_version, self.error = self.current.version, None
            return
        self.wanted_version = wanted
        self._swap_task = asyncio.get_running_loop().create_task(self._swap(wanted))

    async def _first_load(self) -> None:
        """Load the wanted version; on failure keep the replica up, say why, retry later.

        A replica that raised here would be restarted by Serve and fail again (a crash loop);
        instead it answers 503 ``index_unavailable`` with the reason until a retry succeeds.
        """
        try:
            loaded = await asyncio.to_thread(
                LoadedShards, self.uri, self.numbers, self.wanted_version, self.opts
            )
        except Exception as exc:
            self.metrics.load_failures.inc(tags=self.tags)
            self.error = f"cannot load version {self.wanted_version or 'CURRENT'}: {exc}"
            self._retry_at = time.monotonic() + self.opts.reload_retry_s
            log.error(
                "shards %s: %s (retry in %s s)", self.numbers, self.error, self.opts.reload_retry_s
            )
            return
        self.current, self.error, self._retry_at = loaded, None, None
        self.wanted_version = loaded.version
        self._publish(loaded)

    async def _swap(self, wanted: str) -> None:
        try:
            loaded = await asyncio.to_thread(
                LoadedShards, self.uri, self.numbers, wanted, self.opts
            )
        except Exception as exc:  # any load failure: keep serving the current version
            self.metrics.load_failures.inc(tags=self.tags)
            if self.wanted_version == wanted:
                self.error = f"cannot load version {wanted}: {exc}"
                log.error("shards %s: %s", self.numbers, self.error)
            return
        if self.wanted_version != wanted:
            return  # a newer version was asked for meanwhile
        self.current, self.error = loaded, None  # atomic: one reference swap
        self._publish(loaded)
        log.info("shards %s serve %s on %s", self.numbers, loaded.version, loaded.placement.device)

    async def info(self) -> list[dict[str, Any]]:
        """One entry per shard for /v1/stats and /v1/ready."""
        if self.current is None:
            return [
                {
                    "shard": n,
                    "index_version": None,
                    "wanted_version": self.wanted_version,
                    "error": self.error,
                    "replica_shards": self.numbers,
                }
                for n in self.numbers
            ]
        cur = self.loaded
        manifest = cur.index.manifest
        gpu_used = gpu_memory_in_use(cur.placement) if cur.placement.on_gpu else None
        if gpu_used is not None:
            self.metrics.gpu_memory.set(float(gpu_used), tags=self.tags)
        return [
            {
                "shard": number,
                "index_version": cur.version,
                "wanted_version": self.wanted_version,
                "error": self.error,
                "ntotal": shard.ntotal,
                "factory": manifest.factory,
                "device": cur.placement.device,
                "cuvs": cur.placement.cuvs,
                "float16": cur.placement.float16,
                "multi_gpu": cur.placement.multi_gpu,
                "gpu_index_bytes": cur.placement.gpu_bytes,
                "gpu_memory_used_bytes": gpu_used,
                "index_bytes": manifest.shards[number].files["index"].size,
                "replica_shards": self.numbers,
            }
            for number, shard in cur.index.shards.items()
        ]

    async def check_health(self) -> None:
        """Known-answer search: the probe vector must find its own id.

        A replica whose first load failed is healthy (restarting it would not help) but not
        ready; each health check past the retry time tries the load again in the background.
        """
        if self.current is None:
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._retry_at = None
                self._swap_task = asyncio.get_running_loop().create_task(self._first_load())
            return
        cur = self.loaded
        if cur.probe is None:
            return
        params = cur.index.resolve(None).to_dict()
        _, I, _ = await self._run(cur, cur.probe, 10, params, record=False)
        if cur.placement.on_gpu:  # every health check refreshes the GPU memory gauge
            self.metrics.gpu_memory.set(float(gpu_memory_in_use(cur.placement)), tags=self.tags)
        if cur.probe_id not in I[0]:
            raise RuntimeError(f"shards {self.numbers}: known-answer search failed")
