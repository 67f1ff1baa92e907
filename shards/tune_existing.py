"""Re-tune an existing index and publish the result as a new version (same data)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from shards import autotune
from shards.artefact import ShardData, new_version_name, write_version
from shards.errors import UnsupportedOperation
from shards.index import ShardedIndex
from shards.manifest import Manifest
from shards.metric import prepare_vectors
from shards.tuning import TUNE_K, TUNE_QUERIES, timing_of, with_tuning


def autotune_index(
    uri: str,
    version: str | None = None,
    *,
    queries: str | np.ndarray | None = None,
    target: float = 0.95,
    seed: int = 0,
    method: str | None = None,
) -> Manifest:
    """Measure the curve on ``uri`` (leave-one-out on stored vectors, or given queries: a
    ``.npy`` path or an array) and publish it as a new version; ``method``: how the
    queries were chosen, for the manifest (default: said from ``queries``)."""
    index = ShardedIndex.open(uri, version)
    if not index.knobs.names():
        raise UnsupportedOperation("this index is exact (no search knobs): nothing to tune")
    if queries is not None:
        raw = np.load(queries) if isinstance(queries, str) else queries
        xq = prepare_vectors(raw, index.dim, index.metric)
        qids = np.full(len(xq), -1, dtype=np.int64)  # real queries: nothing to leave out
    else:
        ids = np.concatenate([s.ids[s.live_rows()] for s in index.shards.values()])
        qids = np.random.default_rng(seed).choice(ids, min(TUNE_QUERIES, len(ids)), replace=False)
        xq = index.reconstruct(qids)
    gt = autotune.ground_truth(xq, index.iter_vectors(), TUNE_K + 1, index.metric.faiss_metric)
    if method is None:
        method = (
            f"held-out queries from {queries}"
            if isinstance(queries, str)
            else f"{len(xq)} given queries"
            if queries is not None
            else "leave-one-out on stored vectors (optimistic for HNSW: pass --queries)"
        )
    traffic = index.manifest.build.get("traffic", "batch")  # built before traffic: batches
    tuned = with_tuning(
        index.manifest,
        index.search_prepared,
        index.knobs,
        xq,
        qids,
        gt,
        target,
        method,
        **timing_of(traffic),
    )
    manifest = replace(
        tuned,
        index_version=new_version_name(),
        parent_version=index.index_version,
        created_at=datetime.now(UTC).isoformat(),
    )
    datas = [ShardData(s.index, s.ids, s.metadata) for s in index.shards.values()]
    return write_version(index.root_uri, manifest, datas, expect_current=index.index_version)
