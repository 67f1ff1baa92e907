"""The shard deployment: one replica serves one shard of one index version."""

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
from shards.gpu import place
from shards.metadata import lookup_metadata
from shards.params import SearchOverrides

log = logging.getLogger("ray.serve")


class LoadedShard:
    """A shard with the device it lives on and a known answer for health checks."""

    def __init__(self, uri: str, number: int, version: str | None, opts: ShardOptions) -> None:
        self.index = ShardedIndex.open(uri, version, shards=[number], mmap=opts.mmap)
        self.shard = self.index.shards[number]
        device = "cuda:0" if opts.num_gpus > 0 else "cpu"
        self.shard.index, self.placement = place(self.shard.index, device)
        rows = self.shard.live_rows()
        self.probe_id = int(self.shard.ids[rows[0]]) if len(rows) else None
        self.probe = self.index.reconstruct([self.probe_id]) if len(rows) else None

    @property
    def version(self) -> str:
        return self.index.index_version


@serve.deployment(name="shard")
class ShardServer:
    """Searches one shard; batches concurrent calls; swaps index versions live."""

    def __init__(self, index_uri: str, number: int, options: dict) -> None:
        self.opts = ShardOptions(**options)
        faiss.omp_set_num_threads(self.opts.omp_threads)
        self.uri, self.number = index_uri, number
        # the version comes with user_config: Serve calls reconfigure before any request
        self.current: LoadedShard | None = None
        self.wanted_version: str | None = None
        self.error: str | None = None
        self._swap_task: asyncio.Task | None = None
        self.gpu_lock = asyncio.Lock()  # GPU indexes are not safe for concurrent search
        self.metrics, self.tags = ShardMetrics(), {"shard": str(number)}
        self._batched.set_max_batch_size(self.opts.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.opts.batch_wait_timeout_s)

    @property
    def loaded(self) -> LoadedShard:
        if self.current is None:
            raise RuntimeError(f"shard {self.number} has no index loaded")
        return self.current

    async def search(self, xq: np.ndarray, k: int, params: dict[str, Any]):
        """Top-k of prepared queries: ``(D, I, index_version)``."""
        if self.opts.max_batch_size <= 1:
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
        self, current: LoadedShard, xq: np.ndarray, k: int, params: dict, record: bool = True
    ):
        ov = SearchOverrides.parse(params)
        m, tags = self.metrics, self.tags
        t0 = time.perf_counter()
        try:
            if current.placement.device == "cpu":
                D, I = await asyncio.to_thread(current.shard.search, xq, k, ov)
            else:
                async with self.gpu_lock:
                    D, I = await asyncio.to_thread(current.shard.search, xq, k, ov)
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

    def _publish(self, loaded: LoadedShard) -> None:
        """Gauges describing the index now served."""
        m, tags = self.metrics, self.tags
        manifest = loaded.index.manifest
        m.vectors.set(loaded.shard.ntotal, tags=tags)
        m.dim.set(manifest.dim, tags=tags)
        m.code_size.set(manifest.shards[self.number].files["index"].size, tags=tags)
        m.gpu.set(float(loaded.placement.device != "cpu"), tags=tags)
        m.cuvs.set(float(loaded.placement.cuvs), tags=tags)
        m.build_s.set(float(manifest.build.get("total_seconds", 0.0)), tags=tags)

    async def reconstruct(self, ids: np.ndarray):
        """``(found, vectors)``: which ids live here and their stored vectors."""
        shard = self.loaded.shard
        found = shard.contains(ids)
        return found, shard.reconstruct(ids[found]) if found.any() else None

    async def metadata(self, ids: np.ndarray, columns: list[str] | None) -> dict[int, dict]:
        """Metadata rows of the ids that live in this shard, by id."""
        found = self.loaded.shard.contains(ids)
        if not found.any():
            return {}
        rows = lookup_metadata(self.loaded.index, ids[found], columns).to_pylist()
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
            self.current = await asyncio.to_thread(
                LoadedShard, self.uri, self.number, wanted, self.opts
            )
            self.wanted_version = self.current.version
            self._publish(self.current)
            return
        if wanted in (None, self.current.version):
            self.wanted_version, self.error = self.current.version, None
            return
        self.wanted_version = wanted
        self._swap_task = asyncio.get_running_loop().create_task(self._swap(wanted))

    async def _swap(self, wanted: str) -> None:
        try:
            loaded = await asyncio.to_thread(LoadedShard, self.uri, self.number, wanted, self.opts)
        except Exception as exc:  # any load failure: keep serving the current version
            self.metrics.load_failures.inc(tags=self.tags)
            if self.wanted_version == wanted:
                self.error = f"cannot load version {wanted}: {exc}"
                log.error("shard %d: %s", self.number, self.error)
            return
        if self.wanted_version != wanted:
            return  # a newer version was asked for meanwhile
        self.current, self.error = loaded, None  # atomic: one reference swap
        self._publish(loaded)
        log.info("shard %d serves %s on %s", self.number, loaded.version, loaded.placement.device)

    async def info(self) -> dict[str, Any]:
        """What /v1/stats and /v1/ready report for this replica."""
        cur = self.loaded
        entry = cur.index.manifest.shards[self.number]
        return {
            "shard": self.number,
            "index_version": cur.version,
            "wanted_version": self.wanted_version,
            "error": self.error,
            "ntotal": cur.shard.ntotal,
            "factory": cur.index.manifest.factory,
            "device": cur.placement.device,
            "cuvs": cur.placement.cuvs,
            "index_bytes": entry.files["index"].size,
        }

    async def check_health(self) -> None:
        """Known-answer search: the probe vector must find its own id."""
        cur = self.loaded
        if cur.probe is None:
            return
        params = cur.index.resolve(None).to_dict()
        _, I, _ = await self._run(cur, cur.probe, 10, params, record=False)
        if cur.probe_id not in I[0]:
            raise RuntimeError(f"shard {self.number}: known-answer search failed")
