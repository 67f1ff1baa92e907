"""Live version swaps: the ``deployments:`` overrides that reconfigure running replicas.

Serve hashes an application's ``args`` into its code version, so changing ``index_version``
in ``args`` replaces every replica (a rolling update: safe, but it loads each shard into a new
process). Changing only the deployments' ``user_config`` reconfigures the running replicas in
place: each shard loads and verifies the new version beside the old one and swaps atomically.
"""

from __future__ import annotations

from typing import Any


def swap_overrides(
    num_shards: int, index_version: str, default_params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The ``applications[].deployments`` list that moves every replica to ``index_version``."""
    shards = [
        {"name": f"shard-{i}", "user_config": {"index_version": index_version}}
        for i in range(num_shards)
    ]
    router = {"index_version": index_version, "default_params": default_params or {}}
    return [*shards, {"name": "router", "user_config": router}]
