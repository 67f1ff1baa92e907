"""Collections: several indexes in one Ray cluster, one Serve application each.

A collection is a vsearch application whose args name it (``collection: NAME``) and whose
route prefix is ``/v1/collections/NAME``; its routes are those of the default collection
without their ``/v1`` (``deployments.ingress.make_app``). Each has its own router, shard
deployments, coordinator and mutation log, so writes, swaps, compactions, autoscaling and
failures stay inside it. ``GET /v1/collections`` lists them from Serve's own state.
"""

from __future__ import annotations

from typing import Any

from deployments.config import COLLECTIONS

IMPORT_PATH = "deployments.app:build_app"


def listed(details: dict[str, Any]) -> list[dict[str, Any]]:
    """The vsearch applications of Serve's instance ``details`` (the controller's
    ``get_serve_instance_details``) as collections: name (None: the default), application,
    the base of its routes, Serve's status, and what is wrong with its route, if anything."""
    out = []
    for app_name, app in sorted((details.get("applications") or {}).items()):
        config = app.get("deployed_app_config") or {}
        if config.get("import_path") != IMPORT_PATH:
            continue
        name = (config.get("args") or {}).get("collection")
        prefix = app.get("route_prefix")
        entry = {
            "name": name,
            "application": app_name,
            "routes": None if prefix is None else _routes(prefix, name),
            "status": app.get("status"),
        }
        problem = route_problem(name, prefix)
        if problem:
            entry["error"] = problem
        out.append(entry)
    return out


def _routes(prefix: str, name: str | None) -> str:
    if name is not None:
        return prefix
    return "/v1" if prefix == "/" else prefix.rstrip("/") + "/v1"


def route_problem(name: str | None, prefix: str | None) -> str | None:
    """Why application routes would not serve collection ``name``, or None."""
    if name is None:
        if prefix is not None and prefix.startswith(COLLECTIONS):
            return f"route_prefix {prefix} is a collection's: set args.collection to its name"
        return None
    if prefix != COLLECTIONS + name:
        return f"collection {name!r} needs route_prefix {COLLECTIONS + name}, not {prefix}"
    return None


def config_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with the collections of a Serve config file (``serve_config.yaml``)."""
    problems, seen = [], set()
    for app in config.get("applications") or []:
        if app.get("import_path") != IMPORT_PATH:
            continue
        name = (app.get("args") or {}).get("collection")
        if name in seen:
            problems.append(f"collection {name!r} is served by two applications")
        seen.add(name)
        problem = route_problem(name, app.get("route_prefix", "/"))
        if problem:
            problems.append(f"application {app.get('name')}: {problem}")
    return problems
