"""Checkpoints for the torch runner's tests: the models a runner serves, and separate ones for `generate()`."""

from __future__ import annotations

import pytest


def _load(fixture_checkpoints):
    from captioning.runtime.torch_runner import load_checkpoint

    return load_checkpoint("blip", fixture_checkpoints.blip), load_checkpoint(
        "mbart", fixture_checkpoints.mbart
    )


@pytest.fixture(scope="module")
def models(fixture_checkpoints):
    """The (BLIP, mBART) a runner serves: it takes ownership (on a CPU it packs their linear layers)."""
    return _load(fixture_checkpoints)


@pytest.fixture(scope="module")
def reference_models(fixture_checkpoints):
    """A (BLIP, mBART) of their own for `generate()`, untouched by any runner."""
    return _load(fixture_checkpoints)
