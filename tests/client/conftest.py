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


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory):
    """A CA, server and client certificates it signed, and an unrelated CA (made with openssl)."""
    import shutil

    from fake_triton import make_certificates

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (it makes the test certificates)")
    return make_certificates(tmp_path_factory.mktemp("certs"))
