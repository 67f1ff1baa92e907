"""Shards held by the router replica itself (``shard.in_router``): one hop per request.

A ``ShardServer`` built inside the router process answers the router's calls as a shard
deployment's replica would (the same versions, log follower, reports to the coordinator,
batching and deadlines), but without Ray between them: ``InRouter.search.remote(xq, q)``
is a plain coroutine, so the router's fan-out, retries and answers stay as they are. The
reports carry the router's deployment name, so a swap commits once every running router
replica holds the next version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from deployments.shard import ShardServer


class _Method:
    """``server.name`` called like a handle method: ``.remote(*args)`` is its coroutine."""

    def __init__(self, method: Callable[..., Awaitable[Any]]) -> None:
        self.remote = method


class InRouter:
    """A ``ShardServer`` in this process, reached like a ``DeploymentHandle``."""

    def __init__(self, server: ShardServer) -> None:
        self.server = server

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(getattr(self.server, name))
