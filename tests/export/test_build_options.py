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


SHA = "0123456789abcdef0123456789abcdef01234567"


def test_the_manifest_records_the_pinned_revisions(fixture_checkpoints, tmp_path):
    """Pinned revisions land in the manifest; local directories ignore them, so these fixtures still build."""
    import json

    from captioning.export.build import BuildOptions, build_repository

    options = BuildOptions(progress=False, validate=False, captioner_revision="v1.0", translator_revision=SHA)
    repository = build_repository(
        fixture_checkpoints.blip, fixture_checkpoints.mbart, tmp_path / "repo", options
    )
    manifest = json.loads((repository / "manifest.json").read_text())
    assert (manifest["captioner_revision"], manifest["translator_revision"]) == ("v1.0", SHA)


def test_a_hub_checkpoint_is_read_at_its_revision(monkeypatch):
    """Config and weights (and with them the generation config) are read at the revision asked for."""
    import transformers

    from captioning.export.graphs import load_translator

    calls = []

    class Model:
        def num_parameters(self):
            return 1e6

        def eval(self):
            return self

    def config(source, **kwargs):
        calls.append(("config", source, kwargs.get("revision")))
        return transformers.MBartConfig(architectures=["MBartForConditionalGeneration"])

    def weights(source, **kwargs):
        calls.append(("weights", source, kwargs.get("revision")))
        return Model()

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config)
    monkeypatch.setattr(transformers.MBartForConditionalGeneration, "from_pretrained", weights)
    load_translator("someone/mbart", SHA)
    assert calls == [("config", "someone/mbart", SHA), ("weights", "someone/mbart", SHA)]


def test_export_and_trim_vocab_flags_reach_the_options(monkeypatch, tmp_path):
    from captioning.cli import main
    from captioning.export import build, vocab_trim

    seen = {}
    monkeypatch.setattr(
        build, "build_repository", lambda c, t, out, options: seen.setdefault("build", options)
    )
    common = ["export", "--captioner", "org/blip", "--translator", "org/mbart", "--output", str(tmp_path)]
    assert main([*common, "--captioner-revision", "v2", "--translator-revision", SHA]) == 0
    assert (seen["build"].captioner_revision, seen["build"].translator_revision) == ("v2", SHA)
    del seen["build"]
    assert main(common) == 0
    assert (seen["build"].captioner_revision, seen["build"].translator_revision) == (None, None)

    class Vocab:
        full_size = 10

        def __len__(self):
            return 2

        def save(self, path):
            return path

    def derive(translator, corpus, target_lang, pad_to=0, *, revision=None):
        seen["trim"] = revision
        return Vocab()

    monkeypatch.setattr(vocab_trim, "derive_vocab", derive)
    trim = ["trim-vocab", "--translator", "org/mbart", "--output", str(tmp_path / "v.json")]
    assert main([*trim, "--translator-revision", SHA]) == 0
    assert seen["trim"] == SHA
