"""The router's calls to its shard groups: each attempt carries the time the request has
left, a failed attempt is retried on another replica by one rule (``retryable``), and
retries are counted. Over ``deployments.fanout`` (plain asyncio, the coverage rules)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ray.exceptions import OutOfMemoryError, RayActorError

from deployments.fanout import Outcome, fan_out, unwrap
from shards.errors import IndexLoadError, VersionMismatch
from shards.query import Query

UNAVAILABLE_RETRIES = 6  # a replica that lacks the version or its files: try others


def retryable(max_deaths: int):
    """Retry rule: a replica that died (not by the memory monitor: the query itself may be
    what killed it) up to ``max_deaths`` times; a replica without the version or its files
    up to ``UNAVAILABLE_RETRIES`` times; nothing else."""

    def rule(exc: BaseException, attempt: int) -> bool:
        inner = unwrap(exc)
        if isinstance(exc, OutOfMemoryError) or isinstance(inner, OutOfMemoryError):
            return False
        if isinstance(exc, RayActorError):
            return "memory monitor" not in str(exc) and attempt <= max_deaths
        return isinstance(inner, VersionMismatch | IndexLoadError) and (
            attempt <= UNAVAILABLE_RETRIES
        )

    return rule


Send = Callable[[Any, Query], Any]  # (a shard group's handle, its query) -> a call


class ShardCalls:
    """Calls to ``shards`` (one handle per group of shard numbers ``groups``)."""

    def __init__(self, shards: list[Any], groups: list[list[int]], max_deaths: int, metrics):
        self.shards, self.groups = shards, groups
        self.sizes = [len(g) for g in groups]
        self.retryable = retryable(max_deaths)
        self.metrics = metrics

    async def fan_out(
        self,
        send: Send,
        query: Query,
        deadline: float,
        min_coverage: float,
        groups: Sequence[int] | None = None,
    ) -> Outcome:
        """``send(handle, query)`` to every shard group (or ``groups``), by the coverage
        rules of ``deployments.fanout``."""
        chosen = range(len(self.shards)) if groups is None else groups

        def call(i: int):
            async def once():  # each attempt carries the time left to the shard
                left = max(0.0, deadline - time.monotonic())
                return await send(self.shards[i], replace(query, budget_s=left))

            return once

        outcome = await fan_out(
            [call(i) for i in chosen],
            [self.sizes[i] for i in chosen],
            deadline,
            min_coverage,
            self.retryable,
        )
        if outcome.retries:
            self.metrics.retries.inc(outcome.retries)
        return outcome
