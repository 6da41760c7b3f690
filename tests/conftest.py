"""Shared fixtures: real data from ../shared/data and the small offline checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving_helpers import Reference, serve

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


# A real tritonserver on free ports serving a repository exported from the fixture checkpoints, and the
# `transformers` references the served captions must equal (integration tests in every package use them).
@pytest.fixture(scope="session")
def repository(fixture_checkpoints, tmp_path_factory) -> Path:
    from captioning.export.build import BuildOptions, build_repository

    output = tmp_path_factory.mktemp("export") / "repository"
    return build_repository(
        fixture_checkpoints.blip, fixture_checkpoints.mbart, output, BuildOptions(progress=False)
    )


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    with serve(repository, tmp_path_factory.mktemp("server")) as running:
        yield running
    assert running.process is not None and running.process.returncode is not None


@pytest.fixture(scope="session")
def reference(fixture_checkpoints) -> Reference:
    return Reference(fixture_checkpoints)


@pytest.fixture(scope="session")
def image_bytes(flickr_images) -> list[bytes]:
    return [p.read_bytes() for p in flickr_images[:50]]


@pytest.fixture(scope="session")
def bls_server(fixture_checkpoints, tmp_path_factory):
    """The same checkpoints with generators that reach every graph through Triton (BLS), as GPU nodes do."""
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.repository import RepositoryOptions

    output = tmp_path_factory.mktemp("export-bls") / "repository"
    options = BuildOptions(progress=False, repository=RepositoryOptions(decoder_runner="bls"))
    repository = build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, output, options)
    with serve(repository, tmp_path_factory.mktemp("server-bls")) as running:
        yield running


@pytest.fixture
def one_torch_thread():
    """Training tests on one thread: two test processes on two cores otherwise oversubscribe them."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def flickr_subset(shared_data: Path):
    """`make(root, count)`: a Flickr8k-layout folder of symlinks, `count` present train and dev images each."""

    def make(root: Path, count: int) -> Path:
        flickr = shared_data.resolve() / "flickr8k"
        (root / "Images").mkdir(parents=True)
        wanted = set()
        for split in ("train", "dev"):
            names = (flickr / f"Flickr_8k.{split}Images.txt").read_text().split()
            names = [n for n in names if (flickr / "Images" / n).is_file()][:count]
            (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
            wanted.update(names)
        lines = (flickr / "captions.txt").read_text(encoding="utf-8").splitlines()
        kept = [lines[0], *(line for line in lines[1:] if line.split(",", 1)[0] in wanted)]
        (root / "captions.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
        for name in wanted:
            (root / "Images" / name).symlink_to(flickr / "Images" / name)
        return root

    return make
