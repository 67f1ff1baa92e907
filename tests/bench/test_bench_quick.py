"""The core benchmark's quick mode runs end to end and reports sane numbers (a smoke test)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_core_bench_quick(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.core",
            "--quick",
            "--out",
            str(tmp_path),
            "--workdir",
            str(tmp_path / "idx"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "core.json").read_text())
    assert {(r["index"], r["shards"]) for r in result["rows"]} == {
        ("Flat", 1),
        ("Flat", 4),
        ("auto", 1),
        ("auto", 4),
    }
    for row in result["rows"]:
        assert row["batched_qps"] > 0 and 0.9 <= row["recall_at_10"] <= 1.0
    assert (
        result["flat_4_vs_1"]["differing_ids"] == result["flat_4_vs_1"]["differing_at_exact_ties"]
    )
    assert (tmp_path / "core.md").read_text().startswith("# Core benchmark")


@pytest.mark.slow
def test_compare_quick_runs_vsearch_paths_and_a_faiss_peer(tmp_path):
    # as `make serve` runs it: HAProxy on the main port, direct ingress behind it
    env = {**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.compare",
            "--quick",
            "--queries",
            "300",
            "--systems",
            "faiss Flat,hnswlib",
            "--out",
            str(tmp_path),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "compare.json").read_text())
    measured = {r["system"] for r in result["rows"] if "recall" in r}
    assert {"vsearch in-process", "vsearch handle", "vsearch HTTP", "faiss Flat"} <= measured
    assert result["http_front"] == "HAProxy"
    for row in result["rows"]:
        if row["system"].startswith("vsearch") or row["system"] == "faiss Flat":
            assert row["qps_batch"] > 0 and row["recall"] >= 0.85, row
    # hnswlib is measured where the peers extra is installed, else reported, never fatal
    assert "hnswlib" in {r["system"] for r in result["rows"]}
    assert (tmp_path / "compare.png").exists()
