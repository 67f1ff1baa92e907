"""Step 3 of the distributed build: tune on the held-out rows with every shard in its own
actor, then add the held-out rows and write each shard's final files.

Each ``ShardTuner`` loads one assembled shard. The driver runs the same
``autotune.measure`` as the single-process build with a search that fans the queries out
to every actor and merges their answers (``merge_results``); the ground truth is each
shard's exact answer over its own rows, merged: the exact answer over the whole input.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray

from shards import autotune, memory, parts
from shards.artefact import read_shard, write_shard
from shards.build import append_rows, with_id
from shards.manifest import Manifest
from shards.merge import merge_results
from shards.metric import Metric
from shards.params import SearchOverrides
from shards.shard import Shard
from shards.storage import Store


class _ShardTuner:
    """One assembled shard in memory: searched while tuning, finished after."""

    def __init__(self, shard: int, work_uri: str, staged: str, held_ids: np.ndarray) -> None:
        self.number, self.held_ids = shard, held_ids
        self.work = Store(work_uri)
        manifest = Manifest.from_json(staged, "staged shards")
        metric = Metric.parse(manifest.metric)
        self.metric_type = metric.faiss_metric
        self.data = read_shard(self.work.child("staged"), manifest, shard)
        self.shard = Shard(self.data, metric.keep_max)

    def truth(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over this shard's rows that are not held out."""
        blocks = parts.vector_blocks(self.work.child("parts"), self.number, self.held_ids)
        return autotune.exact_knn(xq, blocks, k, self.metric_type)

    def search(self, xq: np.ndarray, k: int, ov: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.shard.search(xq, k, SearchOverrides(**ov))
        finally:
            memory.release(collect=False)  # as autotune.measure does in one process

    def finish(self, version_uri: str) -> dict[str, Any]:
        """Add the held-out rows and write the shard's final files; returns its entry."""
        held = []
        for x, ids, meta in parts.read_parts(self.work.child("parts"), self.number):
            keep = np.isin(ids, self.held_ids)
            if keep.any():
                kept = None if meta is None else with_id(meta.filter(pa.array(keep)), ids[keep])
                held.append((x[keep], ids[keep], kept))
        append_rows([self.data], [held])
        return write_shard(Store(version_uri), self.number, self.data).to_dict()


ShardTuner = ray.remote(max_restarts=2, max_task_retries=2)(_ShardTuner)


class FanOut:
    """The search function ``autotune.measure`` calls: every actor, merged."""

    def __init__(self, actors: list, keep_max: bool) -> None:
        self.actors, self.keep_max = actors, keep_max
        self._xq: np.ndarray | None = None
        self._ref = None

    def _put(self, xq: np.ndarray):
        if self._xq is not xq:  # the tuning queries travel once, not once per grid point
            self._xq, self._ref = xq, ray.put(xq)
        return self._ref

    def truth(self, xq: np.ndarray, k: int) -> np.ndarray:
        ref = self._put(xq)
        answers = ray.get([a.truth.remote(ref, k) for a in self.actors])
        return merge_results(answers, self.keep_max)[1]

    def __call__(self, xq: np.ndarray, k: int, ov: SearchOverrides):
        ref = self._put(xq)
        answers = ray.get([a.search.remote(ref, k, ov.to_dict()) for a in self.actors])
        return merge_results(answers, self.keep_max)
