"""Fixtures of the client tests: a port nobody listens on, a small JPEG."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dead_port() -> int:
    """A port nothing listens on: connections are refused at once."""
    return free_port()


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 12), (200, 30, 40)).save(path, format="JPEG")
    return path
