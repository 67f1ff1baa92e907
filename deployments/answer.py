"""One search answer from the shards' parts: merged exactly, finished, with its state named.

Plain numpy over what the shard replicas returned (``(D, I, version, sequence, plans)``
each), tested without Ray.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from shards.errors import VsearchError
from shards.merge import drop_repeats, merge_results, within
from shards.query import Query


def merged_answer(
    parts: list[tuple],
    query: Query,
    keep_max: bool,
    *,
    range_partition: bool = False,
    threshold: float | None = None,
) -> dict[str, Any]:
    """``D``, ``I`` (the top ``query.k``), ``index_version``, ``sequence`` (the least every
    part had applied) and, for a filter, ``plan`` and ``shard_plans``.

    Raises:
        VsearchError: a part answered another version than the query's (an invariant:
            shards answer the pinned version or refuse).
    """
    for part in parts:
        if part[2] != query.version:
            raise VsearchError(f"a shard answered version {part[2]} for {query.version}")
    D, I = merge_results([(p[0], p[1]) for p in parts], keep_max)
    if range_partition:  # an upsert can move an id between range shards
        D, I = drop_repeats(D, I, -np.inf if keep_max else np.inf)
    D, I = query.finish(D, I)
    if threshold is not None:
        D, I = within(D, I, threshold, keep_max)
    out: dict[str, Any] = {
        "D": D,
        "I": I,
        "index_version": query.version,
        "sequence": min(p[3] for p in parts),
    }
    if query.filter is not None:
        plans = dict(sorted((n, plan) for p in parts for n, plan in p[4].items()))
        kinds = set(plans.values())
        out["plan"] = kinds.pop() if len(kinds) == 1 else "mixed"
        out["shard_plans"] = plans
    return out


def metadata_rows(tables: list[pa.Table], I: np.ndarray) -> list[list[dict | None]]:
    """The metadata row of each result of ``I`` (None for padding), from the tables the
    shards read with their search (``id`` first; each result's id is in the table of the
    shard that found it).

    Raises:
        VsearchError: a result without its row (an invariant: every shard that answered
            returned the rows of its results).
    """
    table = pa.concat_tables(tables)
    ids = table.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    wanted = np.unique(I[I >= 0])
    at = np.minimum(np.searchsorted(ids[order], wanted), max(len(ids) - 1, 0))
    if len(wanted) and (len(ids) == 0 or (ids[order][at] != wanted).any()):
        raise VsearchError("a result came back without its metadata row")
    rows = dict(zip(wanted.tolist(), table.take(pa.array(order[at])).to_pylist(), strict=True))
    return [[rows.get(i) for i in row] for row in I.tolist()]
