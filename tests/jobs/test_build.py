"""The distributed build (``python -m jobs build``) on a local three-node Ray cluster.

The oracle is the single-process build (``shards.build``): the same input and options give
the same shards, byte for byte, and the same answers; a build killed midway leaves nothing
loadable and its rerun redoes only the shards that had not finished.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shards import BuildOptions, ShardedIndex, VectorSource, build_index
from shards._faiss import faiss
from shards.artefact import open_version, read_shard, verify_version
from shards.build import _add_all, append_rows, tune_manifest, tuning_queries
from shards.errors import MissingFile
from shards.metric import Metric
from tests.conftest import clustered
from tests.shards.helpers import assert_same_knn

pytestmark = [pytest.mark.ray, pytest.mark.slow]
HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def cluster():
    """A head and two worker nodes in a child process; yields (address, process)."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "cluster.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    address = proc.stdout.readline().strip()
    assert address, "the test cluster did not start"
    yield address, proc
    proc.stdin.close()
    proc.wait(timeout=60)


def jobs_build(address: str, args: list[str], **popen) -> subprocess.Popen:
    env = {**os.environ, "VSEARCH_PROGRESS": "0", "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "jobs", "build", *args, "--address", address]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, **popen)


def run_jobs(address: str, args: list[str]) -> subprocess.CompletedProcess:
    proc = jobs_build(address, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def shard_bytes(uri: str) -> list[tuple[bytes, np.ndarray, pa.Table | None]]:
    store, m = open_version(uri)
    datas = [read_shard(store, m, i) for i in range(m.num_shards)]
    return [(faiss.serialize_index(d.index).tobytes(), d.ids, d.metadata) for d in datas]


def assert_same_shards(a: str, b: str) -> None:
    left, right = shard_bytes(a), shard_bytes(b)
    assert len(left) == len(right)
    for i, ((ia, ida, ma), (ib, idb, mb)) in enumerate(zip(left, right, strict=True)):
        np.testing.assert_array_equal(ida, idb, err_msg=f"shard {i} ids")
        assert ia == ib, f"shard {i}: index bytes differ"
        assert (ma is None) == (mb is None) and (ma is None or ma.equals(mb)), f"shard {i} meta"


@pytest.fixture(scope="module")
def glove():
    from bench import glove

    return glove.load(30_000, 1_000)


def test_flat_equals_single_process_flat(cluster, glove, tmp_path):
    address, _ = cluster
    args = [glove.db_path, "--shards", "3", "--index", "Flat", "--metric", "cosine"]
    done = run_jobs(address, [*args, "--out", str(tmp_path / "dist"), "--chunk-rows", "4096"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 3 node(s), 3 shard task(s) run" in done.stdout
    opts = BuildOptions(num_shards=3, index="Flat", metric="cosine", progress=False)
    build_index(VectorSource(glove.db_path), str(tmp_path / "single"), opts)
    assert_same_shards(str(tmp_path / "dist"), str(tmp_path / "single"))
    _, problems = verify_version(str(tmp_path / "dist"))
    assert problems == []
    dist = ShardedIndex.open(str(tmp_path / "dist"))
    single = ShardedIndex.open(str(tmp_path / "single"))
    _, I_dist = dist.search(glove.xq, 10)
    _, I_single = single.search(glove.xq, 10)
    np.testing.assert_array_equal(I_dist, I_single)  # identical ids on 1,000 held-out queries
    D_exact, I_exact = faiss.knn(glove.xq, glove.xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    D_dist, _ = dist.search(glove.xq, 10)
    assert_same_knn(D_exact, I_exact, D_dist, I_dist, tol=1e-5)
    built = dist.manifest.build["distributed"]
    assert built["nodes"] == 3 and built["resumed"] is False
    assert not os.path.exists(tmp_path / "dist" / ".build"), "the work folder is left"
    # traffic mixed (the default): the reason says the tuning is timed on batches here
    assert "times its tuning on batches" in dist.manifest.build["choice"]


def _parquet(path, n: int = 20_000, d: int = 32) -> None:
    x = clustered(n, d, seed=5)
    rng = np.random.default_rng(5)
    table = pa.table(
        {
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), d),
            "key": pa.array(rng.permutation(10 * n)[:n].astype(np.int64) + 1),
            "category": pa.array([f"c{i}" for i in rng.integers(0, 7, n)]).dictionary_encode(),
            "year": pa.array(rng.integers(1990, 2025, n)),
        }
    )
    pq.write_table(table, path, row_group_size=3000)


def test_ivfpq_from_parquet_same_codes_and_tuning(cluster, tmp_path):
    """Parquet with ids and metadata, tuned: the shards equal what the single-process add
    makes from the same trained template, and the distributed tuning measures the same
    recall as the single-process tuning of the same index."""
    address, _ = cluster
    src = tmp_path / "in.parquet"
    _parquet(src)
    flags = ["--shards", "4", "--index", "IVF64,PQ8x4fs,RFlat", "--id-column", "key"]
    flags += ["--metadata-columns", "category,year", "--out", str(tmp_path / "dist")]
    done = run_jobs(address, [f"file://{src}", *flags])  # a pyarrow.fs URI
    assert done.returncode == 0, done.stderr[-3000:]
    store, m = open_version(str(tmp_path / "dist"))
    assert m.tuning is not None and m.default_params.get("nprobe")
    dist = [read_shard(store, m, i) for i in range(4)]
    # the single-process add, given the distributed build's trained template
    template = faiss.clone_index(dist[0].index)
    template.reset()
    source = VectorSource(str(src), id_column="key", metadata_columns=["category", "year"])
    opts = BuildOptions(num_shards=4, index="IVF64,PQ8x4fs,RFlat", progress=False)
    held = tuning_queries(source, Metric.parse("l2"), opts)
    datas, held_rows = _add_all(source, template, Metric.parse("l2"), opts, held)
    # the single-process tuning of the same shards: the same recall at every common point
    single = tune_manifest(replace(m, tuning=None), datas, source, opts, held)
    recall = {_key(p): p["recall"] for p in single.tuning["curve"]}
    common = [p for p in m.tuning["curve"] if _key(p) in recall]
    assert len(common) >= 5
    for p in common:
        assert p["recall"] == pytest.approx(recall[_key(p)], abs=1e-6), p["params"]
    append_rows(datas, held_rows)
    for i, data in enumerate(datas):
        np.testing.assert_array_equal(data.ids, dist[i].ids)
        assert (
            faiss.serialize_index(data.index).tobytes()
            == faiss.serialize_index(dist[i].index).tobytes()
        ), f"shard {i}: codes differ"
        assert data.metadata.equals(dist[i].metadata)
    assert dist[0].metadata.column_names == ["id", "category", "year"]


def _key(point: dict) -> str:
    return json.dumps(point["params"], sort_keys=True)


def first_shard_done(out, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    """Return as soon as the build writing ``out`` has marked a shard done."""
    deadline = time.monotonic() + timeout_s
    while _markers(out) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def _markers(out) -> int:
    work = out / ".build"
    if not work.exists():
        return 0
    return sum(len(list((k / "added").glob("*.json"))) for k in work.iterdir())


IVF8 = ["--shards", "8", "--index", "IVF64,Flat", "--no-tune", "--metric", "cosine"]


@pytest.fixture(scope="module")
def uninterrupted(glove, tmp_path_factory) -> str:
    """The single-process build of what the kill drills build, trained with one thread as
    the one-CPU training task is."""
    out = str(tmp_path_factory.mktemp("whole") / "idx")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VSEARCH_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "shards", "build", glove.db_path, *IVF8, "--out", out]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return out


def test_killed_build_leaves_nothing_loadable_and_resumes(cluster, glove, uninterrupted, tmp_path):
    address, _ = cluster
    out = tmp_path / "idx"
    args = [glove.db_path, *IVF8, "--out", str(out), "--cpus-per-shard", "2"]
    proc = jobs_build(address, args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_shard_done(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _markers(out)
    assert 1 <= done_before < 8, f"{done_before} shards were done when the driver died"
    with pytest.raises(MissingFile):
        ShardedIndex.open(str(out))
    versions = [v for v in os.listdir(out) if not v.startswith(".")]
    assert all(not (out / v / "manifest.json").exists() for v in versions)
    again = run_jobs(address, args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the build" in again.stderr
    built = ShardedIndex.open(str(out)).manifest.build["distributed"]
    assert built["resumed"] is True and len(built["shard_tasks_run"]) == 8 - done_before
    assert_same_shards(str(out), uninterrupted)


def test_bad_input_is_one_line_not_a_traceback(cluster, tmp_path):
    address, _ = cluster
    missing = run_jobs(address, [str(tmp_path / "nope.npy"), "--out", str(tmp_path / "o")])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    x = clustered(2_000, 16, seed=3)
    x[1234, 5] = np.nan
    np.save(tmp_path / "nan.npy", x)
    bad = run_jobs(address, [str(tmp_path / "nan.npy"), "--out", str(tmp_path / "o")])
    assert bad.returncode == 2, bad.stderr[-2000:]
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "NaN" in last and "Traceback" not in bad.stderr
    with pytest.raises(MissingFile):
        ShardedIndex.open(str(tmp_path / "o"))


def test_a_node_dying_mid_build_costs_only_its_tasks(cluster, glove, uninterrupted, tmp_path):
    """A worker node removed while shards are being added: Ray runs its tasks again on the
    nodes left and the build finishes, identical to one that lost nothing. Last: the
    cluster has one node less afterwards."""
    address, proc = cluster
    out = tmp_path / "idx"
    args = [glove.db_path, *IVF8, "--out", str(out), "--cpus-per-shard", "2"]
    build = jobs_build(address, args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_shard_done(out, build)
    proc.stdin.write("remove\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "removed"
    assert _markers(out) < 8, "every shard was done before the node died"
    _, err = build.communicate(timeout=300)
    assert build.returncode == 0, err[-3000:]
    assert ShardedIndex.open(str(out)).manifest.build["distributed"]["nodes"] == 2
    assert_same_shards(str(out), uninterrupted)
