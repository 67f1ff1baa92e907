"""Test helpers: brute-force oracle and building small indexes from arrays."""

from __future__ import annotations

import numpy as np
from faiss.contrib.evaluation import check_ref_knn_with_draws

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


def float_tolerance(xb, xq, metric: str) -> float:
    """Absolute score tolerance of float32 search: faiss computes L2 as |x|^2 + |y|^2 - 2<x, y>
    with BLAS (from 8 queries on), whose rounding error is about d * eps * (|x|^2 + |y|^2)."""
    xb, xq = np.asarray(xb, np.float64), np.asarray(xq, np.float64)
    if metric == "cosine":
        return 1e-5
    nb, nq = (xb**2).sum(1).max(), (xq**2).sum(1).max()
    scale = nb + nq if metric == "l2" else np.sqrt(nb * nq)
    return float(xb.shape[1] * np.finfo(np.float32).eps * scale)


def assert_same_knn(Dref, Iref, D, I, tol: float) -> None:
    """Same scores within ``tol``; same ids except among results tied within ``tol``."""
    check_ref_knn_with_draws(Dref, Iref, D, I, rtol=0, atol=tol)
