"""External ids: 64-bit integers in [0, 2**63), checked once wherever they enter."""

from __future__ import annotations

from typing import Any

import numpy as np

from shards.errors import InvalidQuery, VsearchError


def check_ids(ids: Any, what: str = "ids", error: type[VsearchError] = InvalidQuery) -> np.ndarray:
    """``ids`` as a non-empty 1-d int64 array of ids in [0, 2**63), or ``error``.

    Negative ids are refused: -1 is faiss's padding, and a uint64 above 2**63 - 1 would wrap
    to a negative int64.
    """
    try:
        raw = np.atleast_1d(np.asarray(ids))
        if raw.dtype.kind == "O":  # Python ints beyond uint64, or mixed types
            raw = np.asarray(ids, dtype=np.int64)
    except (OverflowError, ValueError, TypeError):
        raise error(f"{what} must be integers in [0, 2**63)") from None
    if raw.ndim != 1 or raw.size == 0:
        raise error(f"{what} must be a non-empty list of integers")
    if raw.dtype.kind not in "iu":
        raise error(f"{what} must be integers in [0, 2**63), got dtype {raw.dtype}")
    if raw.dtype.kind == "u" and raw.max() > np.iinfo(np.int64).max:
        raise error(f"{what} must be in [0, 2**63), got {int(raw.max())}")
    if raw.dtype.kind == "i" and raw.min() < 0:
        raise error(f"{what} must be in [0, 2**63), got {int(raw.min())}")
    return raw.astype(np.int64)
