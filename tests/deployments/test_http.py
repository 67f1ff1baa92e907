"""The HTTP helpers without Ray: large bodies are parsed and encoded off the event loop."""

from __future__ import annotations

import asyncio
import threading

from deployments.http import OFF_LOOP_BYTES, off_loop


def test_large_work_runs_in_a_thread_and_small_work_inline():
    def where(tag: str) -> tuple[str, int]:
        return tag, threading.get_ident()

    async def both():
        loop_thread = threading.get_ident()
        small = await off_loop(where, "small", size=10, threshold=OFF_LOOP_BYTES)
        large = await off_loop(where, "large", size=OFF_LOOP_BYTES, threshold=OFF_LOOP_BYTES)
        return loop_thread, small, large

    loop_thread, small, large = asyncio.run(both())
    assert small == ("small", loop_thread)
    assert large[0] == "large" and large[1] != loop_thread


def test_the_loop_keeps_answering_while_a_large_body_is_parsed():
    """A 12 MB body parsed off the loop: a timer on the loop fires during the parse; parsed
    on the loop (below the threshold), none can.

    The parse holds Python's lock for long stretches (json and pydantic run in C), so how
    often the loop gets in depends on the machine: one tick against none tells the two
    apart (two were asked for once, and a busy machine gave one)."""
    import json

    from deployments.http import parse_search

    body = json.dumps({"vectors": [[0.5] * 64] * 24_000, "k": 5}).encode()

    async def main(threshold: int):
        loop = asyncio.get_running_loop()
        ticks: list[float] = []

        async def tick():
            while True:
                ticks.append(loop.time())
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        start = loop.time()
        req = await off_loop(
            parse_search, body, len(body) + 1, "", size=len(body), threshold=threshold
        )
        end = loop.time()
        ticker.cancel()
        assert len(req.vectors) == 24_000
        return sum(start < t < end for t in ticks)

    assert asyncio.run(main(len(body) + 1)) == 0  # on the loop: it is blocked throughout
    assert asyncio.run(main(OFF_LOOP_BYTES)) >= 1, "the loop was blocked during the parse"
