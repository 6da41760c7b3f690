"""Repository-wide stage defaults (`Overrides`) layered over a checkpoint's generation settings."""

from __future__ import annotations

from pathlib import Path

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


def test_bf16_on_a_cpu_runs_on_the_torch_runner_and_refuses_a_contradicting_runner():
    from captioning.export.build import BuildOptions, implied_runner
    from captioning.export.repository import RepositoryOptions

    def options(runner: str, **kwargs) -> BuildOptions:
        return BuildOptions(repository=RepositoryOptions(decoder_runner=runner), **kwargs)

    assert implied_runner("cpu", "bf16") == "torch"
    assert implied_runner("cpu", "int8") == implied_runner("gpu", "bf16") == "inprocess"
    options("torch", precision="bf16").validate_options()
    options("torch", precision="bf16", translator_vocab=Path("kept.json")).validate_options()
    options("torch", translator_vocab=Path("kept.json")).validate_options()  # trimmed, exact otherwise
    for runner in ("bls", "inprocess"):
        with pytest.raises(
            ValueError, match=f"implies --decoder-runner torch\\): drop --decoder-runner {runner}"
        ):
            options(runner, precision="bf16").validate_options()
    with pytest.raises(ValueError, match="int8 is an ONNX Runtime mode"):
        options("torch", precision="int8").validate_options()
    with pytest.raises(ValueError, match="torch_precision bf16 needs decoder_runner torch"):
        RepositoryOptions(torch_precision="bf16").validate()


def test_the_cli_implies_the_torch_runner_for_bf16_on_a_cpu(monkeypatch, tmp_path):
    from captioning.cli import main
    from captioning.export import build

    seen = []
    monkeypatch.setattr(build, "build_repository", lambda c, t, out, options: seen.append(options))
    common = ["export", "--captioner", "org/blip", "--translator", "org/mbart", "--output", str(tmp_path)]
    assert main([*common, "--precision", "bf16", "--inflight", "--cpu-slots", "auto"]) == 0
    assert main([*common, "--precision", "int8"]) == 0
    assert main([*common, "--precision", "bf16", "--decoder-runner", "bls"]) == 0
    assert [o.repository.decoder_runner for o in seen] == ["torch", "inprocess", "bls"]
    assert seen[0].repository.inflight and seen[0].repository.cpu_slots == "auto"
    with pytest.raises(ValueError, match="drop --decoder-runner bls"):
        seen[2].validate_options()


def test_a_bf16_trimmed_cpu_repository_carries_the_checkpoints_and_warns_on_a_slow_cpu(
    fixture_checkpoints, tmp_path, monkeypatch, caplog
):
    import json
    import logging

    from captioning import contract
    from captioning.decoding import VocabMap
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.model_config import read_config
    from captioning.export.repository import RepositoryOptions
    from captioning.runtime import cpu_flags

    size = json.loads((fixture_checkpoints.mbart / "config.json").read_text())["vocab_size"]
    kept = VocabMap.of([*range(2000), *range(4000, size)], size).save(
        tmp_path / "kept.json"
    )  # + language codes
    monkeypatch.setattr(cpu_flags, "read_flags", lambda path=cpu_flags.CPUINFO: frozenset({"avx2"}))
    options = BuildOptions(
        progress=False,
        validate=False,
        precision="bf16",
        translator_vocab=kept,
        repository=RepositoryOptions(decoder_runner="torch", inflight=True, cpu_slots="auto"),
    )
    with caplog.at_level(logging.WARNING):
        repo = build_repository(
            fixture_checkpoints.blip, fixture_checkpoints.mbart, tmp_path / "repo", options
        )
    assert "flags lack amx_bf16 and avx512_bf16: the bf16 repository will refuse to load" in caplog.text

    def params(model: str) -> dict[str, str]:
        config = read_config(repo / model / "config.pbtxt")
        return {key: value.string_value for key, value in config.parameters.items()}

    for model in (contract.VISION_MODEL, contract.CAPTION_MODEL, contract.TRANSLATOR_MODEL):
        assert (params(model)[contract.PARAM_DEVICE], params(model)[contract.PARAM_PRECISION]) == (
            "cpu",
            "bf16",
        )
        assert params(model)[contract.PARAM_CPU_SLOTS] == "auto"
    assert params(contract.VISION_MODEL)[contract.PARAM_VISION_RUNNER] == "torch"
    assert params(contract.TRANSLATOR_MODEL)[contract.PARAM_INFLIGHT] == "1"
    vision = repo / contract.VISION_MODEL / "1"
    assert (
        json.loads((vision / "checkpoint" / "config.json").read_text())["model_type"] == "blip_vision_model"
    )
    translator = repo / contract.TRANSLATOR_MODEL / "1"
    graphs = json.loads((translator / "graphs.json").read_text())
    assert graphs == {"checkpoint": {"kind": "mbart", "dir": "checkpoint", "vocab": "vocab.json"}}
    # the checkpoint stays whole (the runner trims it as it loads); vocab.json maps positions back to ids
    assert json.loads((translator / "checkpoint" / "config.json").read_text())["vocab_size"] == size
    assert VocabMap.load(translator / "vocab.json") == VocabMap.load(kept)
    assert not list(translator.glob("*.onnx"))
    assert json.loads((repo / "manifest.json").read_text())["precision"] == "bf16"
