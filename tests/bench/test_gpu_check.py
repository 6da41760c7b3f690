"""The GPU check's plumbing, on this CPU in smoke mode: every part runs and the torch runner is exact here too."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_gpu_check_smoke_on_cpu(fixture_checkpoints, tmp_path):
    from captioning.bench.gpu_check import CheckOptions, format_table, run_check

    report = run_check(CheckOptions.smoke_test(tmp_path / "check.json"))
    assert json.loads((tmp_path / "check.json").read_text())["device"] == "cpu"
    assert {(r["beams"], r["batch"]) for r in report["exactness"]} == {
        (b, n) for b in (1, 3, 5) for n in (1, 4, 16)
    }
    assert all(r["equal"] == r["images"] for r in report["exactness"])
    speed = report["speed"]
    for key in ("original", "generate_b2", "generate_b4", "project_fp32_b2", "project_bf16_b4"):
        assert speed[f"{key}_images_per_s"] > 0
    assert 0 < speed["project_fp32_b4_device_share"] <= 1
    assert 0 <= speed["bf16_b4_captions_equal"] <= 1
    table = format_table(report)
    assert "beams 5  batch 16" in table and "project_bf16_b4" in table
