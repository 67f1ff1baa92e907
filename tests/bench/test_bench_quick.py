"""`python -m bench --quick` (what `make bench ARGS=--quick` runs) end to end: every CPU
benchmark runs and reports sane numbers (a smoke test, not a speed test)."""

import itertools
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_quick_runs_every_cpu_benchmark(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--out",
            str(tmp_path),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    for name in ("core", "compare", "scaling", "cold_start", "capacity"):
        assert (tmp_path / f"{name}.json").exists() and (tmp_path / f"{name}.md").exists(), name
    for png in ("compare", "compare-latency", "scaling", "capacity"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000, png

    core = json.loads((tmp_path / "core.json").read_text())
    assert {(r["index"], r["shards"]) for r in core["rows"]} == {
        ("Flat", 1),
        ("Flat", 4),
        ("auto", 1),
        ("auto", 4),
    }
    for row in core["rows"]:
        assert row["batched_qps"] > 0 and 0.9 <= row["recall_at_10"] <= 1.0
    # sharded exact search equals unsharded exact search, up to exact ties
    flat = core["flat_4_vs_1"]
    assert flat["differing_ids"] == flat["differing_at_exact_ties"]

    compare = json.loads((tmp_path / "compare.json").read_text())
    assert compare["http_front"] == "HAProxy"  # as `make serve` runs it
    measured = {r["system"]: r for r in compare["rows"] if "recall" in r}
    vsearch = {"vsearch in-process", "vsearch handle", "vsearch HTTP", "vsearch HTTP direct"}
    errors = [r for r in compare["rows"] if "error" in r]
    assert vsearch | {"faiss Flat"} <= set(measured), errors
    for row in compare["rows"]:
        if row["system"] in vsearch or row["system"] == "faiss Flat":
            assert "error" not in row, row
            assert row["qps_batch"] > 0 and row["qps_single_c8"] > 0 and row["recall"] >= 0.85
    assert measured["faiss Flat"]["recall"] == 1.0

    scaling = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["shards"] for r in scaling["rows"]] == [1, 2, 4, 8]
    assert all(r["recall"] >= 0.9 and r["qps_batch"] > 0 for r in scaling["rows"])

    cold = {r["system"]: r for r in json.loads((tmp_path / "cold_start.json").read_text())["rows"]}
    for name in ("vsearch in-process", "vsearch service (local Ray + HTTP)", "faiss HNSW32"):
        assert cold[name]["cold_start_s"] > 0, cold[name]

    capacity = json.loads((tmp_path / "capacity.json").read_text())
    fanout = capacity["fanout"]
    assert [f["shards"] for f in fanout][:3] == [1, 2, 4]
    # the slowest of S shards can only get slower as S grows
    assert all(b["p99_ms"] >= a["p99_ms"] for a, b in itertools.pairwise(fanout))
