"""A real tritonserver on free ports serving a repository exported from the offline fixture checkpoints,
and the `transformers` references the served captions must equal."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving_helpers import Reference, serve


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
