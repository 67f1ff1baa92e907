"""bench.compare folds its passes into one row per setting: the fastest batched figure, and
the single-query figures of the fastest single-query pass (latencies from that pass)."""

from bench.compare import keep_best


def test_passes_keep_the_best_of_each_shape_and_its_own_latencies():
    row = {"system": "s"}
    keep_best(row, {"recall": 0.96, "qps_batch": 100.0, "qps_single_c8": 50.0, "singles": 9,
                    "p50_ms": 2.0, "p99_ms": 9.0})  # fmt: skip
    keep_best(row, {"recall": 0.96, "qps_batch": 120.0, "qps_single_c8": 40.0, "singles": 9,
                    "p50_ms": 1.0, "p99_ms": 5.0})  # fmt: skip
    assert row["qps_batch"] == 120.0  # the second pass batched faster
    assert (row["qps_single_c8"], row["p50_ms"], row["p99_ms"]) == (50.0, 2.0, 9.0)
    keep_best(row, {"recall": 0.96, "qps_batch": 90.0})  # a pass without single queries
    assert row["qps_batch"] == 120.0 and row["qps_single_c8"] == 50.0
