"""Tuning at build time: the recall/speed curve over the parameter grid, measured with held-out
input rows as queries, timed for the traffic shape, and the defaults it resolves to."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from shards import autotune
from shards._faiss import faiss
from shards.errors import TargetUnreachable
from shards.manifest import Manifest
from shards.params import Knobs, SearchOverrides, static_defaults

log = logging.getLogger("shards")
TUNE_QUERIES = 2000
TUNE_K = 10
LONE_QUERIES = 200  # timed alone per tuning point when the traffic is single queries
HELD_OUT = "a sample of the input, searched before it was added to the index"


def untuned(manifest: Manifest, knobs: Knobs) -> Manifest:
    """An ANN index built without tuning gets stated static defaults, and says so loudly."""
    defaults = static_defaults(knobs)
    note = (
        f"not tuned: static defaults {defaults}, recall unmeasured; run "
        "`python -m shards autotune` to measure the curve and enable target_recall"
    )
    log.warning("%s", note)
    manifest.build["untuned"] = note
    return replace(manifest, default_params=defaults)


def timing_of(traffic: str) -> dict[str, Any]:
    """How the tuning curve is timed for ``traffic``: batches for "batch", lone queries for
    "single", the geometric mean of both for "mixed" (a point cheap batched can be dear
    alone: GloVe, nprobe 80 / k_factor 4 against 64 / 16)."""
    if traffic == "batch":
        return {}
    if traffic == "single":
        return {"lone": LONE_QUERIES}
    return {"lone": LONE_QUERIES // 2, "blend": True}


def with_tuning(
    manifest: Manifest,
    search: autotune.SearchFn,
    knobs: Knobs,
    xq,
    qids,
    gt,
    target: float,
    method: str,
    show_progress: bool = True,
    lone: int = 0,
    blend: bool = False,
) -> Manifest:
    """``manifest`` with the measured curve and the defaults resolved for ``target``;
    ``lone``, ``blend``: how points are timed (``autotune.measure``)."""
    curve = autotune.measure(search, xq, qids, gt, knobs, show_progress, lone, blend)
    try:
        defaults = autotune.resolve(curve, target)
        note = f"cheapest measured parameters with recall@{TUNE_K} >= {target}"
    except TargetUnreachable:
        best = max(curve, key=lambda p: p["recall"])
        defaults, note = dict(best["params"]), f"no point reached {target}; highest recall"
    tuning: dict[str, Any] = {
        "k": TUNE_K,
        "queries": len(xq),
        "target": target,
        "note": note,
        "method": method,
        "timed": autotune.timed_on(knobs, lone, blend),
        "curve": curve,
    }
    manifest.build["tune_threads"] = faiss.omp_get_max_threads()
    return replace(manifest, tuning=tuning, default_params=SearchOverrides(**defaults).to_dict())
