"""One real local Ray + Serve for the whole session, and the apps the tests query."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# replicas' metrics exported every 2 s (Ray's default: 10 s), so tests that read /metrics do
# not wait on the export schedule
os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")
TOKEN = "s3cret-test-token"
os.environ["VSEARCH_TEST_TOKEN"] = TOKEN  # before Ray starts: replicas inherit it


@pytest.fixture(scope="session")
def serve_base():
    import ray

    from deployments.local import start_local

    yield start_local()
    ray.shutdown()


class LoadThreads:
    """Threads running ``self.run()`` (a loop until ``self.stop`` is set) inside a ``with``."""

    def __init__(self, threads: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


SESSION_APPS = ("flat", "ivf", "auth")  # the ``apps`` fixture's


def _uses_apps(item) -> bool:
    return "apps" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    """The modules whose tests use the session ``apps`` run first among these tests, so the
    apps are undeployed once the last of them is done: their 12 idle replicas (health
    checks, reports, log polls) took about a tenth of the 2 cores from every later test.
    Whole modules move, in their own order, so module fixtures are set up once."""
    here = Path(__file__).parent
    mine = [i for i in items if here in Path(str(i.path)).parents]
    users = {i.path for i in mine if _uses_apps(i)}
    if not mine or not users:
        return
    first = items.index(mine[0])
    moved = [i for i in mine if i.path in users] + [i for i in mine if i.path not in users]
    taken = set(mine)
    rest = [i for i in items if i not in taken]
    items[:] = rest[:first] + moved + rest[first:]


@pytest.fixture(autouse=True)
def _undeploy_apps_of_the_test(request):
    """Delete the apps a test deployed once it is done: every idle app's replicas cost the
    Serve controller and the 2 cores of CI time for the rest of the session. (Session apps
    are deployed by session fixtures, set up before this one; they go after the last test
    that uses them.)"""
    from deployments.local import APPS, undeploy

    before = set(APPS)
    yield
    for name in set(APPS) - before:
        undeploy(name, wait=False)  # the next test need not wait for the replicas to stop
    items = request.session.items
    if _uses_apps(request.node) and request.node in items:
        later = items[items.index(request.node) + 1 :]
        if not any(_uses_apps(i) for i in later):
            for name in SESSION_APPS:
                if name in APPS:
                    undeploy(name, wait=False)


def run_drill(module: str, arg: str, timeout_s: float = 600) -> dict:
    """``module.drill(arg)`` in a child process (it starts its own Ray cluster, which cannot
    share this session's); returns the JSON it prints."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    code = (
        f"import json, sys; from {module} import drill; "
        "print('DRILL ' + json.dumps(drill(sys.argv[1])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, arg],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DRILL ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][6:])


def deploy(
    name: str, args: dict, overrides: list[dict] | None = None, route_prefix: str | None = None
) -> None:
    from deployments.local import deploy as deploy_app

    deploy_app(name, args, overrides, route_prefix)


@pytest.fixture(scope="session")
def indexes(tmp_path_factory):
    """Three small indexes: flat (3 shards, ids, metadata), ivf (2 shards, tuned), tiny."""
    from shards import BuildOptions, VectorSource, build_index
    from tests.conftest import clustered

    root = tmp_path_factory.mktemp("served")
    xb = clustered(6000, 16, seed=1)
    ids = np.arange(len(xb), dtype=np.int64) * 3 + 1
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(xb.ravel()), 16)
    pq.write_table(
        pa.table({"id": ids, "vector": vectors, "tag": [f"t{i}" for i in ids]}),
        root / "flat.parquet",
    )
    src = VectorSource(str(root / "flat.parquet"), id_column="id", metadata_columns=["tag"])
    build_index(src, str(root / "flat"), BuildOptions(num_shards=3, index="Flat", progress=False))
    np.save(root / "xb.npy", xb)
    build_index(
        VectorSource(str(root / "xb.npy")),
        str(root / "ivf"),
        BuildOptions(num_shards=2, index="IVF32,Flat", progress=False),
    )
    np.save(root / "tiny.npy", xb[:500])
    build_index(
        VectorSource(str(root / "tiny.npy")),
        str(root / "tiny"),
        BuildOptions(index="Flat", progress=False),
    )
    return {"root": root, "xb": xb, "ids": ids}


@pytest.fixture(scope="session")
def apps(serve_base, indexes):
    """Deploys flat, ivf and auth; returns their base URLs."""
    root = indexes["root"]
    t0 = time.time()
    deploy("flat", {"index_uri": str(root / "flat"), "limits": {"max_body_bytes": 200_000}})
    deploy("ivf", {"index_uri": str(root / "ivf")})
    deploy("auth", {"index_uri": str(root / "tiny"), "auth_token_env": "VSEARCH_TEST_TOKEN"})
    print(f"deployed 3 apps in {time.time() - t0:.1f} s")
    return {name: f"{serve_base}/{name}" for name in SESSION_APPS}
