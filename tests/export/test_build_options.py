"""Repository-wide stage defaults (`Overrides`) layered over a checkpoint's generation settings."""

from __future__ import annotations

import pytest

from captioning.decoding import GenerationSettings, Overrides

BASE = GenerationSettings(prompt_ids=(2,), eos_token_ids=(2,), pad_token_id=1, max_length=64, num_beams=5)


def test_no_overrides_keep_the_checkpoint_settings():
    assert BASE.with_overrides(Overrides()) == BASE


def test_fixed_length_for_benchmarks():
    settings = BASE.with_overrides(Overrides(num_beams=3, max_new_tokens=24, min_new_tokens=24))
    assert (settings.num_beams, settings.max_length, settings.min_length) == (3, 25, 25)


def test_invalid_override_is_named():
    with pytest.raises(ValueError, match="num_beams"):
        BASE.with_overrides(Overrides(num_beams=0))


def test_exported_repository_carries_the_stage_defaults(fixture_checkpoints, tmp_path):
    import json

    from captioning.export.build import BuildOptions, build_repository

    options = BuildOptions(
        progress=False,
        validate=False,
        caption=Overrides(num_beams=3, max_new_tokens=20, min_new_tokens=20),
        translation=Overrides(num_beams=5, max_new_tokens=24, min_new_tokens=24),
    )
    repository = build_repository(
        fixture_checkpoints.blip, fixture_checkpoints.mbart, tmp_path / "repo", options
    )
    caption = json.loads((repository / "caption_generator" / "1" / "generation.json").read_text())
    translation = json.loads((repository / "translator" / "1" / "generation.json").read_text())
    assert (caption["num_beams"], caption["min_length"], caption["max_length"]) == (3, 21, 21)
    assert (translation["num_beams"], translation["min_length"], translation["max_length"]) == (5, 25, 25)
