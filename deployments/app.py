"""``build_app(args)``: one shard deployment per shard plus the router, wired together."""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from deployments.config import AppArgs
from deployments.router import Router
from deployments.shard import ShardServer
from deployments.versions import group_name, shard_groups
from shards.artefact import open_version

# @serve.deployment turns these classes into Deployments at import time (mypy cannot see it)
SHARD: Any = ShardServer
ROUTER: Any = Router


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The Serve application for ``args`` (used by ``serve run serve_config.yaml``)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    _, manifest = open_version(args.index_uri, args.index_version)
    options = args.shard.model_dump()
    # versions and default params travel in user_config: changing them reconfigures the
    # running replicas in place (a live swap) instead of replacing them
    shard_config = {"index_version": manifest.index_version}
    groups = shard_groups(manifest.num_shards, args.shard.shards_per_replica)
    shards = [
        SHARD.options(
            name=group_name(g), user_config=shard_config, **args.shard.deployment_options()
        ).bind(args.index_uri, g, options)
        for g in groups
    ]
    router_config = {"index_version": manifest.index_version, "default_params": args.default_params}
    router = ROUTER.options(
        user_config=router_config,
        num_replicas=args.router_replicas,
        max_ongoing_requests=args.router_max_ongoing_requests,
        max_queued_requests=args.router_max_queued_requests,
        backpressure_config=BackpressureConfig(
            status_code=args.overload_status, retry_after_s=args.retry_after_s
        ),
        ray_actor_options={"num_cpus": 0, "resources": args.router_resources},
    )
    fixed = args.model_dump(exclude={"index_version", "default_params"})
    return router.bind(shards, [len(g) for g in groups], fixed)
