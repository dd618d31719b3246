"""bench/serve_load.py ``--repeats``: the median and range it reports over repeated runs.

Serving numbers are quoted as the median and the range (min-max) of repeated runs with the
load average, because single runs on a shared machine did not reproduce.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"
_spec = importlib.util.spec_from_file_location("serve_load", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_summary_of_an_odd_count_is_the_middle_value_and_the_extremes():
    assert bench.summarize([472.0, 402.0, 510.0]) == {"median": 472.0, "min": 402.0, "max": 510.0}


def test_summary_of_an_even_count_takes_the_mean_of_the_middle_two():
    assert bench.summarize([539.0, 402.0, 472.0, 510.0]) == {
        "median": 491.0, "min": 402.0, "max": 539.0}


def test_summary_of_one_run_is_that_run():
    assert bench.summarize([12.5]) == {"median": 12.5, "min": 12.5, "max": 12.5}


def test_summary_leaves_out_nan_and_refuses_nothing():
    assert bench.summarize([float("nan"), 3.0, 1.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert all(math.isnan(v) for v in bench.summarize([float("nan")]).values())
    with pytest.raises(ValueError):
        bench.summarize([])


def test_aggregate_summarises_each_measure_sums_counts_and_spans_the_load():
    runs = [
        {"rps": 402.0, "p50_ms": 8.0, "p99_ms": 16.0, "requests": 4020, "errors": 0,
         "load_before": 0.9, "load_after": 1.4},
        {"rps": 472.0, "p50_ms": 7.0, "p99_ms": 12.0, "requests": 4720, "errors": 2,
         "load_before": 1.3, "load_after": 1.1},
    ]
    agg = bench.aggregate(runs)
    assert agg["rps"] == {"median": 437.0, "min": 402.0, "max": 472.0}
    assert agg["p50_ms"] == {"median": 7.5, "min": 7.0, "max": 8.0}
    assert agg["p99_ms"] == {"median": 14.0, "min": 12.0, "max": 16.0}
    assert "events_per_s" not in agg  # wrk's recall runs do not report it
    assert agg["requests"] == 8740 and agg["errors"] == 2
    assert agg["load_1min"] == {"median": pytest.approx(1.2), "min": 0.9, "max": 1.4}


def test_step_row_keeps_single_run_fields_as_medians():
    runs = [{"rps": r, "p50_ms": 1.0, "p99_ms": 2.0, "events_per_s": 0.0, "requests": 10,
             "errors": 0, "load_before": 1.0, "load_after": 1.0} for r in (5.0, 9.0, 7.0)]
    row = bench._row("recall k=200", 4, runs)
    assert row["rps"] == 7.0 and row["rps_range"] == {"median": 7.0, "min": 5.0, "max": 9.0}
    assert row["concurrency"] == 4 and row["runs"] == runs and row["requests"] == 30
    assert bench._span(row["rps_range"], 1) == "7.0 (5.0–9.0)"
