"""Deploying vsearch applications declaratively from Python, as ``serve deploy`` does.

Used by the tests and benchmarks on a local Ray. Declarative deploys keep running replicas
when only deployments' ``user_config`` changes (see ``deployments.versions``).
"""

from __future__ import annotations

from typing import Any

APPS: dict[str, dict[str, Any]] = {}  # every application deployed through here


def deploy(name: str, args: dict[str, Any], overrides: list[dict[str, Any]] | None = None) -> None:
    """Deploy or update application ``name`` (route ``/name``) and wait until it runs.

    All applications deployed through this function are sent together, since a declarative
    deploy replaces the whole set.
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    APPS[name] = {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": "deployments.app:build_app",
        "args": args,
        "deployments": overrides or [],
    }
    config = ServeDeploySchema.model_validate({"applications": list(APPS.values())})
    _get_global_client().deploy_apps(config, _blocking=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local(num_cpus: int = 2, num_gpus: int | None = None) -> str:
    """Start a local Ray (no dashboard, its own temp dir) and Serve on 127.0.0.1.

    Returns the HTTP base URL. Set RAY_AUTH_MODE=disabled before importing ray (Ray 2.60
    otherwise wants a token for its CLIs).
    """
    import os
    import tempfile

    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        # HAProxy's stats and metrics ports are fixed (8404, 9101) on every interface: take
        # free ones so that several local Rays (tests beside `make serve`) can run at once.
        # It starts slower than Serve's Python proxy: allow it 30 s, not 5, on a busy machine.
        os.environ.setdefault("RAY_SERVE_HAPROXY_STATS_PORT", str(free_port()))
        os.environ.setdefault("RAY_SERVE_HAPROXY_METRICS_PORT", str(free_port()))
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    import ray
    from ray import serve

    port = free_port()
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"
