"""Run import-linter over the `captioning` package as it installs: its sub-packages map from the top level.

`captioning.export`, `captioning.client` and `captioning.training` live in `export/`, `client/` and `training/`
(pyproject's `package-dir`). import-linter walks only the directory of the package it imports, so this lays the
mapped directories out as one package tree under build/ and runs `lint-imports` there with the project's
contracts. Arguments are passed on to `lint-imports` (a `.toml` file in place of pyproject's contracts).

    python scripts/lint_imports.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "import-graph"


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Dotted package name -> its source directory, as pyproject maps them."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return {name: root / path for name, path in config["tool"]["setuptools"]["package-dir"].items()}


def stage(target: Path = STAGE) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    for name, source in sorted(package_dirs().items()):  # parents before children
        shutil.copytree(
            source,
            target.joinpath(*name.split(".")),
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    return target


def main(argv: list[str]) -> int:
    if not any(arg.endswith(".toml") or arg.endswith(".ini") for arg in argv):
        argv = [str(ROOT / "pyproject.toml"), *argv]
    binary = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    staged = stage()
    # Run from the staged tree, so that `captioning` imports from there rather than from the checkout.
    env = {**os.environ, "PYTHONPATH": str(staged)}
    return subprocess.run([binary, "--no-cache", *argv], cwd=staged, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
