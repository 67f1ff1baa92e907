"""One search request as every layer sees it: built once by the planner, carried to the shards.

A ``Query`` holds what decides the answer besides the query vectors: ``k``, the resolved
overrides, the ids to leave out (search by id), the index version it is pinned to, the
mutation sequence it needs, its metadata filter, and its deadline budget. The router sends
it with the vectors to every shard; a shard answers it from exactly ``version`` or refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shards.filters import Filter
from shards.merge import exclude_ids
from shards.params import SearchOverrides


@dataclass(frozen=True)
class Sample:
    """Rows of a query that the recall monitor re-runs exactly (``shards.recall``)."""

    id: int  # the same at every shard: their parts join on it
    rows: tuple[int, ...]  # row numbers into the query's vectors
    target: float | None = None  # the recall asked for (None: explicit parameters)


@dataclass(frozen=True)
class Query:
    """What to search for, apart from the (nq, d) float32 query vectors.

    ``exclude``: (nq,) int64 ids, one per query, left out of that query's results (search
    by id: each stored vector's own id). ``version``: the index version every shard must
    answer from (None: whatever the library holds). ``min_sequence``: the mutation
    sequence every answering shard must have applied (0: any). ``budget_s``: seconds left
    when the query was sent; a shard stops work that would finish after it.
    """

    k: int
    overrides: SearchOverrides = field(default_factory=SearchOverrides)
    exclude: np.ndarray | None = None
    version: str | None = None
    min_sequence: int = 0
    filter: Filter | None = None  # only rows whose metadata match (shards.filters)
    budget_s: float | None = None
    sample: Sample | None = None  # rows the recall monitor re-runs exactly after answering
    # the metadata of each shard's results, read from the states the search read: these
    # columns (None: all), or none at all
    with_metadata: bool = False
    metadata_columns: tuple[str, ...] | None = None

    @property
    def fetch_k(self) -> int:
        """Results each shard returns: one more than ``k`` when every query leaves its own
        id out (it is found first), so ``k`` remain after the exclusion."""
        return self.k + 1 if self.exclude is not None else self.k

    def finish(self, D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Merged (nq, fetch_k) results -> the (nq, k) answer (excluded ids dropped)."""
        if self.exclude is None:
            return D, I
        return exclude_ids(D, I, self.exclude, self.k)

    def batch_key(self) -> tuple:
        """Queries with equal keys can be searched as one batch at a shard."""
        key = None if self.filter is None else self.filter.key
        return (self.version, self.fetch_k, self.overrides, self.min_sequence, key)
