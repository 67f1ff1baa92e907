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
