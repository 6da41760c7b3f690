"""A plain, non-editable `pip install .` exports and serves: what the container image does.

The project is installed into a fresh virtual environment from a copy of its sources; its dependencies come
from the development environment (a path entry, so nothing is downloaded again and the development install of
this project stays inactive there). Then `captioning export` and `captioning serve` run from that environment,
outside the checkout, and the served captions equal `generate()`'s.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from captioning.client import CaptionClient
from captioning.server.launcher import free_port

from serving_helpers import Reference, assert_all_equal

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from lint_imports import package_dirs  # noqa: E402 - pyproject's package map

pytestmark = pytest.mark.integration


def _site_packages(env: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with the project installed from a copy of its sources, not editable."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    for directory in package_dirs(ROOT).values():  # captioning/ and the top-level folders mapped into it
        target = source / directory.relative_to(ROOT)
        shutil.copytree(directory, target, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    env = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env)  # no bundled setuptools to shadow the development one
    (_site_packages(env) / "development-dependencies.pth").write_text(
        str(_site_packages(Path(sys.prefix))) + "\n"
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--quiet", "--no-deps",
         "--no-build-isolation", str(source)],
        check=True, cwd=work, timeout=300,
    )  # fmt: skip
    shutil.rmtree(source)  # nothing may be found through the sources any more
    return env


def _run(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(env / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_installed_package_is_used(installed, tmp_path):
    found = _run(installed, "python", "-c", "import captioning; print(captioning.__file__)", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed), found.stdout
    tree = _site_packages(installed) / "captioning" / "model_repository"
    assert sorted(p.parent.parent.name for p in tree.glob("*/1/model.py")) == sorted(
        p.parent.parent.name for p in (ROOT / "model_repository").glob("*/1/model.py")
    )
    assert sorted(p.parent.name for p in tree.glob("*/config.pbtxt")) == sorted(
        p.parent.name for p in (ROOT / "model_repository").glob("*/config.pbtxt")
    )
    for package in ("export", "client", "training"):
        assert (_site_packages(installed) / "captioning" / package / "__init__.py").is_file()


def test_export_and_serve_from_a_plain_install(installed, fixture_checkpoints, flickr_images, tmp_path):
    repository = tmp_path / "repository"
    export = _run(
        installed,
        "captioning",
        "export",
        "--captioner", str(fixture_checkpoints.blip),
        "--translator", str(fixture_checkpoints.mbart),
        "--output", str(repository),
        "--no-validate",
        "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert export.returncode == 0, export.stdout + export.stderr
    assert (repository / "translator" / "1" / "model.py").read_bytes() == (
        ROOT / "model_repository" / "translator" / "1" / "model.py"
    ).read_bytes()

    http, grpc, metrics = free_port(), free_port(), free_port()
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [str(installed / "bin" / "captioning"), "serve", "--repository", str(repository),
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    try:
        images = [p.read_bytes() for p in flickr_images[:4]]
        with CaptionClient(f"localhost:{grpc}", wait_ready_s=240, timeout_s=120) as client:
            results = client.caption_batch(images)
        reference = Reference(fixture_checkpoints)
        expected = [reference.both(data) for data in images]
        assert_all_equal(
            [((r.english, r.arabic), e) for r, e in zip(results, expected, strict=True)], "captions"
        )
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            code = serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            code = serve.wait()
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
