"""Metrics (l2, ip, cosine) and the one place vectors are checked and prepared for faiss."""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from shards._faiss import faiss
from shards.errors import InvalidQuery, VsearchError


class Metric(StrEnum):
    """A similarity metric; cosine is inner product on L2-normalised vectors."""

    L2 = "l2"
    IP = "ip"
    COSINE = "cosine"

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self is Metric.L2 else faiss.METRIC_INNER_PRODUCT

    @property
    def keep_max(self) -> bool:
        """True when larger scores are better (ip, cosine)."""
        return self is not Metric.L2

    @classmethod
    def parse(cls, value: str | Metric) -> Metric:
        try:
            return cls(str(value.value if isinstance(value, Metric) else value).lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise InvalidQuery(f"unknown metric {value!r}; expected one of {names}") from None


def prepare_vectors(
    x: np.ndarray,
    d: int,
    metric: Metric,
    *,
    what: str = "queries",
    error: type[VsearchError] = InvalidQuery,
) -> np.ndarray:
    """Check ``x`` is a finite (n, d) array and return it as C-contiguous float32.

    Cosine vectors are L2-normalised (on a copy); a zero vector under cosine is rejected.

    Raises:
        InvalidQuery (or ``error``): wrong rank or dimension, non-numeric dtype, NaN/Inf, zero
            cosine vector.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise error(f"{what} must be a 2-d array (n, {d}), got shape {x.shape}")
    if x.shape[1] != d:
        raise error(f"{what} have dimension {x.shape[1]}, the index has dimension {d}")
    if x.shape[0] == 0:
        raise error(f"{what} are empty: expected at least one vector")
    if x.dtype.kind not in "fiu":  # floating or integer (np.issubdtype is slow per call)
        raise error(f"{what} must be numeric, got dtype {x.dtype}")
    copy = metric is Metric.COSINE
    out = np.array(x, dtype=np.float32, order="C", copy=copy or None)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise error(f"{what} contain NaN or Inf (first at row {bad})")
    if metric is Metric.COSINE:
        squares = np.einsum("ij,ij->i", out, out)  # as the normalisation computes them
        if not squares.all():
            bad = int(np.flatnonzero(squares == 0)[0])
            raise error(f"{what} row {bad} is a zero vector: cosine is undefined")
        huge = np.isinf(squares)  # finite values whose squares overflow float32: normalising
        if huge.any():  # would divide them by inf into zero vectors; scale them down first
            out[huge] /= np.abs(out[huge]).max(axis=1, keepdims=True)
        faiss.normalize_L2(out)
    return out
