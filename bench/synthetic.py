"""Synthetic clustered embeddings of any dimension, for the sizes no bundled set reaches.

    python -m bench.synthetic --d 96 --n 1000000      (builds and caches bench/cache/synth-*)

Real embeddings are clustered and of low intrinsic dimension: this set draws points from a
mixture of 1,024 Gaussian clusters (random centres, sizes following a Zipf law, each with its
own spread) in a 32-dimensional latent space, maps them into ``d`` dimensions by a random
orthonormal projection, adds isotropic noise (5% of the signal) and normalises them. Queries
are drawn from the same mixture (held out, not in the database). Seeded: the same ``(n, d)``
always gives the same vectors. The metric is L2 on normalised vectors (cosine ranking).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from bench.glove import CACHE, Dataset
from shards._faiss import faiss

CLUSTERS = 1024
LATENT = 32
NOISE = 0.05
N_QUERIES = 10_000
BLOCK = 100_000


def vectors(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` points of the mixture in ``d`` dimensions; the mixture itself is fixed per ``d``."""
    mix = np.random.default_rng(d)  # the mixture depends on d only: db and queries share it
    centres = mix.standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    spread = mix.uniform(0.2, 0.6, CLUSTERS).astype(np.float32)
    weight = 1.0 / np.arange(1, CLUSTERS + 1) ** 0.5
    weight /= weight.sum()
    basis = np.linalg.qr(mix.standard_normal((d, LATENT)))[0].T.astype(np.float32)  # (L, d)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, BLOCK):
        m = min(BLOCK, n - lo)
        c = rng.choice(CLUSTERS, size=m, p=weight)
        z = centres[c] + spread[c, None] * rng.standard_normal((m, LATENT), dtype=np.float32)
        x = z @ basis
        x += NOISE * np.sqrt(LATENT / d) * rng.standard_normal((m, d), dtype=np.float32)
        out[lo : lo + m] = x
    faiss.normalize_L2(out)
    return out


def load(n: int, d: int, n_queries: int = N_QUERIES) -> Dataset:
    """The synthetic set of ``n`` database vectors in ``d`` dimensions, exact ground truth."""
    name = f"synth{d}-{n}-{n_queries}"
    base = os.path.join(CACHE, name)
    os.makedirs(CACHE, exist_ok=True)
    if os.path.exists(base + "-db.npy"):
        xb = np.load(base + "-db.npy", mmap_mode="r")
        xq = np.load(base + "-xq.npy")
    else:
        xb = vectors(n, d, seed=1)
        xq = vectors(n_queries, d, seed=2)
        np.save(base + "-db.npy", xb)
        np.save(base + "-xq.npy", xq)
    if os.path.exists(base + "-gt.npy"):
        gt = np.load(base + "-gt.npy")
    else:
        gt = faiss.knn(xq, np.ascontiguousarray(xb), 100, metric=faiss.METRIC_INNER_PRODUCT)[1]
        np.save(base + "-gt.npy", gt)
    return Dataset(name, np.asarray(xb), xq, gt, base + "-db.npy")


def main() -> int:
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 100_000
    d = int(sys.argv[sys.argv.index("--d") + 1]) if "--d" in sys.argv else 96
    ds = load(n, d)
    print(f"{ds.name}: {ds.xb.shape} database, {ds.xq.shape} queries, cached in {CACHE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
