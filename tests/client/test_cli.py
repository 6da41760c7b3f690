"""The `caption` command line: parsing, output formats, and exit codes against a server that is not there."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captioning.client import CaptionResult, GenerationOptions, cli

ROOT = Path(__file__).resolve().parents[2]


def test_cli_parses_options() -> None:
    args = cli.parse_args(
        ["a.jpg", "b.png", "--url", "http://h:8000", "--lang", "en", "--caption-beams", "3"]
        + ["--translation-max-new-tokens", "12", "--timeout", "2.5", "--json"]
    )
    assert args.images == ["a.jpg", "b.png"] and args.url == "http://h:8000" and args.lang == "en"
    assert args.json and args.timeout == 2.5
    assert cli.options_from_args(args) == GenerationOptions(
        caption_num_beams=3, translation_max_new_tokens=12
    )
    text = cli.parse_args(["--text", "a cat", "--text", "a dog"])
    assert text.text == ["a cat", "a dog"] and text.images == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["a.jpg", "--text", "hi"],
        ["a.jpg", "--caption-beams", "0"],
        ["a.jpg", "--lang", "fr"],
        ["a.jpg", "--timeout", "-1"],
    ],
)
def test_cli_rejects_bad_command_lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_formats_results() -> None:
    result = CaptionResult("a dog\truns", "كلب يجري", "x.jpg", 0.25)
    assert cli.format_result(result, "both", False) == "x.jpg\ta dog runs\tكلب يجري"
    assert cli.format_result(result, "ar", False) == "x.jpg\tكلب يجري"
    assert cli.format_result(result, "en", False) == "x.jpg\ta dog runs"
    assert json.loads(cli.format_result(result, "both", True)) == {
        "english": "a dog\truns",
        "arabic": "كلب يجري",
        "source": "x.jpg",
        "latency_s": 0.25,
    }


def test_cli_unreachable_is_one_message_exit_2(dead_port: int, jpeg: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(jpeg), str(jpeg), "--url", f"127.0.0.1:{dead_port}"], stdout=out, stderr=err)
    assert code == 2 and out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and "cannot reach Triton" in lines[0] and str(dead_port) in lines[0]


def test_cli_missing_files_exit_1_naming_each(dead_port: int, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    code = cli.main([*paths, "--url", f"http://127.0.0.1:{dead_port}"], stdout=out, stderr=err)
    assert code == 1 and out.getvalue() == ""
    assert err.getvalue().splitlines() == [f"caption: {p}: no such file" for p in paths]


def test_cli_script_exits_2_quickly_when_unreachable(dead_port: int) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "captioning.client.cli", "--text", "a cat", "--url", f"127.0.0.1:{dead_port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach Triton" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 30
