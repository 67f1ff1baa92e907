"""Assign vectors to shards: by a stable hash of the id (default) or by contiguous row ranges."""

from __future__ import annotations

import numpy as np

from shards.errors import InvalidInput

SCHEMES = ("hash", "range")


def stable_hash(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 ids: the same on every machine, numpy and Python version."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def assign_shards(
    ids: np.ndarray, rows: np.ndarray, num_shards: int, scheme: str, n_total: int
) -> np.ndarray:
    """Shard number (int64) of each vector; ``rows`` are positions in the input.

    ``hash``: ``stable_hash(id) % num_shards``. ``range``: row ``r`` of ``n_total`` goes to
    shard ``r * num_shards // n_total``, i.e. contiguous blocks of the input.
    """
    if scheme == "hash":
        return (stable_hash(ids) % np.uint64(num_shards)).astype(np.int64)
    if scheme == "range":
        return (np.asarray(rows, dtype=np.int64) * num_shards) // max(1, n_total)
    raise InvalidInput(f"unknown partition scheme {scheme!r}; expected one of {SCHEMES}")
