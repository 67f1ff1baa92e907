"""Live version swaps: the ``deployments:`` overrides that reconfigure running replicas.

Serve hashes an application's ``args`` into its code version, so changing ``index_version``
in ``args`` replaces every replica (a rolling update: safe, but it loads each shard into a new
process). Changing only the deployments' ``user_config`` reconfigures the running replicas in
place: each shard loads and verifies the new version beside the old one and swaps atomically.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shards.manifest import Manifest
from shards.partition import assign_shards


def shard_groups(num_shards: int, per_replica: int) -> list[list[int]]:
    """Shard numbers of each shard deployment: consecutive groups of ``per_replica``."""
    return [
        list(range(i, min(i + per_replica, num_shards))) for i in range(0, num_shards, per_replica)
    ]


def group_name(numbers: list[int]) -> str:
    """Deployment name of a group: ``shard-3``, or ``shards-0-3`` for several."""
    return f"shard-{numbers[0]}" if len(numbers) == 1 else f"shards-{numbers[0]}-{numbers[-1]}"


def owner_groups(manifest: Manifest, groups: list[list[int]], ids: np.ndarray) -> list[int]:
    """The shard groups that can hold ``ids``: their owners under hash partitioning (adds go
    there too), every group under range partitioning."""
    if manifest.partition != "hash":
        return list(range(len(groups)))
    n = manifest.num_shards
    owners = set(assign_shards(ids, ids, n, "hash", n).tolist())
    return [i for i, g in enumerate(groups) if owners & set(g)]


def swap_overrides(
    num_shards: int,
    index_version: str,
    default_params: dict[str, Any] | None = None,
    shards_per_replica: int = 1,
    in_router: bool = False,
) -> list[dict[str, Any]]:
    """The ``applications[].deployments`` list that moves every replica to ``index_version``
    (``in_router``: the router's replicas hold the shards; there are no shard deployments)."""
    shards = [
        {"name": group_name(g), "user_config": {"index_version": index_version}}
        for g in ([] if in_router else shard_groups(num_shards, shards_per_replica))
    ]
    router = {"index_version": index_version, "default_params": default_params or {}}
    return [*shards, {"name": "router", "user_config": router}]
