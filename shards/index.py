"""ShardedIndex: the shards of one index version, searched together and merged exactly."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import numpy as np

from shards._faiss import BLAS_MIN_QUERIES, one_omp_thread, use_blas_from
from shards.applied import Applied
from shards.artefact import open_version, read_shard
from shards.coarse import coarse_assign, quantizer_digest
from shards.compaction import compact
from shards.errors import (
    ConcurrentUpdate,
    CorruptLogSegment,
    InvalidInput,
    SequenceBehind,
    UnknownId,
    UnsupportedOperation,
    VersionMismatch,
)
from shards.filters import Filter, parse_filter
from shards.gpu import GpuOptions, Placement
from shards.ids import check_ids
from shards.live import LiveState
from shards.log import Mutation, MutationLog
from shards.lone import LonePath
from shards.manifest import Manifest
from shards.merge import merge_results, within
from shards.metric import Metric
from shards.params import SearchOverrides
from shards.partition import assign_shards
from shards.planner import QueryPlanner
from shards.query import Query
from shards.shard import Shard
from shards.storage import Store
from shards.writes import delete_of, metadata_schema, upsert_of

logger = logging.getLogger(__name__)
WRITE_ATTEMPTS = 8  # appends lost to another writer of the same log before giving up


# From this many queries one coarse assignment serves every shard; fewer are searched by each
# shard whole, in faiss: for a lone query the preassigned path's set-up and re-sort in Python
# cost more than the quantizer searches they save (GloVe 390k, 4 shards, one thread, same run:
# 493 us alone against 696 us shared; 439 against 390 at 4 queries; bench/single_query.py).
COARSE_MIN_QUERIES = 4


class ShardedIndex:
    """One index version in memory (all shards, or the subset a replica serves)."""

    def __init__(
        self, manifest: Manifest, shards: dict[int, Shard], root_uri: str, *, log: bool = False
    ) -> None:
        self.manifest = manifest
        self.shards = shards  # shard number -> Shard
        self.root_uri = root_uri
        self.metric = Metric.parse(manifest.metric)
        self.planner = QueryPlanner(manifest)
        self.knobs = self.planner.knobs
        use_blas_from(BLAS_MIN_QUERIES, manifest.dim)
        digests = {quantizer_digest(s.index) for s in shards.values()}
        # one coarse assignment serves every shard when they share the trained quantizer
        self.shared_coarse = len(shards) > 1 and len(digests) == 1 and None not in digests
        first = next(iter(shards.values()))
        schema = metadata_schema(None if first.metadata is None else first.metadata.schema)
        self.metadata_schema = schema
        # the mutation log under the root: replayed on open, written by upsert/delete
        self.log = MutationLog(root_uri, manifest.dim, schema) if log and root_uri else None
        self.log_error: str | None = None  # a corrupt segment stopped the replay here
        self.applied = Applied(shards, manifest.index_version)  # all shards at once
        self.lone = LonePath(self.planner, self.metric, shards, self.applied, self._unfiltered)

    @classmethod
    def open(
        cls,
        uri: str,
        version: str | None = None,
        *,
        shards: list[int] | None = None,
        verify: bool = True,
        mmap: bool = False,
        log: bool = True,
    ) -> ShardedIndex:
        """Load a version (CURRENT by default); ``shards`` restricts to some shard numbers.

        ``log``: replay the index's mutation log after the version's base sequence, and make
        ``upsert`` / ``add`` / ``delete`` durable through it (False: the version's files
        alone, and writes that stay in this process, e.g. edits to publish with ``compact``).

        Raises:
            IndexLoadError: (MissingFile, CorruptFile, ManifestMismatch) naming the bad file.
        """
        store, manifest = open_version(uri, version)
        wanted = range(manifest.num_shards) if shards is None else shards
        for i in wanted:
            if not 0 <= i < manifest.num_shards:
                raise InvalidInput(f"shard {i} does not exist (index has {manifest.num_shards})")
        keep_max = Metric.parse(manifest.metric).keep_max
        loaded = {
            i: Shard(
                read_shard(store, manifest, i, verify=verify, mmap=mmap),
                keep_max,
                manifest.base_sequence,
            )
            for i in wanted
        }
        # a version folder opened directly publishes new versions beside itself
        root = uri.rstrip("/").rsplit("/", 1)[0] if store.path() == Store(uri).path() else uri
        index = cls(manifest, loaded, root, log=log)
        if index.log is not None:
            index.catch_up(strict=False)
        return index

    def place(self, device: str | GpuOptions) -> Placement:
        """Search every loaded shard from ``device`` ("cpu", "cuda:N", or GpuOptions).

        Raises:
            GpuUnavailable, GpuUnsupportedIndex, GpuOutOfMemory: see ``shards.gpu.to_gpu``.
        """
        placements = [shard.place(device) for shard in self.shards.values()]
        self.lone.forget()  # its plans search where the shards were
        if placements[0].on_gpu:
            self.shared_coarse = False  # each GPU clone assigns its own queries
        return Placement(
            placements[0].device,
            cuvs=placements[0].cuvs,
            float16=placements[0].float16,
            multi_gpu=placements[0].multi_gpu,
            gpu_bytes=sum(p.gpu_bytes for p in placements),
        )

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def index_version(self) -> str:
        return self.manifest.index_version

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards.values())

    @property
    def changes(self) -> int:
        """Rows changed since the version was built: delta rows and tombstoned main rows."""
        return sum(len(s.delta_ids) + s.tombstones for s in self.shards.values())

    @property
    def sequence(self) -> int:
        """The mutation log position every loaded shard has applied (0: none)."""
        return self.applied.sequence

    def resolve(
        self, params: Any = None, target_recall: float | None = None, k: int = 10
    ) -> SearchOverrides:
        """Effective overrides: explicit ``params`` over ``target_recall``'s over the defaults."""
        return self.planner.resolve(params, target_recall, k)

    def search(
        self,
        xq: np.ndarray,
        k: int = 10,
        params: Any = None,
        *,
        target_recall: float | None = None,
        filter: Any = None,
        score_threshold: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of ``xq`` (nq, d) over every loaded shard: D (nq, k) float32, I (nq, k) int64.

        Scores: squared L2 (smaller is better), or inner product / cosine similarity
        (larger is better). Missing results are id -1. ``filter``: only rows whose metadata
        match it (``shards.filters`` has the form; ``search_planned`` says how each shard
        searched). ``score_threshold``: only results within that distance (L2) or at least
        that similarity (inner product, cosine); the rest is padding.

        Raises:
            InvalidQuery: bad shape, dimension, NaN/Inf, k, an override, or the filter.
        """
        if params is None and filter is None and score_threshold is None:
            lone = self.lone.search(xq, k, target_recall)  # the common lone query, in fewer steps
            if lone is not None:
                return lone
        k = self.planner.check_k(k)
        ov = self.resolve(params, target_recall, k)
        filt = self.parse_filter(filter)
        threshold = self.planner.check_threshold(score_threshold)
        xq = self.planner.prepare(xq)
        self.planner.check_cost(len(xq), k, ov)
        D, I = self.search_prepared(xq, k, ov, filt)
        if threshold is not None:
            D, I = within(D, I, threshold, self.metric.keep_max)
        return D, I

    def parse_filter(self, raw: Any) -> Filter | None:
        """``raw`` checked against this index's metadata columns (None: no filter)."""
        return raw if isinstance(raw, Filter) else parse_filter(raw, self.metadata_schema)

    def search_prepared(
        self, xq: np.ndarray, k: int, ov: SearchOverrides, filt: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search already checked queries with resolved overrides (no validation)."""
        D, I, _ = self.search_planned(xq, k, ov, filt)
        return D, I

    def search_planned(
        self,
        xq: np.ndarray,
        k: int,
        ov: SearchOverrides,
        filt: Filter | None = None,
        states: list[LiveState] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """``search_prepared`` and the plan of each shard for a filter (empty without one).
        ``states``: the shards' states to search (``applied.states()``, taken once for
        several calls that make one answer); a fresh snapshot by default.

        A single query runs with one OpenMP thread (``_faiss.one_omp_thread``)."""
        with one_omp_thread() if len(xq) == 1 else nullcontext():
            if states is None:
                states = self.applied.states()  # no mutation half applied
            if filt is None:
                return *self._unfiltered(xq, k, ov, states), {}
            plans: dict[int, str] = {}
            parts = []  # each shard widens its own search: no shared assignment
            for (number, shard), st in zip(self.shards.items(), states, strict=True):
                D, I, plans[number] = shard.search_filtered(xq, k, ov, filt, st)
                parts.append((D, I))
            return *merge_results(parts, self.metric.keep_max), plans

    def _unfiltered(
        self, xq: np.ndarray, k: int, ov: SearchOverrides, states: list[LiveState]
    ) -> tuple[np.ndarray, np.ndarray]:
        shards = list(self.shards.values())
        shared = self.shared_coarse and len(xq) >= COARSE_MIN_QUERIES
        first = shards[0]
        coarse = coarse_assign(first.index, xq, ov, first.layout) if shared else None
        parts = [
            shard.search(xq, k, ov, coarse, st) for shard, st in zip(shards, states, strict=True)
        ]
        return merge_results(parts, self.metric.keep_max)

    def search_by_id(
        self,
        ids: Any,
        k: int = 10,
        params: Any = None,
        *,
        target_recall: float | None = None,
        filter: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """'More like this': search with the stored vectors of ``ids``, each id left out."""
        k = self.planner.check_k(k)
        filt = self.parse_filter(filter)
        ids = check_ids(ids)
        self.planner.check_count(len(ids))
        query = Query(k, self.resolve(params, target_recall, k), exclude=ids)
        self.planner.check_cost(len(ids), query.fetch_k, query.overrides)
        xq = self.reconstruct(ids)
        return query.finish(*self.search_prepared(xq, query.fetch_k, query.overrides, filt))

    def search_query(self, xq: np.ndarray, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """``search_query_planned`` without the plans."""
        D, I, _ = self.search_query_planned(xq, query)
        return D, I

    def search_query_planned(
        self, xq: np.ndarray, query: Query, states: list[LiveState] | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Search prepared queries ``xq`` (nq, d) for ``query`` as a shard replica does: the
        overrides over this version's own defaults, checked against this version's knobs;
        ``query.fetch_k`` results (the caller merges and finishes), and each shard's plan
        for the query's filter.

        Raises:
            VersionMismatch: ``query.version`` names another version than this one.
            InvalidQuery: an override this index does not have.
        """
        if query.version is not None and query.version != self.index_version:
            raise VersionMismatch(
                f"asked for version {query.version}, these shards hold {self.index_version}"
            )
        if query.min_sequence and query.min_sequence > self.sequence:
            raise SequenceBehind(
                f"asked for mutation sequence {query.min_sequence}, these shards are at "
                f"{self.sequence}"
            )
        ov = query.overrides.over(self.planner.defaults)
        self.knobs.check(ov, query.fetch_k)
        filt = self.parse_filter(query.filter)
        return self.search_planned(xq, query.fetch_k, ov, filt, states)

    def snapshot(self) -> tuple[int, list[LiveState]]:
        """``(sequence, states)``: the mutation sequence, then one state of every loaded
        shard (``shards`` order, between two mutations). In that order every state has
        applied at least the sequence an answer names (read-your-writes), and a reader of
        the states never sees a mutation half applied (an upsert moving an id between range
        shards, in neither)."""
        sequence = self.sequence
        return sequence, self.applied.states()

    def contains(self, ids: Any, states: list[LiveState] | None = None) -> np.ndarray:
        """Bool per id: live in one of the loaded shards (under ``states``, from
        ``snapshot``; taken now by default)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        found = np.zeros(len(ids), dtype=bool)
        for shard, st in self._with_states(states):
            found |= shard.contains(ids, st)
        return found

    def reconstruct(self, ids: Any, states: list[LiveState] | None = None) -> np.ndarray:
        """Stored vectors (as indexed: normalised for cosine) of ``ids``, (n, d) float32
        (under ``states``, from ``snapshot``; taken now by default).

        Raises:
            UnknownId: an id is in none of the loaded shards.
        """
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for shard, st in self._with_states(states):
            here = ~found & shard.contains(ids, st)
            if here.any():
                out[here] = shard.reconstruct(ids[here], st)
                found |= here
        if not found.all():
            raise UnknownId(f"id {int(ids[~found][0])} is not in the index")
        return out

    def _with_states(self, states: list[LiveState] | None):
        """``(shard, its state)`` of every loaded shard, one snapshot of them all."""
        states = self.applied.states() if states is None else states
        return zip(self.shards.values(), states, strict=True)

    # ---- writes ----

    def upsert(self, x: np.ndarray, ids: Any, metadata: Any = None) -> int:
        """Insert or replace vectors ``x`` (n, d) with ``ids`` (n,) in [0, 2**63), and their
        ``metadata`` rows; searchable at once (delta index), durable in the log when opened
        with ``log=True``. Returns n; ``sequence`` is then this write's log position.

        Raises:
            InvalidInput: see ``shards.writes.upsert_of``; nothing is written.
        """
        m = upsert_of(
            x, ids, metadata, dim=self.dim, metric=self.metric, schema=self.metadata_schema
        )
        self.write(m)
        return len(m)

    def add(self, x: np.ndarray, ids: Any, metadata: Any = None) -> int:
        """``upsert`` of ids that must be new.

        Raises:
            InvalidInput: an id already exists (in any shard), or as for ``upsert``.
        """
        m = upsert_of(
            x, ids, metadata, dim=self.dim, metric=self.metric, schema=self.metadata_schema
        )
        self.need_every_shard("add")
        present = self.contains(m.ids)
        if present.any():
            raise InvalidInput(f"id {int(m.ids[present][0])} already exists; delete it first")
        self.write(m)
        return len(m)

    def delete(self, ids: Any) -> int:
        """Delete ``ids`` (absent ones are ignored); returns how many were live."""
        return self.write(delete_of(ids))

    def write(self, m: Mutation) -> int:
        """Log ``m`` (durably, after the mutations already in the log) and apply it; returns
        how many of its ids were live before. Without a log it is applied here only."""
        self.need_every_shard(m.op)
        if self.log is None:
            return self.apply(m)
        for _ in range(WRITE_ATTEMPTS):
            self.catch_up()  # apply others' writes first: the log's order is the order
            try:  # right after what this index holds: if another writer took that sequence
                (logged,) = self.log.append([m], after=self.sequence)  # the name says so
            except ConcurrentUpdate:
                continue
            return self.apply(logged)
        raise ConcurrentUpdate(f"the mutation log kept moving for {WRITE_ATTEMPTS} attempts")

    def apply(self, m: Mutation) -> int:
        """Apply a mutation (logged or not) to the loaded shards: its ids leave every shard,
        upserted rows join their owner's delta, all at once for searches
        (``shards.applied``). Returns how many ids were live before.

        Raises:
            LogGap: a logged mutation that does not follow the applied sequence (the ones
                between are missing here: ``catch_up`` from the log's files first).
        """
        return self.applied.apply(m, self.owner_of(m.ids) if m.op == "upsert" else None)

    def removed_at(self, sequence: int) -> int:
        """How many live ids the logged mutation at ``sequence`` removed from the loaded
        shards, for the write's answer (SequenceBehind when not remembered)."""
        return self.applied.removed_at(sequence)

    def catch_up(self, strict: bool = True) -> int:
        """Apply the log's mutations after ``sequence``; returns how many. A corrupt segment
        stops it there (``log_error``): raised when ``strict``, else logged and kept."""
        assert self.log is not None
        count = 0
        try:
            for m in self.log.read(self.sequence):
                self.apply(m)
                count += 1
        except CorruptLogSegment as exc:
            self.log_error = exc.message
            if strict:
                raise
            logger.error("%s", exc.message)
        return count

    def need_every_shard(self, what: str) -> None:
        if len(self.shards) != self.manifest.num_shards:
            # an id may live in any shard (range partition, or ids added before): every
            # shard must be asked whether it holds one already
            raise UnsupportedOperation(f"{what} needs every shard loaded (ids must stay unique)")

    def owner_of(self, ids: np.ndarray) -> np.ndarray:
        """Shard number that new ``ids`` go to: by hash, or the last shard for ranges."""
        n = self.manifest.num_shards
        if self.manifest.partition == "range":
            return np.full(len(ids), n - 1, dtype=np.int64)
        return assign_shards(ids, ids, n, "hash", n)

    def compact(self) -> Manifest:
        """Write a new version with deletes applied and adds merged; returns its manifest
        (``shards.compaction``). The loaded version is left as it is. With the log, the
        log's mutations are applied first, and the new version records the last one as its
        base sequence (readers replay what follows)."""
        self.need_every_shard("compact")
        if self.log is not None:
            self.catch_up()
        return compact(self.manifest, self.shards, self.root_uri, self.sequence)

    def iter_vectors(self, block: int = 65536):
        """Yield ``(vectors, ids)`` blocks of every live vector (lossless indexes only)."""
        for shard in self.shards.values():
            x, ids = shard.live_contents()
            for start in range(0, len(ids), block):
                yield x[start : start + block], ids[start : start + block]
