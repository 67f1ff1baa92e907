"""The index versions one shard replica holds: loading them, choosing the one a call is
pinned to, retiring old ones, and saying why a wanted one is missing.

A replica holds the active version and, during a swap, the next one (``deployments.swap``
has the phases); the coordinator says which is active (``ShardServer._report``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import numpy as np
import pyarrow as pa

from deployments.config import ShardOptions
from deployments.errors import DeadlineExceeded
from deployments.metrics import ShardMetrics
from deployments.swap import retirable
from shards import ShardedIndex
from shards.anatomy import Anatomy
from shards.artefact import open_version
from shards.errors import IndexLoadError, VersionMismatch
from shards.metadata import lookup_metadata
from shards.query import Query

log = logging.getLogger("ray.serve")
PROBE_CANDIDATES = 16  # live rows tried as the health probe
SUB_BATCH = 256  # a long batch is searched in parts, checking the deadline between them
# a search expected to take less CPU runs on the replica's event loop: handing it to a thread
# and back cost more (single queries over HTTP, 2 cores: p50 2.4 -> 2.1 ms, 8 callers +35%)
INLINE_S = 0.001
# the metadata of a search's results is read on the event loop up to this many results (an
# Arrow take of their rows), in a thread above
METADATA_INLINE = 2048


class LoadedShards:
    """Shards of one version on their device, with a probe vector for health checks."""

    def __init__(self, uri: str, numbers: list[int], version: str | None, opts: ShardOptions):
        self.index = ShardedIndex.open(uri, version, shards=numbers, mmap=opts.mmap)
        self.placement = self.index.place(opts.device())
        self.probe = self._pick_probe(self.index.shards[numbers[0]])
        self.row_s: float | None = None  # CPU seconds per query row searched, smoothed

    @property
    def version(self) -> str:
        return self.index.index_version

    def search(self, xq: np.ndarray, query: Query, deadline: float | None, states=None):
        """``(D, I, plans)`` of ``query`` over these shards, in parts of ``SUB_BATCH`` that
        check ``deadline`` (plans: each shard's, for a filter). Every part reads the same
        states of the shards (``states``, or a snapshot taken now): one answer, one state,
        whatever is applied meanwhile."""
        parts = []
        states = self.index.applied.states() if states is None else states
        for start in range(0, len(xq), SUB_BATCH):
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("deadline passed: the rest of the batch is not searched")
            part = xq[start : start + SUB_BATCH]
            parts.append(self.index.search_query_planned(part, query, states))
        if len(parts) == 1:
            return parts[0]
        plans = parts[0][2]  # one filter over the same states: the same plans
        return np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts]), plans

    def cheap(self, xq: np.ndarray, query: Query) -> bool:
        """A CPU search without a filter whose rows cost under ``INLINE_S`` as measured so
        far (``row_s``)."""
        row_s = self.row_s
        if row_s is None or self.placement.on_gpu or query.filter is not None:
            return False
        return len(xq) * row_s <= INLINE_S

    def snapshot(self) -> tuple[int, list]:
        """``(sequence, states)``: the mutation sequence, then one state of every shard. In
        that order every state has applied at least the sequence an answer names, so an
        answer never claims a write its search did not see (read-your-writes)."""
        return self.index.snapshot()

    def inline_snapshot(self, xq: np.ndarray, query: Query) -> tuple[int, list] | None:
        """``snapshot()`` for a search of ``xq`` on the event loop, or None (in a thread): a
        cheap search while no mutation is being applied (the loop never waits for one)."""
        if not self.cheap(xq, query):
            return None
        sequence = self.index.sequence  # first, as in ``snapshot``
        states = self.index.applied.try_states()
        return None if states is None else (sequence, states)

    def timed(self, xq: np.ndarray, query: Query, deadline: float | None, taken=None):
        """``search`` over one ``snapshot`` (``taken``, or taken now): ``(D, I, plans,
        states, sequence, cpu_s)``, ``cpu_s`` the CPU seconds of the thread that ran it (its
        wall time would count the waits of concurrent searches for the cores; faiss's own
        OpenMP threads are not counted: the budget errs cheap)."""
        t0 = time.thread_time()
        sequence, states = self.snapshot() if taken is None else taken
        D, I, plans = self.search(xq, query, deadline, states)
        return D, I, plans, states, sequence, time.thread_time() - t0

    def metadata_of(self, I: np.ndarray, columns, states: list) -> pa.Table:
        """The metadata rows (``id`` first, then ``columns``: None for all) of the ids in
        results ``I``, read from ``states``: the states the search that found them read,
        so a row deleted or rewritten since is still the row that was found."""
        ids = np.unique(I[I >= 0])
        return lookup_metadata(self.index, ids, None if columns is None else list(columns), states)

    def probe_ok(self, probe: np.ndarray) -> bool:
        """The probe is found: its own score comes first (itself or an exact duplicate)."""
        D, _ = self.index.search_query(probe, Query(10))  # no filter: no plans
        keep_max = self.index.metric.keep_max
        own = float(probe[0] @ probe[0]) if keep_max else 0.0
        return bool(abs(float(D[0, 0]) - own) <= 1e-3 * max(1.0, abs(own)))

    def _pick_probe(self, shard) -> np.ndarray | None:
        """The first of a few live rows that the index finds (a graph can miss some); none
        for a lossy index (a row's own score is not exact: the check could not pass)."""
        if not Anatomy.of(shard.index).lossless:
            log.info("shards: a lossy index: health checks run without a known-answer search")
            return None
        rows = shard.live_rows()[:PROBE_CANDIDATES]
        for row in rows:
            vec = self.index.reconstruct([int(shard.ids[row])])
            if self.probe_ok(vec):
                return vec
        if len(rows):
            log.warning(
                "shards: none of %d probe rows is found; health checks search only", len(rows)
            )
        return None


class HeldVersions:
    """Versions of one replica's shards, by name, with the wanted and the active one."""

    def __init__(
        self,
        uri: str,
        numbers: list[int],
        opts: ShardOptions,
        metrics: ShardMetrics,
        tags: dict[str, str],
    ) -> None:
        self.uri, self.numbers, self.opts = uri, numbers, opts
        self.metrics, self.tags = metrics, tags
        self.versions: dict[str, LoadedShards] = {}
        self.failed: dict[str, str] = {}  # version -> why it did not load
        self.wanted: str | None = None  # from user_config
        self.active: str | None = None  # from the coordinator
        self.active_since: float | None = None  # when this replica saw ``active`` first
        self.in_flight: Counter[str] = Counter()
        self.empty_since: float | None = None  # holding no version since (failed loads)
        self.retry_at: float | None = None

    def set_active(self, active: str | None) -> None:
        if active != self.active:
            self.active, self.active_since = active, time.monotonic()

    def failures(self, log_broken: str | None) -> dict[str, str]:
        """Failed loads of the wanted and the active version (older ones are forgotten:
        a version nobody asks for any more is no problem of this replica's), and versions
        that cannot follow the log (``log_broken``: the follower's reason)."""
        current = (self.wanted or "CURRENT", self.active)
        self.failed = {v: why for v, why in self.failed.items() if v in current}
        out = {v: why for v, why in self.failed.items() if v not in self.versions}
        for v, loaded in self.versions.items():
            why = log_broken or loaded.index.log_error
            if why is not None and v in current:
                out[f"log of {v}"] = f"shards {self.numbers}: {why}"
        return out

    def serving(self) -> LoadedShards | None:
        """The version served by default: the active one, else the wanted."""
        v = self.active if self.active in self.versions else self.wanted
        return self.versions.get(v) if v else None

    async def load(self, version: str | None) -> bool:
        """Load and verify ``version`` (None: CURRENT) beside the others; False on failure
        (the reason kept in ``failed``, a retry due ``reload_retry_s`` later)."""
        name = version or "CURRENT"
        try:
            _, manifest = await asyncio.to_thread(open_version, self.uri, version)
            held = next(iter(self.versions.values()), None)
            why = held.index.manifest.layout_change(manifest) if held else None
            if why is not None:
                raise IndexLoadError(why)
            loaded = await asyncio.to_thread(
                LoadedShards, self.uri, self.numbers, manifest.index_version, self.opts
            )
        except Exception as exc:
            self.metrics.load_failures.inc(tags=self.tags)
            self.failed[name] = f"cannot load version {name}: {exc}"
            self.retry_at = time.monotonic() + self.opts.reload_retry_s
            if not self.versions and self.empty_since is None:
                self.empty_since = time.monotonic()
            log.error("shards %s: %s", self.numbers, self.failed[name])
            return False
        v = loaded.version
        if version is None and self.wanted is None:
            self.wanted = v
        self.versions[v] = loaded
        self.failed.pop(v, None)
        self.failed.pop(name, None)
        self.empty_since = self.retry_at = None
        self.publish(loaded)
        log.info("shards %s hold %s on %s", self.numbers, v, loaded.placement.device)
        return True

    def retire(self) -> None:
        for v in list(self.versions):
            if retirable(v, self.active, self.wanted, self.in_flight[v], self.active_since):
                del self.versions[v]
                log.info("shards %s retired version %s", self.numbers, v)

    def held(self, version: str | None, error: str | None) -> LoadedShards:
        """The version a call is pinned to (None: the active, else the wanted one).

        Raises:
            IndexLoadError: none is held (``error``: why).
            VersionMismatch: that one is not held here (the router tries another replica).
        """
        v = version or self.active or self.wanted
        loaded = self.versions.get(v) if v else None
        if loaded is not None:
            return loaded
        if not self.versions:
            raise IndexLoadError(error or f"shards {self.numbers} have no index loaded")
        raise VersionMismatch(
            f"shards {self.numbers} of this replica do not hold version {v} "
            f"(they hold {sorted(self.versions)})"
        )

    def publish(self, loaded: LoadedShards) -> None:
        """Gauges describing ``loaded`` (on load, then every health check: a value set once
        can miss Ray's export when the replica's metrics agent was not connected yet)."""
        m, tags = self.metrics, self.tags
        manifest = loaded.index.manifest
        m.vectors.set(float(loaded.index.ntotal), tags=tags)
        m.dim.set(manifest.dim, tags=tags)
        m.code_size.set(
            sum(manifest.shards[i].files["index"].size for i in self.numbers), tags=tags
        )
        m.gpu.set(float(loaded.placement.on_gpu), tags=tags)
        m.cuvs.set(float(loaded.placement.cuvs), tags=tags)
        m.gpu_index_bytes.set(float(loaded.placement.gpu_bytes), tags=tags)
        m.build_s.set(float(manifest.build.get("total_seconds", 0.0)), tags=tags)
