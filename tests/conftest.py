"""Shared fixtures: seeded data, built indexes, and the gpu marker's skip."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("VSEARCH_PROGRESS", "0")


def pytest_collection_modifyitems(config, items):
    from shards.cuda import gpu_count

    if gpu_count() > 0:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and faiss-gpu-cuvs")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def clustered(n: int, d: int, seed: int, centers: int = 50, latent: int = 8) -> np.ndarray:
    """Seeded float32 data (n, d): clusters on a low-dimensional subspace, like real embeddings."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).standard_normal((latent, d)).astype(np.float32)
    c = np.random.default_rng(1).standard_normal((centers, latent)).astype(np.float32) * 3
    z = c[rng.integers(0, centers, n)] + rng.standard_normal((n, latent)).astype(np.float32)
    noise = 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    return (z @ basis + noise).astype(np.float32)


@pytest.fixture(scope="session")
def data():
    """(xb, xq): 20,000 database and 200 query vectors, d=32."""
    return clustered(20_000, 32, seed=1), clustered(200, 32, seed=2)
