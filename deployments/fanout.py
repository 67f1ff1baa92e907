"""Fan a call out to every shard group with a deadline, coverage rules and retries.

Plain asyncio (no Ray): each target is a zero-argument coroutine factory, so the router
passes handle calls and the tests pass plain coroutines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from deployments.errors import DeadlineExceeded, ShardsUnavailable
from shards.errors import VsearchError

Call = Callable[[], Awaitable[Any]]
# (exception, attempts made so far) -> retry on another replica?
Retryable = Callable[[BaseException, int], bool]


def unwrap(exc: BaseException | None) -> BaseException | None:
    """The exception raised inside a replica (Ray wraps it in a RayTaskError)."""
    return getattr(exc, "cause", None) or exc


@dataclass
class Outcome:
    """Per target: its answer (None when it failed or ran out of time) and the coverage."""

    answers: list[Any]
    coverage: float
    retries: int


async def call_with_retries(
    call: Call, deadline: float, retryable: Retryable, counter: list[int]
) -> Any:
    """``call()`` again while ``retryable`` says so and time is left (each retry goes to
    whichever replica the handle picks)."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            attempt += 1
            if time.monotonic() >= deadline or not retryable(exc, attempt):
                raise
            counter[0] += 1


async def fan_out(
    calls: Sequence[Call],
    sizes: Sequence[int],
    deadline: float,
    min_coverage: float,
    retryable: Retryable,
) -> Outcome:
    """Run every call; ``Outcome`` or raise by the coverage rules.

    ``sizes[i]``: shards behind target ``i`` (coverage counts shards, not targets).

    Raises:
        VsearchError (4xx): a target found the request invalid (whatever the coverage).
        DeadlineExceeded: too few answered before ``deadline`` (monotonic seconds).
        ShardsUnavailable: too few answered, and not for lack of time.
    """
    counter = [0]
    tasks = [
        asyncio.ensure_future(call_with_retries(c, deadline, retryable, counter)) for c in calls
    ]
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    answers: list[Any] = []
    failures: list[BaseException] = []
    answered = 0
    for task, size in zip(tasks, sizes, strict=True):
        if task in done and task.exception() is None:
            answers.append(task.result())
            answered += size
            continue
        answers.append(None)
        if task in done:
            failures.append(unwrap(task.exception()))  # type: ignore[arg-type]
    for exc in failures:  # a mistake in the request is the caller's, whatever the coverage
        if isinstance(exc, VsearchError) and exc.status_code < 500:
            raise exc
    total = sum(sizes)
    coverage = answered / total
    if coverage < min_coverage or answered == 0:
        what = f"{answered} of {total} shards answered (min_coverage {min_coverage})"
        if pending:
            raise DeadlineExceeded(f"deadline passed: {what}")
        raise ShardsUnavailable(f"{what}; first failure: {failures[0]!r}")
    return Outcome(answers, coverage, counter[0])
