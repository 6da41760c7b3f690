"""`captioning bench-inflight` plumbing on the fixture translator (benchmarks are not tests): three rows in one
run, every row's tokens equal to batch decoding, merging counted, JSON and plot written."""

from __future__ import annotations

import json

from captioning.bench.inflight import InflightBenchOptions, format_rows, run_inflight_bench


def test_the_inflight_bench_runs_its_three_rows_on_the_fixture(fixture_checkpoints, tmp_path):
    options = InflightBenchOptions(
        translator=str(fixture_checkpoints.mbart),
        threads=1,
        clients=4,
        requests=8,
        beams=2,
        tokens=6,
        output_dir=tmp_path,
    )
    results = run_inflight_bench(options)
    batch, apart, merged = results["rows"]
    assert [row["name"] for row in results["rows"]] == [
        "batch",
        "in-flight, cohorts apart",
        "in-flight, merged",
    ]
    assert all(row["equal_to_batch"] == 8 for row in results["rows"]), format_rows(results)
    assert apart["forward_passes"] == apart["cohort_steps"]  # every cohort its own pass
    assert merged["forward_passes"] < merged["cohort_steps"]  # cohorts of different ages shared passes
    assert batch["x_batch"] == 1.0 and results["merged_x_apart"] > 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"][2]["name"] == "in-flight, merged"
    assert (tmp_path / "inflight.png").stat().st_size > 0
    assert "merged over cohorts apart" in format_rows(results)
