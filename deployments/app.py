"""``build_app(args)``: the coordinator, one shard deployment per shard group, the router
(or, with ``shard.in_router``, routers that hold every shard themselves).

The classes stay plain; Serve's options are applied here, per build (as Ray's own LLM
builders do), so importing a module deploys nothing.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from deployments.config import AppArgs
from deployments.coordinator import Coordinator
from deployments.embedder import Embedder
from deployments.ingress import make_ingress
from deployments.router import Router
from deployments.shard import ShardServer
from deployments.versions import group_name, shard_groups
from shards.artefact import open_version


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The Serve application for ``args`` (used by ``serve run serve_config.yaml``)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    _, manifest = open_version(args.index_uri, args.index_version)
    logs = {"logging_config": {"enable_access_log": args.access_log}}
    coordinator = serve.deployment(Coordinator, name="coordinator").options(
        **logs,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,
        # its long-running calls are the replicas' long polls of the log (they retry
        # elsewhere): waiting for them to end would hold every shutdown for WAIT_S
        graceful_shutdown_timeout_s=1,
        graceful_shutdown_wait_loop_s=0.2,
    )
    in_router = args.shard.in_router
    groups = (
        [list(range(manifest.num_shards))]
        if in_router
        else shard_groups(manifest.num_shards, args.shard.shards_per_replica)
    )
    state = coordinator.bind(
        args.index_uri,
        args.compact_after_changes,
        args.max_delta_rows,
        args.compact_retune,
        args.recall.model_dump(),
        len(groups),
    )
    options = args.shard.model_dump()
    # versions and default params travel in user_config: changing them reconfigures the
    # running replicas in place (a two-phase live swap) instead of replacing them
    shard_config = {"index_version": manifest.index_version}
    # in_router: the router replicas hold the shards (reported under the router's name)
    names = ["router"] if in_router else [group_name(g) for g in groups]
    shard_cls: Any = serve.deployment(ShardServer, name="shard")
    shards = (
        None
        if in_router
        else [
            shard_cls.options(
                name=name, user_config=shard_config, **logs, **args.shard.deployment_options()
            ).bind(args.index_uri, g, options, state, args.recall.model_dump())
            for name, g in zip(names, groups, strict=True)
        ]
    )
    router_config = {"index_version": manifest.index_version, "default_params": args.default_params}
    router: Any = serve.deployment(make_ingress(Router), name="router")
    replicas: dict[str, Any] = (
        {"num_replicas": args.router_replicas}
        if args.router_autoscaling is None
        else {"autoscaling_config": args.router_autoscaling.model_dump()}
    )
    holds: dict[str, Any] = (
        {
            "ray_actor_options": args.shard.actor_options(args.router_resources),
            "health_check_period_s": args.shard.health_check_period_s,  # its shards report
        }
        if in_router
        else {"ray_actor_options": {"num_cpus": 0, "resources": args.router_resources}}
    )
    router = router.options(
        **logs,
        user_config=router_config,
        **replicas,
        **holds,
        max_ongoing_requests=args.router_max_ongoing_requests,
        max_queued_requests=args.router_max_queued_requests,
        backpressure_config=BackpressureConfig(
            status_code=args.overload_status, retry_after_s=args.retry_after_s
        ),
    )
    # unset fields stay unset: the router's own AppArgs refuses settings in_router ignores
    fixed = args.model_dump(exclude={"index_version", "default_params"}, exclude_unset=True)
    embedder = None
    if args.embedding is not None:
        e = args.embedding
        embedder = (
            serve.deployment(Embedder, name="embedder")
            .options(
                **logs,
                num_replicas=e.num_replicas,
                ray_actor_options={"num_cpus": e.num_cpus, "num_gpus": e.num_gpus},
                max_ongoing_requests=256,
            )
            .bind(e.model_dump())
        )
    return router.bind(shards, groups, names, fixed, state, embedder)
