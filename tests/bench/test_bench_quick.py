"""The core benchmark's quick mode runs end to end and reports sane numbers (a smoke test)."""

import json
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
