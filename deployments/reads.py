"""Reading stored rows back through the router: by id, or a page of the rows matching a
filter (``shards.fetch`` on every shard that can hold them). Mixed into the router.

Like a search, a read is pinned to one index version and, with ``min_sequence``, answered
only by shards that applied that write; every shard it needs must answer (a row is never
silently missing because its shard was slow).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from deployments.calls import moved_ids
from shards.errors import InvalidQuery, VsearchError
from shards.fetch import MAX_PAGE
from shards.filters import parse_filter
from shards.ids import check_ids
from shards.metadata import check_columns
from shards.query import Query

DEFAULT_PAGE = 100


class RowReads:
    """``get``: rows by id or by filter; supplied by the router: the fan-out and planner."""

    planner: Any
    metrics: Any
    _schemas: dict[str, Any]
    _fan_out: Any
    _deadline_s: Any
    _owner_groups: Any
    _check_written: Any

    async def get(
        self,
        ids: Any = None,
        *,
        filter: dict[str, Any] | None = None,
        limit: int | None = None,
        after: int | None = None,
        include_vectors: bool = False,
        columns: list[str] | None = None,
        min_sequence: int = 0,
        deadline_ms: int | None = None,
    ) -> dict[str, Any]:
        """Stored rows: those of ``ids`` that are live, in the order asked; or, without
        ids, the first ``limit`` (default 100) live rows above id ``after`` that match
        ``filter`` (every row without one) in id order, with ``next_after`` for the next
        page (None at the end). ``{"ids", "metadata", "vectors", "sequence",
        "index_version"}``; vectors are as stored (normalised for cosine)."""
        try:
            out = await self._get(
                ids, filter, limit, after, include_vectors, columns, min_sequence, deadline_ms
            )
        except Exception as exc:
            status = exc.status_code if isinstance(exc, VsearchError) else 500
            self.metrics.reads.inc(tags={"status": f"{status // 100}xx"})
            raise
        self.metrics.reads.inc(tags={"status": "2xx"})
        return out

    async def _get(
        self, ids, filter, limit, after, include_vectors, columns, min_sequence, deadline_ms
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self._deadline_s(deadline_ms)
        planner = self.planner  # pinned: this version, whatever swaps
        version = planner.manifest.index_version
        if isinstance(min_sequence, bool) or not isinstance(min_sequence, int) or min_sequence < 0:
            raise InvalidQuery(f"min_sequence must be an integer >= 0, got {min_sequence!r}")
        if not isinstance(include_vectors, bool):
            raise InvalidQuery("include_vectors must be true or false")
        await self._check_written(min_sequence)
        schema = self._schemas.get(version)
        columns = check_columns(columns, schema)
        query = Query(1, version=version, min_sequence=min_sequence)
        shape = (include_vectors, planner.dim, version)
        if ids is not None:
            if filter or after is not None or limit is not None:
                raise InvalidQuery("give ids, or a filter (with limit and after), not both")
            wanted = check_ids(ids)
            planner.check_count(len(wanted))
            groups = self._owner_groups(planner, wanted)
            outcome = await self._fan_out(
                lambda h, q: h.fetch.remote(wanted, columns, include_vectors, q),
                query,
                deadline,
                1.0,
                groups,
                moved_ids(planner, 3),
            )
            return _joined(outcome.answers, wanted, None, shape)
        limit = DEFAULT_PAGE if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidQuery(f"limit must be an integer in [1, {MAX_PAGE}], got {limit!r}")
        start = -1 if after is None else int(check_ids([after])[0])
        query = replace(query, filter=parse_filter(filter, schema))
        outcome = await self._fan_out(
            lambda h, q: h.scan.remote(limit, start, columns, include_vectors, q),
            query,
            deadline,
            1.0,
            sequence_of=moved_ids(planner, 3),
        )
        return _joined(outcome.answers, None, limit, shape)


def _joined(answers, wanted, limit, shape) -> dict[str, Any]:
    """The shards' rows in the order asked (``wanted``) or the first ``limit`` by id."""
    include_vectors, dim, version = shape
    rows: dict[int, tuple] = {}
    sequence, has_meta = None, False
    for found, meta, vectors, seq in answers:
        sequence = seq if sequence is None else min(sequence, seq)
        has_meta = has_meta or meta is not None
        for j, i in enumerate(found.tolist()):
            rows[i] = (None if meta is None else meta[j], None if vectors is None else vectors[j])
    order = [i for i in wanted.tolist() if i in rows] if wanted is not None else sorted(rows)
    if limit is not None:
        order = order[:limit]
    vectors = None
    if include_vectors:
        vectors = np.empty((len(order), dim), np.float32)
        for n, i in enumerate(order):
            vectors[n] = rows[i][1]
    out: dict[str, Any] = {
        "ids": np.asarray(order, np.int64),
        "metadata": [rows[i][0] for i in order] if has_meta else None,
        "vectors": vectors,
        "sequence": sequence or 0,
        "index_version": version,
    }
    if limit is not None:
        out["next_after"] = order[-1] if len(order) == limit else None
    return out
