"""Query checks and override resolution for an index version, from its manifest alone.

The router of the service uses this without loading any shard; ``ShardedIndex`` uses it too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shards import autotune
from shards.choice import template_index
from shards.errors import InvalidQuery, UnsupportedOperation
from shards.manifest import Manifest
from shards.metric import Metric, prepare_vectors
from shards.params import Knobs, SearchOverrides

MAX_K = 1024
MAX_QUERIES = 65536
# nq * k * k_factor: the candidates one request makes each shard hold (12 bytes each, D and
# I), plus the output nq * k. 2**24 is 200 MB per shard at most; 1024 queries x k 1024 x
# k_factor 64 would be 64 times that.
MAX_CANDIDATES = 2**24
_PLAIN = (float, int, type(None))  # target_recall types whose resolved overrides are kept


class QueryPlanner:
    """Checks queries and resolves overrides for one index version."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        max_k: int = MAX_K,
        max_queries: int = MAX_QUERIES,
        max_candidates: int = MAX_CANDIDATES,
    ):
        self.manifest = manifest
        self.metric = Metric.parse(manifest.metric)
        self.dim = manifest.dim
        self.max_k, self.max_queries = max_k, max_queries
        self.max_candidates = max_candidates
        template = template_index(manifest.factory, manifest.dim, self.metric.faiss_metric)
        self.knobs = Knobs.of(template)
        self.defaults = SearchOverrides.parse(manifest.default_params)
        self._resolved: dict[float, dict[str, Any]] = {}
        self._effective: dict[float | None, SearchOverrides] = {}  # target -> resolved
        tuning = manifest.tuning or {}
        # the recall the defaults were tuned for (None: exact, or not tuned)
        self.tuned_for: float | None = (
            float(tuning["target"]) if tuning.get("curve") and self.knobs.names() else None
        )

    def check_k(self, k: Any) -> int:
        """``k`` as an int, or InvalidQuery unless it is an integer in [1, max_k]."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.max_k:
            raise InvalidQuery(f"k must be an integer in [1, {self.max_k}], got {k!r}")
        return int(k)

    def check_threshold(self, threshold: Any) -> float | None:
        """A ``score_threshold``: None, or a finite number (a distance for L2, a similarity
        for inner product and cosine)."""
        if threshold is None:
            return None
        if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.number):
            raise InvalidQuery(f"score_threshold must be a number, got {threshold!r}")
        if not math.isfinite(threshold):
            raise InvalidQuery(f"score_threshold must be finite, got {threshold!r}")
        return float(threshold)

    def check_count(self, nq: int) -> None:
        """InvalidQuery unless ``nq`` queries (vectors or ids) are allowed in one call."""
        if nq > self.max_queries:
            raise InvalidQuery(f"at most {self.max_queries} queries per call, got {nq}")

    def prepare(self, xq: Any) -> np.ndarray:
        """Checked (nq, d) float32 queries (normalised for cosine)."""
        shape = getattr(xq, "shape", None)
        if shape is not None and len(shape) == 2:
            self.check_count(shape[0])  # before the copy and the checks of every value
        xq = prepare_vectors(xq, self.dim, self.metric)
        self.check_count(len(xq))
        return xq

    def check_cost(self, nq: int, k: int, ov: SearchOverrides) -> None:
        """InvalidQuery when ``nq`` queries of ``k`` results with ``ov`` would make a shard
        hold more than ``max_candidates`` candidates (k * k_factor of each query)."""
        cost = nq * k * max(1.0, ov.k_factor or 1.0)
        if cost > self.max_candidates:
            raise InvalidQuery(
                f"{nq} queries x k {k} x k_factor {ov.k_factor or 1:g} = {cost:,.0f} candidates "
                f"per shard; the limit is {self.max_candidates:,}: send fewer queries per call, "
                "or a smaller k or k_factor"
            )

    def resolve(
        self, params: Any = None, target_recall: float | None = None, k: int = 10
    ) -> SearchOverrides:
        """Effective overrides: explicit ``params`` over ``target_recall``'s over the defaults."""
        plain = params is None and type(target_recall) in _PLAIN
        if plain:  # the common request: no explicit knobs; resolved once per target
            hit = self._effective.get(target_recall)
            if hit is not None:
                return hit
        ov = SearchOverrides.parse(params)
        if target_recall is not None:
            ok = isinstance(target_recall, int | float) and not isinstance(target_recall, bool)
            if not ok or not 0.0 < float(target_recall) <= 1.0:
                raise InvalidQuery(f"target_recall must be in (0, 1], got {target_recall!r}")
            ov = ov.over(SearchOverrides(**self._tuned(float(target_recall))))
        eff = ov.over(self.defaults)
        self.knobs.check(eff, k)
        if plain:
            if len(self._effective) > 1024:
                self._effective.clear()
            self._effective[target_recall] = eff
        return eff

    def resolved(self, target_recall: Any) -> SearchOverrides | None:
        """The overrides ``resolve(None, target_recall)`` returned before, if it did."""
        return self._effective.get(target_recall) if type(target_recall) in _PLAIN else None

    def _tuned(self, target: float) -> dict[str, Any]:
        if not self.knobs.names():
            return {}  # exact index: every target is met
        if target not in self._resolved:  # per request otherwise: cache the curve lookup
            curve = (self.manifest.tuning or {}).get("curve")
            if not curve:
                raise UnsupportedOperation(
                    "this index was not tuned: run `python -m shards autotune`"
                )
            if len(self._resolved) > 1024:
                self._resolved.clear()
            self._resolved[target] = autotune.resolve(curve, target)
        return dict(self._resolved[target])
