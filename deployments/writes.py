"""The router's write path after its checks: a mutation is logged through the app's one
writer (the coordinator's ``deployments.writer.LogWriter``) and counted by kind and status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from deployments.errors import DeadlineExceeded
from deployments.fanout import unwrap
from deployments.metrics import RouterMetrics
from shards.errors import VsearchError
from shards.log import Mutation


@contextmanager
def counting(metrics: RouterMetrics, kind: str) -> Iterator[None]:
    """Count a write of ``kind`` by its status class (its error's, or 2xx)."""
    try:
        yield
    except Exception as exc:
        status = exc.status_code if isinstance(exc, VsearchError) else 500
        metrics.writes.inc(tags={"kind": kind, "status": f"{status // 100}xx"})
        raise
    metrics.writes.inc(tags={"kind": kind, "status": "2xx"})


async def log_write(
    coordinator, metrics: RouterMetrics, m: Mutation, deadline: float | None = None
) -> int:
    """Log ``m`` through the coordinator; its sequence once durable (the writer's own error,
    unwrapped from Ray's, otherwise).

    Raises:
        DeadlineExceeded: ``deadline`` (``time.monotonic()``) passed first: the write may
            still be logged, and a retry under the same idempotency key is answered with
            its sequence, never applied twice.
    """
    t0 = time.perf_counter()
    try:
        call = coordinator.write.remote(m)
        if deadline is None:
            seq = await call
        else:
            seq = await asyncio.wait_for(call, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        again = " under the same idempotency_key" if m.key else " with an idempotency_key"
        raise DeadlineExceeded(
            f"deadline passed before the {m.op} was durable: it may still be applied; "
            f"retry it{again} to learn its sequence without applying it twice"
        ) from None
    except Exception as exc:
        raise (unwrap(exc) or exc) from None
    metrics.write_rows.inc(len(m), tags={"kind": m.op})
    metrics.write_latency.observe(time.perf_counter() - t0)
    return seq
