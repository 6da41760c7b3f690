"""Bandit over the package sources: no issue of medium severity or higher, every `# nosec` justified, and a
planted insecure file is caught (so the check can fail).

The package directories are those `pyproject.toml` maps into `captioning` (`[tool.setuptools.package-dir]`);
bandit reads its settings from `[tool.bandit]` there (`-c pyproject.toml`), as `make lint` does.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
BANDIT = Path(sys.executable).parent / "bandit"
MIN_BANDIT = (1, 9, 4)  # the first that accepts `revision=<variable>` for B615
# `# nosec B615 - reason` (the project's form) or `# nosec B615 # reason`; several ids: `B603, B607` (bandit
# reads only the last of `B603,B607`, which the check below catches).
NOSEC = re.compile(r"#\s*nosec\b:?(?P<rest>.*)")
JUSTIFIED = re.compile(r"^\s*(?P<ids>B\d{3}(?:\s*,\s*B\d{3})*)\s+[-#]\s*(?P<reason>\S.*\S)\s*$")


def package_dirs() -> list[str]:
    mapped = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    return sorted(set(mapped.values()))


def _bandit(*targets: str | Path) -> dict:
    if not BANDIT.is_file():
        pytest.fail(
            f"bandit is not installed in {BANDIT.parent}: it is part of the [dev] extra "
            "(pip install -e '.[dev]', or `make install`)"
        )
    version = tuple(int(part) for part in importlib.metadata.version("bandit").split(".")[:3])
    assert version >= MIN_BANDIT, (
        f"bandit {'.'.join(map(str, version))} is older than the [dev] extra's "
        f"{'.'.join(map(str, MIN_BANDIT))}: reinstall the [dev] extra"
    )
    command = [str(BANDIT), "-c", str(PYPROJECT), "-r", *map(str, targets), "-ll", "-q", "-f", "json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode not in (0, 1):  # 1: issues found
        pytest.fail(f"bandit failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _finding(result: dict) -> str:
    return (
        f"{result['filename']}:{result['line_number']}: {result['test_id']} "
        f"[{result['issue_severity']}] {result['issue_text']}"
    )


def test_bandit_finds_no_issue_in_the_package_sources():
    report = _bandit(*package_dirs())
    findings = [_finding(result) for result in report["results"]]
    for line in findings:
        print(line)
    assert report["metrics"]["_totals"]["loc"] > 1000, "bandit scanned next to nothing: check the targets"
    assert not findings, (
        "bandit (medium severity and up) reports:\n"
        + "\n".join(findings)
        + "\nfix them, or where the code is safe mark the line `# nosec BXXX - <specific reason>`"
    )


def nosec_problems(source: str, name: str = "<source>") -> list[str]:
    """Every `# nosec` comment that does not name its test ids and give a reason on the same line, or whose
    reason bandit would read as further tests (a reason word that is a test name widens the suppression)."""
    try:
        from bandit.core import manager
    except ImportError:
        pytest.fail("bandit is not installed: it is part of the [dev] extra (pip install -e '.[dev]')")
    problems = []
    comments = (
        t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT
    )
    for token in comments:
        match = NOSEC.search(token.string)
        if match is None:
            continue
        where = f"{name}:{token.start[0]}: {token.string.strip()}"
        justified = JUSTIFIED.match(match.group("rest"))
        if justified is None:
            problems.append(f"{where}: name the test id(s) and a reason, `# nosec BXXX - <reason>`")
            continue
        written = set(re.findall(r"B\d{3}", justified.group("ids")))
        skipped = manager._parse_nosec_comment(token.string)  # what bandit itself will skip on that line
        if skipped != written:
            problems.append(f"{where}: bandit reads it as skipping {sorted(skipped or ['every test'])}")
    return problems


def test_every_nosec_names_a_test_and_a_reason():
    problems, marks = [], 0
    for directory in package_dirs():
        for path in sorted((ROOT / directory).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            marks += source.count("nosec")
            problems += nosec_problems(source, str(path.relative_to(ROOT)))
    assert marks, "no # nosec found at all: is the scan looking at the package sources?"
    assert not problems, "\n".join(problems)


def test_the_nosec_check_refuses_bare_and_unexplained_marks():
    source = (
        "a = 1  # nosec\n"
        "b = 2  # nosec B108\n"
        "c = 3  # nosec - a reason but no test id\n"
        "d = 4  # nosec B615 - assert_used is a test name, so bandit skips it too\n"
        "e = 5  # nosec B615 - a local directory, local_files_only\n"
        "f = 6  # nosec B603, B607 # fixed argument list, no shell\n"
        "g = 7  # nosec B603,B607 - without the space bandit reads only the last id\n"
    )
    problems = nosec_problems(source)
    assert [p.split(":")[1] for p in problems] == ["1", "2", "3", "4", "7"], problems


def test_a_planted_insecure_file_is_reported():
    planted = (
        "import subprocess\n"
        "\n"
        "import torch\n"
        "from transformers import AutoModel\n"
        "\n"
        "\n"
        "def run(command, path):\n"
        "    subprocess.call(command, shell=True)\n"
        "    model = AutoModel.from_pretrained('someone/model')\n"
        "    return model, torch.load(path)\n"
    )
    # Outside the repository: [tool.bandit]'s excluded directories must not hide it.
    with tempfile.TemporaryDirectory(prefix="bandit-planted-") as tmp:
        (Path(tmp) / "insecure.py").write_text(planted)
        report = _bandit(tmp)
    found = {result["test_id"] for result in report["results"]}
    assert {"B602", "B614", "B615"} <= found, [_finding(r) for r in report["results"]]
