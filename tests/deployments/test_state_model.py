"""The router's pieces that need no Ray: fan-out rules, the swap phases, JSON of every Arrow
type, the health probe on duplicates, request body limits."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import time

import numpy as np
import pyarrow as pa
import pytest

from deployments.errors import BodyTooLarge, DeadlineExceeded, ShardsUnavailable
from deployments.fanout import fan_out
from deployments.http import jsonable, read_body, response_json
from deployments.swap import Prepare, Report, prepare_state, retirable
from shards.errors import IndexLoadError, InvalidQuery, VersionMismatch


def run(coro):
    return asyncio.run(coro)


def answer(value, delay=0.0):
    async def call():
        await asyncio.sleep(delay)
        return value

    return call


def failing(exc, times=10**9):
    left = [times]

    async def call():
        if left[0] > 0:
            left[0] -= 1
            raise exc
        return "recovered"

    return call


def retry_unavailable(exc, attempt):
    return isinstance(exc, VersionMismatch | IndexLoadError) and attempt <= 3


def test_fan_out_retries_a_replica_without_the_version():
    """A replica that lacks the version (or its files) is retried around, not a 503."""
    soon = time.monotonic() + 5
    out = run(
        fan_out(
            [answer("a"), failing(VersionMismatch("no"), times=2)],
            [1, 1],
            soon,
            1.0,
            retry_unavailable,
        )
    )
    assert out.answers == ["a", "recovered"] and out.coverage == 1.0 and out.retries == 2


def test_fan_out_coverage_rules():
    soon = time.monotonic() + 5
    out = run(
        fan_out([answer(1), failing(RuntimeError("x"))], [3, 1], soon, 0.75, retry_unavailable)
    )
    assert out.answers == [1, None] and out.coverage == 0.75
    with pytest.raises(ShardsUnavailable, match="3 of 4"):
        run(fan_out([answer(1), failing(RuntimeError("x"))], [3, 1], soon, 1.0, retry_unavailable))
    with pytest.raises(InvalidQuery):  # the caller's mistake wins over coverage
        run(
            fan_out([answer(1), failing(InvalidQuery("bad"))], [1, 1], soon, 0.0, retry_unavailable)
        )
    with pytest.raises(DeadlineExceeded):
        run(
            fan_out(
                [answer(1), answer(2, delay=2)],
                [1, 1],
                time.monotonic() + 0.1,
                1.0,
                retry_unavailable,
            )
        )


def test_prepare_needs_every_running_replica():
    running = {"shard-0": 2, "shard-1": 2}
    reports = {
        "a": Report("shard-0", ("v1", "v2")),
        "b": Report("shard-0", ("v1", "v2")),
        "c": Report("shard-1", ("v1", "v2")),
        "d": Report("shard-1", ("v1",)),
    }
    assert prepare_state("v2", running, reports)[0] is Prepare.WAITING
    reports["d"] = Report("shard-1", ("v1", "v2"))
    assert prepare_state("v2", running, reports)[0] is Prepare.READY
    assert prepare_state("v2", {**running, "shard-2": 1}, reports)[0] is Prepare.WAITING
    reports["e"] = Report("shard-1", ("v1",), {"v2": "cannot load: truncated"})
    state, why = prepare_state("v2", running, reports)
    assert state is Prepare.FAILED and "truncated" in why


def test_a_stopped_replicas_report_does_not_stand_in_for_a_running_one():
    """r2 stopped holding v2 (its report stays fresh a while); its replacement r3 runs and
    holds only v1: two reports hold v2 for two running replicas, but one running replica
    cannot answer v2 (the swap was committed and r3 answered VersionMismatch)."""
    reports = {
        "r1": Report("shard-0", ("v1", "v2")),
        "r2": Report("shard-0", ("v1", "v2")),
        "r3": Report("shard-0", ("v1",)),
    }
    state, why = prepare_state("v2", {"shard-0": 2}, reports)
    assert state is Prepare.WAITING and "2/2 (1 reporting without it)" in why
    del reports["r2"]  # its report expired
    assert prepare_state("v2", {"shard-0": 2}, reports)[0] is Prepare.WAITING
    reports["r3"] = Report("shard-0", ("v1", "v2"))
    assert prepare_state("v2", {"shard-0": 2}, reports)[0] is Prepare.READY


def test_retire_waits_for_in_flight_requests_and_the_grace_time():
    long_ago = time.monotonic() - 60
    assert retirable("v1", "v2", "v2", 0, long_ago)
    assert not retirable("v1", "v2", "v2", 1, long_ago)  # a request still reads it
    assert not retirable("v1", "v2", "v2", 0, time.monotonic())  # routers catching up
    assert not retirable("v2", "v2", "v2", 0, long_ago)
    assert not retirable("v3", "v2", "v3", 0, long_ago)  # the next version


def test_every_arrow_type_is_answered_as_json():
    """Date, timestamp, decimal and binary metadata gave a plain-text 500 (and NaN scores
    would have been invalid JSON)."""
    table = pa.table(
        {
            "d": pa.array([datetime.date(2020, 1, 2)]),
            "ts": pa.array([datetime.datetime(2020, 1, 2, 3, 4, 5)], pa.timestamp("us")),
            "dec": pa.array([decimal.Decimal("1.25")], pa.decimal128(5, 2)),
            "bin": pa.array([b"\x00\xff"]),
            "dur": pa.array([datetime.timedelta(seconds=90)]),
            "nan": pa.array([float("nan")]),
            "lst": pa.array([[1.5, float("inf")]]),
            "map": pa.array([[("a", 1)]], pa.map_(pa.string(), pa.int64())),
        }
    )
    row = table.to_pylist()[0]
    result = {
        "D": np.array([[1.0, np.nan, np.inf]], np.float32),
        "I": np.array([[1, 2, -1]]),
        "coverage": 1.0,
        "degraded": False,
        "index_version": "v",
        "took_ms": 1.0,
        "metadata": [[row, None, None]],
    }
    body = json.loads(response_json(result))
    assert body["scores"] == [[1.0, None, None]]
    meta = body["metadata"][0][0]
    assert meta == {
        "d": "2020-01-02",
        "ts": "2020-01-02T03:04:05",
        "dec": "1.25",
        "bin": "AP8=",
        "dur": 90.0,
        "nan": None,
        "lst": [1.5, None],
        "map": {"a": 1},
    }
    assert jsonable(np.float32(2.5)) == 2.5


class FakeRequest:
    """The two things ``read_body`` reads of a Starlette request."""

    def __init__(self, body: bytes, declared: int | None) -> None:
        self.headers = {} if declared is None else {"content-length": str(declared)}
        self.body, self.read = body, 0

    async def stream(self):
        for i in range(0, len(self.body), 1000):
            self.read += 1000
            yield self.body[i : i + 1000]


def test_body_size_is_checked_before_reading():
    """The whole body was read before its size was checked."""
    big = FakeRequest(b"x" * 100_000, 100_000)
    with pytest.raises(BodyTooLarge):
        run(read_body(big, 10_000))
    assert big.read == 0  # refused by its Content-Length alone
    chunked = FakeRequest(b"x" * 100_000, None)
    with pytest.raises(BodyTooLarge):
        run(read_body(chunked, 10_000))
    assert chunked.read <= 11_000  # stopped once past the limit
    assert run(read_body(FakeRequest(b"{}", 2), 10)) == b"{}"


def test_health_probe_tolerates_duplicates(tmp_path):
    """The probe's own id had to be in its top 10: with many copies of one vector it was
    not, the check failed on healthy data and Serve restarted the replica in a loop."""
    from deployments.config import ShardOptions
    from deployments.held import LoadedShards
    from shards import BuildOptions, VectorSource, build_index
    from tests.conftest import clustered

    xb = clustered(2000, 16, seed=5)
    xb[:40] = xb[0]  # 40 copies of the first vector
    np.save(tmp_path / "xb.npy", xb)
    root = str(tmp_path / "idx")
    build_index(VectorSource(str(tmp_path / "xb.npy")), root, BuildOptions(index="Flat"))
    loaded = LoadedShards(root, [0], None, ShardOptions())
    assert loaded.probe is not None and loaded.probe_ok(loaded.probe)
    np.testing.assert_array_equal(loaded.probe, xb[:1])
    other = np.ascontiguousarray(xb[100:101] + 0.5)
    assert not loaded.probe_ok(other)  # a vector that is not stored fails it


def test_pathological_json_is_a_400():
    """A deeply nested body raised RecursionError inside json.loads: a 500."""
    from deployments.errors import BadRequest
    from deployments.http import parse_search

    for body in (b"[" * 100_000, b'{"vectors": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        with pytest.raises(BadRequest):
            parse_search(body, 10**7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("k", True),
        ("k", 2.5),
        ("k", 3.0),
        ("k", "3"),
        ("min_sequence", True),
        ("deadline_ms", "100"),
        ("include_metadata", 1),
        ("vectors", [["1", True]]),
        ("vectors", [[True, 0.5]]),
        ("ids", [True]),
        ("ids", [1.0]),
    ],
)
def test_a_field_of_the_wrong_type_is_a_400_not_coerced(field, value):
    """JSON bodies are read strictly: ``"k": true`` was k=1 and ``["1", true]`` a vector
    [1.0, 1.0], while the handle refuses such values (a knob silently changed)."""
    from deployments.errors import BadRequest
    from deployments.http import parse_body, parse_search
    from deployments.schema import DeleteRequest, GetRequest

    body = {"vectors": [[0.5, 0.5]], field: value}
    if field == "ids":
        del body["vectors"]
    with pytest.raises(BadRequest, match=field):
        parse_search(json.dumps(body).encode(), 10**6)
    if field in ("ids", "min_sequence", "deadline_ms"):
        for model in (DeleteRequest, GetRequest):
            with pytest.raises(BadRequest, match=field):
                parse_body(model, json.dumps({"ids": [1], field: value}).encode(), 10**6)
    fine = parse_search(
        json.dumps({"vectors": [[1, 0.5]], "k": 3, "min_coverage": 1}).encode(), 10**6
    )
    assert fine.vectors == [[1.0, 0.5]] and fine.k == 3 and fine.min_coverage == 1.0


def test_a_query_that_killed_its_replica_by_memory_is_not_retried():
    """A replica OOM-killed by a query got the same query on the next replica."""
    from ray.exceptions import OutOfMemoryError, RayActorError

    from deployments.calls import retryable

    rule = retryable(2)
    assert rule(RayActorError(error_msg="the actor died"), 1)
    assert not rule(RayActorError(error_msg="the actor died"), 3)
    assert not rule(OutOfMemoryError("killed by the memory monitor"), 1)
    assert not rule(RayActorError(error_msg="worker killed by the memory monitor"), 1)
    assert rule(VersionMismatch("not held"), 5) and not rule(VersionMismatch("x"), 7)
    assert not rule(InvalidQuery("bad"), 1)


def test_a_long_batch_is_searched_from_one_state_in_every_sub_batch(tmp_path):
    """A batch longer than SUB_BATCH is searched in parts; a delete applied between two
    parts must not show in the second (each part took a fresh state: one answer mixed two
    mutation sequences)."""
    from deployments.config import ShardOptions
    from deployments.held import SUB_BATCH, LoadedShards
    from shards import BuildOptions, VectorSource, build_index
    from shards.query import Query
    from tests.conftest import clustered

    xb = clustered(3 * SUB_BATCH, 16, seed=6)
    np.save(tmp_path / "xb.npy", xb)
    root = str(tmp_path / "idx")
    build_index(VectorSource(str(tmp_path / "xb.npy")), root, BuildOptions(index="Flat"))
    loaded = LoadedShards(root, [0], None, ShardOptions())
    index, second = loaded.index, np.arange(SUB_BATCH, 2 * SUB_BATCH)
    search = index.search_query_planned

    def then_delete(*args, **kwargs):  # a write lands between the first and second part
        out = search(*args, **kwargs)
        if index.sequence == 0:
            index.delete(second)
        return out

    index.search_query_planned = then_delete
    _, I, _ = loaded.search(xb[: 2 * SUB_BATCH], Query(1), None)
    assert index.sequence == 1  # the delete did land mid-batch
    np.testing.assert_array_equal(I[SUB_BATCH:, 0], second)  # the state the batch began in
    _, I, _ = loaded.search(xb[SUB_BATCH : 2 * SUB_BATCH], Query(1), None)
    assert not np.isin(I[:, 0], second).any()  # the next call sees the delete
