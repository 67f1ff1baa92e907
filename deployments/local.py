"""Deploying vsearch applications declaratively from Python, as ``serve deploy`` does.

Used by the tests and benchmarks on a local Ray. Declarative deploys keep running replicas
when only deployments' ``user_config`` changes (see ``deployments.versions``).
"""

from __future__ import annotations

from typing import Any

APPS: dict[str, dict[str, Any]] = {}  # every application deployed through here


def deploy(
    name: str,
    args: dict[str, Any],
    overrides: list[dict[str, Any]] | None = None,
    route_prefix: str | None = None,
) -> None:
    """Deploy or update application ``name`` (route ``route_prefix``, default ``/name``;
    a collection's ``/v1/collections/NAME``) and wait until it runs.

    All applications deployed through this function are sent together, since a declarative
    deploy replaces the whole set.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    APPS[name] = {
        "name": name,
        "route_prefix": route_prefix or _route_of(name, args),
        "import_path": "deployments.app:build_app",
        "args": args,
        "deployments": overrides or [],
    }
    config = ServeDeploySchema.model_validate({"applications": list(APPS.values())})
    _get_global_client().deploy_apps(config, _blocking=True)


def _route_of(name: str, args: dict[str, Any]) -> str:
    from deployments.config import COLLECTIONS

    collection = args.get("collection")
    return f"/{name}" if collection is None else COLLECTIONS + collection


def undeploy(name: str, wait: bool = True) -> None:
    """Delete application ``name`` (deployed through ``deploy``); ``wait``: until it is gone
    (else Serve's controller finishes in the background, about 3 s)."""
    from ray import serve

    if APPS.pop(name, None) is not None:
        serve.delete(name, _blocking=wait)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now, between Ray's worker ports
    (10002-19999) and Serve's direct ingress ports (30000-31000), below Linux's ephemeral
    range (32768-60999): ports that the processes Ray starts next cannot take by chance
    before Serve binds them."""
    import random
    import socket

    chosen: list[socket.socket] = []
    try:
        for port in random.sample(range(20_000, 30_000), 200):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            chosen.append(s)
            if len(chosen) == n:
                return [c.getsockname()[1] for c in chosen]
        raise RuntimeError(f"no {n} free ports in 20000-29999")
    finally:
        for c in chosen:
            c.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def start_local(num_cpus: int = 2, num_gpus: int | None = None) -> str:
    """Start a local Ray (no dashboard, its own temp dir) and Serve on 127.0.0.1.

    Returns the HTTP base URL. Set RAY_AUTH_MODE=disabled before importing ray (Ray 2.60
    otherwise wants a token for its CLIs).
    """
    import os
    import tempfile

    port, stats_port, metrics_port = free_ports(3)
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        # HAProxy's stats and metrics ports are fixed (8404, 9101) on every interface: take
        # free ones so that several local Rays (tests beside `make serve`) can run at once.
        # It starts slower than Serve's Python proxy: allow it 30 s, not 5, on a busy machine.
        os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(stats_port)
        os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(metrics_port)
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    import ray
    from ray import serve

    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"
