"""Recall/speed curve over the override grid, and resolving ``target_recall`` to parameters.

Queries are a sample of the indexed vectors, searched leave-one-out: each query's own id
is dropped from both the result and the brute-force ground truth, so a query does not
count itself as a hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from shards import memory
from shards._faiss import faiss, one_omp_thread
from shards.errors import TargetUnreachable
from shards.merge import exclude_ids
from shards.params import EF_SEARCH_MAX, Knobs, SearchOverrides
from shards.progress import progress

SearchFn = Callable[[np.ndarray, int, SearchOverrides], tuple[np.ndarray, np.ndarray]]
K_FACTORS = (4, 8, 2, 16, 3, 6, 1.5, 1)  # likely-good runs first: they set the pruning bound
# about four steps an octave up to 64, where recall climbs fastest: with only 16, 24, 32 a
# target of 0.95 took 32 on MiniLM 100k (HNSW32: 0.9546 at 24, 0.969 at 32), 1.26x the work
EF_SEARCHES = (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)
ITOPK_SIZES = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
STOP_RECALL = 0.995  # runs stop here: the curve serves targets up to about 0.99
MARGIN = 0.005  # resolved points must beat the target by this much (sampling error of the curve)


def nprobe_steps(nlist: int) -> list[int]:
    """1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ... (four steps an octave) up to ``nlist``."""
    steps = {1, 2, 3, nlist}
    for p in (2**i for i in range(2, 17)):
        steps |= {p, p * 5 // 4, p * 3 // 2, p * 7 // 4}
    return sorted(s for s in steps if s <= nlist)


def grid(knobs: Knobs) -> list[list[SearchOverrides]]:
    """Override settings to measure, as runs of increasing cost (a run can stop early)."""
    if knobs.hnsw:  # a graph under an exact refine: how many candidates it re-ranks, too
        kfs = K_FACTORS if knobs.refine else (None,)
        return [[SearchOverrides(ef_search=ef, k_factor=kf) for ef in EF_SEARCHES] for kf in kfs]
    if knobs.cagra:
        return [[SearchOverrides(itopk_size=size) for size in ITOPK_SIZES]]
    if knobs.nlist is None:
        return [[SearchOverrides()]]
    nprobes = nprobe_steps(knobs.nlist)
    runs = []
    for kf in K_FACTORS if knobs.refine else (None,):
        run = []
        for nprobe in nprobes:
            qef = min(EF_SEARCH_MAX, max(64, 2 * nprobe)) if knobs.quantizer_hnsw else None
            run.append(SearchOverrides(nprobe=nprobe, k_factor=kf, quantizer_ef_search=qef))
        runs.append(run)
    return runs


def ground_truth(
    xq: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int, metric_type: int
) -> np.ndarray:
    """Exact top-k ids (nq, k) of prepared queries over ``(vectors, ids)`` blocks."""
    return exact_knn(xq, blocks, k, metric_type)[1]


def exact_knn(
    xq: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int, metric_type: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k ``(D, I)`` of prepared queries over ``(vectors, ids)`` blocks (padded
    with id -1): per-shard answers merge into the answer over every block."""
    keep_max = metric_type == faiss.METRIC_INNER_PRODUCT
    heap = faiss.ResultHeap(len(xq), k, keep_max=keep_max)
    for xb, ids in blocks:
        if len(xb) == 0:
            continue  # every row of the block is a held-out query
        D, I = faiss.knn(xq, xb, min(k, len(xb)), metric=metric_type)
        pad = k - D.shape[1]
        if pad:
            fill = -np.finfo(np.float32).max if keep_max else np.finfo(np.float32).max
            D = np.hstack([D, np.full((len(D), pad), fill, np.float32)])
            I = np.hstack([I, np.full((len(I), pad), -1)])
        heap.add_result(D, np.where(I >= 0, ids[np.maximum(I, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


def drop_self(I: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own id from ``I`` (nq, k+1) and keep the first k columns."""
    return exclude_ids(I, I, self_ids, k)[1]


def recall_at_k(I: np.ndarray, gt: np.ndarray) -> float:
    """Mean fraction of the ground-truth top-k found in ``I``; both (nq, k)."""
    hits = (np.where(I < 0, -2, I)[:, :, None] == gt[:, None, :]).any(axis=2)
    valid = max(1, int((gt >= 0).sum()))
    return float(hits.sum() / valid)


def measure(
    search: SearchFn,
    xq: np.ndarray,
    self_ids: np.ndarray,
    gt: np.ndarray,
    knobs: Knobs,
    show_progress: bool = True,
    lone: int = 0,
    blend: bool = False,
) -> list[dict[str, Any]]:
    """Recall@k and ms/query for each grid point; ``gt`` is (nq, k+1) with self.

    The time is the batched search's per query, or with ``lone`` > 0 the mean time of the
    first ``lone`` queries searched one at a time (an index chosen for single queries is
    tuned for what they cost: the cheapest point batched need not be the cheapest alone), or
    with ``blend`` the geometric mean of both (a mix of batches and single queries). Timing
    only orders the runs (``resolve``): with a single run no query is timed alone."""
    k = gt.shape[1] - 1
    lone = lone if len(grid(knobs)) > 1 else 0
    truth = drop_self(gt, self_ids, k)
    curve: list[dict[str, Any]] = []
    bound = float("inf")  # cost of the cheapest point with recall >= STOP_RECALL so far
    runs = grid(knobs)
    for run in progress(runs, "tuning", len(runs), "run", enabled=show_progress):
        for i, ov in enumerate(run):
            t0 = time.perf_counter()
            _, I = search(xq, k + 1, ov)
            ms = 1000 * (time.perf_counter() - t0) / len(xq)
            extra = {}
            if lone:
                alone = lone_ms(search, xq[:lone], k + 1, ov)
                extra = {"batch_ms": round(ms, 5), "lone_ms": round(alone, 5)}
                ms = (ms * alone) ** 0.5 if blend else alone
            recall = recall_at_k(drop_self(I, self_ids, k), truth)
            curve.append(
                {
                    "params": ov.to_dict(),
                    "recall": round(recall, 5),
                    "ms_per_query": round(ms, 5),
                    **extra,
                }
            )
            memory.release(collect=False)  # each setting's buffers differ: do not pile them
            if recall >= STOP_RECALL:
                bound = min(bound, ms)
            # later points of a run cost more: past the bound they can never be the answer
            if recall >= STOP_RECALL or ms > bound or _flat(curve, i + 1):
                break
    return curve


def timed_on(knobs: Knobs, lone: int, blend: bool) -> str:
    """What ``measure`` times for these arguments, in words (the manifest's ``tuning.timed``)."""
    if not lone or len(grid(knobs)) <= 1:
        return "batches"
    return (
        f"batches and {lone} single queries (geometric mean)" if blend else f"{lone} single queries"
    )


def lone_ms(search: SearchFn, xq: np.ndarray, k: int, ov: SearchOverrides) -> float:
    """Mean milliseconds of ``xq``'s queries searched one at a time, one OpenMP thread."""
    with one_omp_thread():
        t0 = time.perf_counter()
        for i in range(len(xq)):
            search(xq[i : i + 1], k, ov)
        return 1000 * (time.perf_counter() - t0) / len(xq)


def _flat(curve: list[dict[str, Any]], run_length: int) -> bool:
    """True when the last three points of the current run gained under 0.001 recall."""
    last = curve[-3:]
    same_run = len(last) == 3 and len({_kf(p) for p in last}) == 1
    return same_run and last[-1]["recall"] - last[0]["recall"] < 0.001 and run_length > 3


def _kf(point: dict[str, Any]) -> Any:
    return point["params"].get("k_factor")


def resolve(curve: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The cheapest measured parameters whose recall beats ``target`` with a margin: per run
    (a k_factor), its first such point; over runs, the fastest of those that do not ask more of
    every knob than another.

    The margin is ``min(MARGIN, (1 - target) / 2)``: the curve is measured on a sample.

    Raises:
        TargetUnreachable: no measured point reaches ``target``.
    """
    need = target + min(MARGIN, (1.0 - target) / 2)
    ok = [p for p in curve if p["recall"] >= need]
    if not ok:
        best = max((p["recall"] for p in curve), default=0.0)
        raise TargetUnreachable(
            f"target_recall {target} (with margin {need:.4f}) is above the best tuned "
            f"recall {best:.4f}; "
            "pass explicit parameters or re-tune"
        )
    # each run's points were measured in order of increasing cost: its first point that
    # reaches the target is its cheapest (a later one timed faster is timing noise, which
    # made the choice differ from run to run); the fastest of those over the runs
    first: dict[Any, dict[str, Any]] = {}
    for p in ok:
        first.setdefault(_kf(p), p)
    # a point asking at least as much of every knob as another does at least its work: its
    # timing, if faster, is noise too (MiniLM: k_factor 6 timed below 4, both at nprobe 80)
    cheapest = [p for p in first.values() if not any(_less_work(q, p) for q in first.values())]
    return dict(min(cheapest, key=lambda p: p["ms_per_query"])["params"])


def _less_work(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Point ``a`` asks no more of any knob than ``b`` and less of one (same knobs)."""
    pa, pb = a["params"], b["params"]
    if pa.keys() != pb.keys() or pa == pb:
        return False
    return all(pa[name] <= pb[name] for name in pa)
