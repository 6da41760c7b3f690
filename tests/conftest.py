"""Shared fixtures: real data from ../shared/data and the small offline checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def data_dir() -> Path:
    return Path(os.environ.get("CAPTIONING_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if not (path / "flickr8k" / "Images").is_dir():
        pytest.skip(f"shared data not found at {path} (set CAPTIONING_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def flickr_images(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "flickr8k" / "Images").glob("*.jpg"))


@pytest.fixture(scope="session")
def fixture_checkpoints(shared_data: Path):
    from captioning.testing.fixtures import cached_fixtures

    return cached_fixtures()
