"""The lone query: one float32 query with plain options, searched in as few Python steps as
the answer allows.

Most interactive traffic is one query per call. Its checks and fan-out hold Python's lock,
and with more callers than cores that time queues every caller (8 callers on 2 cores: 1.4
cores busy), so this path is kept short. It answers only queries that pass its checks and
returns None for everything else: ``ShardedIndex.search`` then takes the full path, which
also raises every error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np

from shards._faiss import faiss, one_omp_thread, runs_one_omp_thread
from shards.applied import Applied
from shards.live import LiveState
from shards.metric import Metric
from shards.params import SearchOverrides
from shards.planner import QueryPlanner
from shards.shard import LonePlan, Shard

Answer = tuple[np.ndarray, np.ndarray]


_PLAIN = (float, int, type(None))  # target_recall types a plan is kept for
_F32 = np.dtype(np.float32)
_ptr = faiss.swig_ptr
_norm = faiss.fvec_norm_L2sqr
MAX_PLANS = 64  # (target_recall, k) pairs kept; callers rarely use more than a few


class LonePath:
    """``ShardedIndex.search`` of one query with plain options (no params, filter or score
    threshold), or None to take the full path.

    On one CPU shard with no delta the search goes straight to faiss through a ``LonePlan``
    made once per (target_recall, k) and shard state: about 1 us of Python besides faiss.
    Each microsecond counts several times over with 8 callers on 2 cores, as the callers
    queue for Python's lock (MiniLM 100k, HNSW: 1.9 us more of Python per query cost 11% of
    the throughput). Otherwise it resolves the overrides and fans out over the shards.
    """

    def __init__(
        self,
        planner: QueryPlanner,
        metric: Metric,
        shards: dict[int, Shard],
        applied: Applied,
        unfiltered: Callable[[np.ndarray, int, SearchOverrides, list[LiveState]], Answer],
    ) -> None:
        self.planner, self.applied = planner, applied
        self._unfiltered = unfiltered  # the fan-out over several shards
        self._only = next(iter(shards.values())) if len(shards) == 1 else None
        self._shape, self._d = (1, planner.dim), planner.dim
        self._cosine = metric is Metric.COSINE
        self._plans: dict[tuple[Any, int], LonePlan] = {}

    def search(self, xq: Any, k: Any, target_recall: Any) -> Answer | None:
        if type(xq) is not np.ndarray or type(k) is not int or type(target_recall) not in _PLAIN:
            return None
        if xq.shape != self._shape or xq.dtype != _F32 or not xq.flags.c_contiguous:
            return None
        plan = self._plans.get((target_recall, k))
        if plan is None or plan.state is not plan.shard.state:
            plan = self._plan(target_recall, k)
        if plan is not None and plan.exact and not self._cosine:
            # Every distance reported is computed from the whole query: a NaN or an infinity
            # in it makes them all non-finite, so the answer tells. Checking the query first
            # (one more faiss call, which lets go of Python's lock) cost 8 callers on 2 cores
            # about 5% of their throughput (MiniLM 100k, PCA192,HNSW32,Flat,RFlat).
            D, I = _searched(plan, xq, k)
            if I[0, 0] < 0 or not math.isfinite(D[0, 0]):
                return None  # a NaN or an infinity, or no answer: the full path raises or answers
            return D, I
        # one C call checks every value: a NaN or an infinity makes the squared norm non-finite
        # (so does a finite norm above 3.4e38, which the full path then accepts). numpy's
        # isfinite here cost 8 callers on 2 cores 5-8% of their throughput (MiniLM, HNSW32).
        norm = _norm(_ptr(xq), self._d)
        if not (math.isfinite(norm) and norm > 0.0):
            return None  # the full path raises, or answers a zero query (not for cosine)
        if self._cosine:
            xq = xq.copy()
            faiss.normalize_L2(xq)
        if plan is None:
            return self._resolved(xq, k, target_recall)
        return _searched(plan, xq, k)

    def forget(self) -> None:
        """Drop every plan (the shards were placed on another device: a plan made before
        would still search the old one)."""
        self._plans.clear()

    def _plan(self, target_recall: Any, k: int) -> LonePlan | None:
        if self._only is None:  # several shards: no plan (``_resolved`` resolves once)
            return None
        ov = self.planner.resolved(target_recall)
        if ov is None or not 1 <= k <= self.planner.max_k:
            return None
        plan = self._only.plan_lone(ov, k)
        if plan is not None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[target_recall, k] = plan
        return plan

    def _resolved(self, xq: np.ndarray, k: int, target_recall: Any) -> Answer | None:
        """Several shards, a delta or a GPU: the overrides resolved before, searched as
        ``search`` would, under one snapshot of the states."""
        ov = self.planner.resolved(target_recall)
        if ov is None or not 1 <= k <= self.planner.max_k:
            return None  # not resolved yet, or a bad k: the full path resolves or raises
        with nullcontext() if runs_one_omp_thread() else one_omp_thread():
            if self._only is not None:  # one shard: its state alone is the consistent snapshot
                return self._only.search(xq, k, ov)
            return self._unfiltered(xq, k, ov, self.applied.states())


def _searched(plan: LonePlan, xq: np.ndarray, k: int) -> Answer:
    D = np.empty((1, k), _F32)
    I = np.empty((1, k), np.int64)
    if runs_one_omp_thread():
        plan.search(1, _ptr(xq), k, _ptr(D), _ptr(I), plan.params)
    else:
        with one_omp_thread():
            plan.search(1, _ptr(xq), k, _ptr(D), _ptr(I), plan.params)
    # indexing, not .take: take lets go of Python's lock, and each let-go queues callers
    return D, I if plan.ids is None else plan.ids[I]
