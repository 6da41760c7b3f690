"""Repository-wide stage defaults layered over a checkpoint's generation settings."""

from __future__ import annotations

import pytest

from captioning.export.build import StageDefaults
from captioning.generation import GenerationSettings

BASE = GenerationSettings(prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=64, num_beams=5)


def test_no_overrides_keep_the_checkpoint_settings():
    assert StageDefaults().apply(BASE) == BASE


def test_fixed_length_for_benchmarks():
    settings = StageDefaults(num_beams=3, max_new_tokens=24, min_new_tokens=24).apply(BASE)
    assert (settings.num_beams, settings.max_length, settings.min_length) == (3, 25, 25)


def test_invalid_override_is_named():
    with pytest.raises(ValueError, match="num_beams"):
        StageDefaults(num_beams=0).apply(BASE)
