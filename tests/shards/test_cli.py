"""The CLI end to end, and its error exits: status 2 (1 for verify) with one line, no traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.shards.helpers import brute_force


def cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "shards", *map(str, args)],
        capture_output=True,
        text=True,
        env={"VSEARCH_PROGRESS": "0", "PATH": ""},
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("cli")
    np.save(tmp / "xb.npy", data[0][:6000])
    np.save(tmp / "xq.npy", data[1])
    out = cli(
        "build",
        tmp / "xb.npy",
        "--out",
        tmp / "idx",
        "--shards",
        3,
        "--index",
        "IVF32,Flat",
        "--metric",
        "cosine",
    )
    assert "built" in out.stdout and "3 shard(s)" in out.stdout
    return tmp


def test_search_writes_npz(cli_index, data):
    tmp = cli_index
    cli(
        "search",
        tmp / "idx",
        "--queries",
        tmp / "xq.npy",
        "-k",
        7,
        "--nprobe",
        32,
        "--output",
        tmp / "out.npz",
    )
    res = np.load(tmp / "out.npz")
    _, ref = brute_force(data[0][:6000], data[1], 7, "cosine")
    assert res["D"].shape == res["I"].shape == (200, 7)
    np.testing.assert_array_equal(res["I"], ref)


def test_search_by_id_prints(cli_index):
    out = cli("search", cli_index / "idx", "--ids", "3,4", "-k", 2, "--print").stdout
    lines = out.strip().splitlines()
    assert lines[0] == "query 0:" and lines[1].split() == ["rank", "score", "id"]
    assert len(lines) == 8 and lines[2].split()[0] == "1"


def test_target_recall_search(cli_index):
    cli(
        "search",
        cli_index / "idx",
        "--queries",
        cli_index / "xq.npy",
        "-k",
        5,
        "--target-recall",
        0.9,
        "--output",
        cli_index / "t.npz",
    )
    assert np.load(cli_index / "t.npz")["I"].shape == (200, 5)


def test_inspect_and_verify(cli_index):
    summary = cli("inspect", cli_index / "idx").stdout
    assert "6,000 x 32" in summary and "IVF32,Flat" in summary
    chosen = next(line for line in summary.splitlines() if line.startswith("chosen"))
    assert "IVF32,Flat for 2,000 vectors per shard x 32: explicit factory string" in chosen
    assert "traffic mixed, memory budget none" in chosen and "timed on batches" in chosen
    manifest = json.loads(cli("inspect", cli_index / "idx", "--json").stdout)
    assert manifest["num_shards"] == 3
    assert cli("verify", cli_index / "idx").stdout.startswith("ok:")


def test_autotune_cli(cli_index):
    out = cli("autotune", cli_index / "idx").stdout
    assert "tuned" in out and "nprobe" in out


def test_verify_fails_on_corruption(tmp_path, data):
    np.save(tmp_path / "xb.npy", data[0][:500])
    cli("build", tmp_path / "xb.npy", "--out", tmp_path / "idx", "--index", "Flat")
    manifest = json.loads(cli("inspect", tmp_path / "idx", "--json").stdout)
    rel = manifest["shards"][0]["files"]["index"]["path"]
    path = tmp_path / "idx" / manifest["index_version"] / rel
    path.write_bytes(path.read_bytes()[:-10])
    proc = cli("verify", tmp_path / "idx", check=False)
    assert proc.returncode == 1 and str(path) in proc.stderr
    proc = cli(
        "search",
        tmp_path / "idx",
        "--queries",
        tmp_path / "xb.npy",
        "--output",
        tmp_path / "o.npz",
        check=False,
    )
    assert proc.returncode == 2 and str(path) in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "missing.npy", "--out", "x"], "does not exist"),
        (["build", "{xq}", "--out", "{tmp}/bad", "--index", "NotAFactory"], "factory"),
        (["build", "{xq}", "--out", "{tmp}/bad", "--shards", "0"], "--shards"),
        (["search", "{tmp}/nothing", "--queries", "{xq}", "--output", "o.npz"], "no index"),
        (["search", "{tmp}/idx", "--queries", "{bad}", "--output", "o.npz"], "dimension"),
        (["search", "{tmp}/idx", "--queries", "{xq}", "-k", "0", "--output", "o.npz"], "k must"),
        (
            ["search", "{tmp}/idx", "--queries", "{xq}", "--ef-search", "8", "--output", "o"],
            "does not apply",
        ),
        (["search", "{tmp}/idx", "--ids", "999999", "--print"], "not in the index"),
        (["search", "{tmp}/idx", "--queries", "{xq}"], "--output"),
        (
            ["search", "{tmp}/idx", "--queries", "{xq}", "--target-recall", "2", "--output", "o"],
            "target_recall",
        ),
        (["search", "{tmp}/idx", "--queries", "{xq}", "--filter", "{{bad", "--print"], "JSON"),
        (
            ["search", "{tmp}/idx", "--queries", "{xq}", "--filter", '{{"a": 1}}', "--print"],
            "no metadata columns",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(cli_index, args, message):
    np.save(cli_index / "bad.npy", np.zeros((3, 5), np.float32))
    fmt = {"tmp": cli_index, "xq": cli_index / "xq.npy", "bad": cli_index / "bad.npy"}
    proc = cli(*[a.format(**fmt) for a in args], check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_export_ids(cli_index):
    import pyarrow.parquet as pq

    out = cli("export-ids", cli_index / "idx", "--output", cli_index / "ids.parquet").stdout
    assert "6,000 ids" in out
    table = pq.read_table(cli_index / "ids.parquet")
    assert sorted(table["id"].to_pylist()) == list(range(6000))
    assert set(table["shard"].to_pylist()) == {0, 1, 2}


def test_upsert_delete_compact_share_the_log_with_the_library(tmp_path, data):
    from shards import ShardedIndex

    xb = data[0][:500]
    np.save(tmp_path / "xb.npy", xb)
    cli("build", tmp_path / "xb.npy", "--out", tmp_path / "idx", "--shards", 2, "--index", "Flat")
    new = np.full((2, xb.shape[1]), 9.0, np.float32)
    np.save(tmp_path / "new.npy", new)
    out = cli("upsert", tmp_path / "idx", "--vectors", tmp_path / "new.npy", "--ids", "7,9000")
    assert "upserted 2 vectors at sequence 1" in out.stdout
    assert (
        "deleted 2 ids at sequence 2"
        in cli("delete", tmp_path / "idx", "--ids", "1,2,77777").stdout
    )
    index = ShardedIndex.open(str(tmp_path / "idx"))  # the library reads the same log
    assert index.sequence == 2 and index.ntotal == 499
    assert index.search(new[:1], 2)[1][0].tolist() in ([7, 9000], [9000, 7])
    out = cli("compact", tmp_path / "idx")
    assert "log included up to sequence 2" in out.stdout
    assert "up to sequence 2 included" in cli("inspect", tmp_path / "idx").stdout
    bad = cli(
        "upsert", tmp_path / "idx", "--vectors", tmp_path / "new.npy", "--ids=-1,3", check=False
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ids must be in [0, 2**63)")


def test_search_with_a_filter_matches_the_library(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shards import ShardedIndex
    from tests.conftest import clustered

    x = clustered(3000, 8, seed=2)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)
    table = pa.table({"id": np.arange(3000), "vector": vectors, "year": np.arange(3000) % 50})
    pq.write_table(table, tmp_path / "in.parquet")
    cli(
        "build",
        tmp_path / "in.parquet",
        "--out",
        tmp_path / "idx",
        "--shards",
        2,
        "--id-column",
        "id",
        "--metadata-columns",
        "year",
        "--index",
        "Flat",
    )
    np.save(tmp_path / "xq.npy", x[:5])
    expr = '{"year": {"$in": [3, 4]}}'
    cli(
        "search",
        tmp_path / "idx",
        "--queries",
        tmp_path / "xq.npy",
        "--filter",
        expr,
        "--output",
        tmp_path / "out.npz",
    )
    I = np.load(tmp_path / "out.npz")["I"]
    keep = np.isin(np.arange(3000) % 50, [3, 4])
    _, want = brute_force(x[keep], x[:5], 10, "l2", np.arange(3000)[keep])
    np.testing.assert_array_equal(I, want)
    index = ShardedIndex.open(str(tmp_path / "idx"))
    np.testing.assert_array_equal(index.search(x[:5], 10, filter=json.loads(expr))[1], I)
