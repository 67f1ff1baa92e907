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
from typing import Any

import numpy as np

from shards._faiss import faiss, one_omp_thread, runs_one_omp_thread
from shards.applied import Applied
from shards.live import LiveState
from shards.metric import Metric
from shards.params import SearchOverrides
from shards.planner import QueryPlanner
from shards.shard import Shard

Answer = tuple[np.ndarray, np.ndarray]


class LonePath:
    """``ShardedIndex.search`` of one query with plain options (no params, filter or score
    threshold), or None to take the full path."""

    def __init__(
        self,
        planner: QueryPlanner,
        metric: Metric,
        shards: dict[int, Shard],
        applied: Applied,
        unfiltered: Callable[[np.ndarray, int, SearchOverrides, list[LiveState]], Answer],
    ) -> None:
        self.planner, self.metric, self.applied = planner, metric, applied
        self._unfiltered = unfiltered  # the fan-out over several shards
        self._only = next(iter(shards.values())) if len(shards) == 1 else None

    def search(self, xq: Any, k: Any, target_recall: Any) -> Answer | None:
        ov = self.planner.resolved(target_recall)
        ok = ov is not None and type(xq) is np.ndarray and type(k) is int
        if not (ok and xq.shape == (1, self.planner.dim) and xq.dtype == np.float32):
            return None
        if not 1 <= k <= self.planner.max_k or not xq.flags.c_contiguous:
            return None
        # one C call checks every value: a NaN or an infinity makes the squared norm non-finite
        # (so does a finite norm above 3.4e38, which the full path then accepts). numpy's
        # isfinite here cost 8 callers on 2 cores 5-8% of their throughput (MiniLM, HNSW32).
        norm = faiss.fvec_norm_L2sqr(faiss.swig_ptr(xq), self.planner.dim)
        if not (math.isfinite(norm) and norm > 0.0):
            return None  # the full path raises, or answers a zero query (not for cosine)
        if self.metric is Metric.COSINE:
            xq = xq.copy()
            faiss.normalize_L2(xq)
        assert ov is not None
        if runs_one_omp_thread():
            return self._fan_out(xq, k, ov)
        with one_omp_thread():
            return self._fan_out(xq, k, ov)

    def _fan_out(self, xq: np.ndarray, k: int, ov: SearchOverrides) -> Answer:
        if self._only is not None:  # one shard: its state alone is the consistent snapshot
            return self._only.search_lone(xq, k, ov)
        return self._unfiltered(xq, k, ov, self.applied.states())
