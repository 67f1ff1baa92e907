"""The router's calls to its shard groups: each attempt carries the time the request has
left, a failed attempt is retried on another replica by one rule (``retryable``), and
retries are counted. Over ``deployments.fanout`` (plain asyncio, the coverage rules)."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ray.exceptions import OutOfMemoryError, RayActorError

from deployments.errors import DeadlineExceeded, ShardsUnavailable
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


def moved_ids(planner, at: int) -> Callable[[Any], int] | None:
    """``ShardCalls.fan_out``'s ``sequence_of`` for answers that carry their sequence at
    position ``at``: for an index partitioned by ranges (where upserts move ids between
    shards), else None."""
    if planner.manifest.partition != "range":
        return None
    return operator.itemgetter(at)


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
        sequence_of: Callable[[Any], int] | None = None,
    ) -> Outcome:
        """``send(handle, query)`` to every shard group (or ``groups``), by the coverage
        rules of ``deployments.fanout``.

        ``sequence_of(answer)``: the mutation sequence a group answered from, for an index
        partitioned by ranges (None otherwise). There an upsert of a live id moves it to the
        last shard: a tombstone in its shard and an add in the last one at one sequence. A
        group ahead of the last shard's would have the tombstone and the last shard not yet
        the add, and the id would be in no answer. So the last shard's group is asked again
        until it answers from a sequence at least every other group's
        (``_last_caught_up``)."""
        outcome = await self._calls(send, query, deadline, min_coverage, groups)
        if sequence_of is None:
            return outcome
        chosen = list(range(len(self.shards)) if groups is None else groups)
        return await self._last_caught_up(
            send, query, deadline, min_coverage, chosen, sequence_of, outcome
        )

    async def _last_caught_up(self, send, query, deadline, min_coverage, chosen, seq_of, outcome):
        last = max(range(len(self.groups)), key=lambda i: max(self.groups[i]))
        if last not in chosen or len(chosen) < 2:
            return outcome
        at = chosen.index(last)
        mine = outcome.answers[at]
        others = [seq_of(a) for j, a in enumerate(outcome.answers) if j != at and a is not None]
        if mine is None or not others or seq_of(mine) >= max(others):
            return outcome
        need = replace(query, min_sequence=max(query.min_sequence, *others), sample=None)
        try:  # the shards wait for the sequence within the deadline
            again = await self._calls(send, need, deadline, 1.0, [last])
        except (DeadlineExceeded, ShardsUnavailable) as exc:
            outcome.answers[at] = None  # the last shard's answer cannot be used: coverage
            total = sum(self.sizes[i] for i in chosen)
            outcome.coverage -= self.sizes[last] / total
            if outcome.coverage < min_coverage or outcome.coverage <= 0:
                answered = round(outcome.coverage * total)
                raise type(exc)(
                    f"{answered} of {total} shards answered (min_coverage {min_coverage}): "
                    f"the last shard's group (shards {self.groups[last]}) did not reach "
                    f"mutation sequence {need.min_sequence}, which the others had applied "
                    f"(range partition: ids an upsert moves would be missing): {exc.message}"
                ) from None
            return outcome
        outcome.answers[at] = again.answers[0]
        return outcome

    async def _calls(self, send, query, deadline, min_coverage, groups) -> Outcome:
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
