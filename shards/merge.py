"""Merge per-shard top-k results with faiss's C++ heap merge (no Python per-query loops)."""

from __future__ import annotations

import numpy as np

from shards._faiss import faiss


def merge_results(
    parts: list[tuple[np.ndarray, np.ndarray]], keep_max: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge ``[(D, I), ...]``, each (nq, k) and sorted, into one (nq, k) result.

    ``keep_max``: larger scores are better (inner product). Ids -1 are padding; the result
    is padded with -1 when fewer than k results exist overall.
    """
    if len(parts) == 1:
        return parts[0]
    Dall = np.stack([p[0] for p in parts]).astype(np.float32, copy=False)
    Iall = np.stack([p[1] for p in parts]).astype(np.int64, copy=False)
    return faiss.merge_knn_results(Dall, Iall, keep_max=keep_max)


def id_lookup(ids: np.ndarray) -> np.ndarray:
    """``ids`` with -1 appended: ``id_lookup(ids).take(I)`` maps rows to ids in one step, the
    -1 padding taking the appended -1 (the same answer as ``translate_ids``)."""
    return np.append(np.asarray(ids, dtype=np.int64), np.int64(-1))


def translate_ids(I: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map row numbers ``I`` (-1 padded) to external ids through ``ids[row]``."""
    if len(ids) == 0:
        return np.full_like(I, -1)
    out = ids.take(I)  # -1 takes the last id: put back below (per query: fewer numpy calls)
    if I.size and I.min() < 0:
        out[I < 0] = -1
    return out


def exclude_ids(
    D: np.ndarray, I: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop each row's own id ``ids[row]`` from (nq, k+1) results; keep the first k columns."""
    other = np.asarray(ids)[:, None] != I
    order = np.argsort(~other, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def drop_repeats(D: np.ndarray, I: np.ndarray, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep each id's first (best) occurrence per row of sorted results; later ones become
    padding (id -1, score ``fill``) at the end of the row. An id is found twice when shards
    answered from different mutation sequences (an upsert moved it between range shards)."""
    order = np.argsort(I, axis=1, kind="stable")
    srt = np.take_along_axis(I, order, 1)
    repeat_sorted = np.zeros_like(srt, dtype=bool)
    repeat_sorted[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    repeat = np.zeros_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, 1)
    if not repeat.any():
        return D, I
    keep = np.argsort(repeat, axis=1, kind="stable")
    D, I, repeat = (np.take_along_axis(a, keep, 1) for a in (D, I, repeat))
    return np.where(repeat, fill, D).astype(np.float32), np.where(repeat, -1, I)


def within(
    D: np.ndarray, I: np.ndarray, threshold: float, keep_max: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Results scored at most ``threshold`` (a distance) or at least it (a similarity,
    ``keep_max``); the others become padding (id -1, the worst score) at the end of a row."""
    ok = (threshold <= D) if keep_max else (threshold >= D)
    worst = np.float32(-np.finfo(np.float32).max if keep_max else np.finfo(np.float32).max)
    return np.where(ok, D, worst).astype(np.float32), np.where(ok, I, -1)
