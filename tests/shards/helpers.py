"""Test helpers: brute-force oracle and building small indexes from arrays."""

from __future__ import annotations

import numpy as np

from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards._faiss import faiss
from shards.metric import Metric, prepare_vectors


def brute_force(xb, xq, k, metric: str, ids=None):
    """Exact (D, I) of ``xq`` over ``xb`` with faiss.knn; I mapped through ``ids``."""
    m = Metric.parse(metric)
    xb = prepare_vectors(xb, xb.shape[1], m, what="xb")
    xq = prepare_vectors(xq, xq.shape[1], m)
    D, I = faiss.knn(xq, xb, k, metric=m.faiss_metric)
    if ids is not None:
        I = np.where(I >= 0, np.asarray(ids)[I], -1)
    return D, I


def build(tmp_path, xb, name="idx", **opts) -> ShardedIndex:
    """Save ``xb`` as .npy, build it with ``BuildOptions(**opts)`` and open it."""
    src = tmp_path / f"{name}.npy"
    np.save(src, xb)
    opts.setdefault("progress", False)
    build_index(VectorSource(str(src)), str(tmp_path / name), BuildOptions(**opts))
    return ShardedIndex.open(str(tmp_path / name))


def recall(I, gt) -> float:
    k = gt.shape[1]
    return float((I[:, :k, None] == gt[:, None, :]).any(2).mean())


def assert_equal_up_to_exact_ties(D1, I1, D2, I2):
    """Same scores; same ids except reordered among results with exactly equal scores."""
    np.testing.assert_array_equal(D1, D2)
    for row in np.flatnonzero((I1 != I2).any(axis=1)):
        for score in np.unique(D1[row][I1[row] != I2[row]]):
            tie = D1[row] == score
            assert tie.sum() > 1, f"row {row}: ids differ at a non-tied score {score}"
            if not tie[-1]:  # a tie group cut by k may hold different members
                assert set(I1[row][tie]) == set(I2[row][tie])
