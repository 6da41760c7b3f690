"""LoRA through PEFT (`--lora-rank`, training/lora.py) on the fixture checkpoints: only adapter weights train,
the merged checkpoint is a plain `from_pretrained` model that generates what the PEFT model generates, a stopped
and resumed LoRA run equals an uninterrupted one, the documented trainable-parameter counts hold for the real
architectures, and (integration) both the merged checkpoint and the adapter directory export, and the served
tokens equal `generate()` on the merged checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioning.training.lora import LORA_TARGETS, LoraOptions
from captioning.training.train_args import TrainConfig

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

RANK = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(output: Path, **overrides) -> TrainConfig:
    settings = dict(output=output, batch_size=4, lr=1e-3, max_steps=3, padding="longest", dev_sample=2)
    settings.update(overrides)
    return TrainConfig(progress=False, **settings)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _train_blip(fixture_checkpoints, flickr_subset, output: Path, **overrides) -> Path:
    from captioning.training.captioner import CaptionerData, train_captioner

    data = CaptionerData(root=flickr_subset(output.parent / f"{output.name}-data", 2))
    train_captioner(
        fixture_checkpoints.blip, data, _config(output, **overrides), LoraOptions(RANK, dropout=0)
    )
    return output


def _train_mbart(fixture_checkpoints, shared_data, output: Path, **overrides) -> Path:
    from captioning.training.translator import TranslatorData, train_translator

    pairs = TranslatorData(shared_data / "tatoeba_ara_eng" / "ara.txt", held_out=0.25, limit_pairs=16)
    train_translator(fixture_checkpoints.mbart, pairs, _config(output, **overrides), LoraOptions(RANK))
    return output


@pytest.fixture(scope="module")
def blip_run(fixture_checkpoints, flickr_subset, tmp_path_factory) -> Path:
    return _train_blip(fixture_checkpoints, flickr_subset, tmp_path_factory.mktemp("lora") / "blip")


def _pixels(fixture_checkpoints, shared_data, count: int = 2):
    from PIL import Image
    from transformers import BlipProcessor

    processor = BlipProcessor.from_pretrained(fixture_checkpoints.blip)
    paths = sorted((shared_data / "flickr8k" / "Images").glob("*.jpg"))[:count]
    return processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt").pixel_values


def test_only_the_adapter_trains_and_the_merged_checkpoint_is_its_merge(
    blip_run, fixture_checkpoints, shared_data
):
    from peft import PeftModel
    from transformers import BlipForConditionalGeneration

    for checkpoint in ("best", "last"):
        adapter = blip_run / checkpoint / "adapter"
        assert (adapter / "adapter_model.safetensors").is_file()
        assert (adapter / "preprocessor_config.json").is_file()  # export reads the processor from here
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(fixture_checkpoints.blip.resolve())
        assert config["r"] == RANK and config["lora_alpha"] == 2 * RANK
    trained = _weights(blip_run / "last" / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in trained.items())  # B starts at 0
    original = _weights(fixture_checkpoints.blip / "model.safetensors")
    merged = _weights(blip_run / "last" / "model.safetensors")
    assert merged.keys() == original.keys()
    changed = {k for k in original if not torch.equal(original[k], merged[k])}
    assert changed and all(k.endswith(("query.weight", "value.weight", "qkv.weight")) for k in changed)
    # The base weights did not move in training: PEFT's own merge of the saved adapter onto the original base
    # is the merged checkpoint bit for bit (a drifted base weight would differ).
    base = BlipForConditionalGeneration.from_pretrained(fixture_checkpoints.blip)
    peft_model = PeftModel.from_pretrained(base, str(blip_run / "last" / "adapter")).eval()
    pixels = _pixels(fixture_checkpoints, shared_data)
    with torch.no_grad():
        expected = peft_model.generate(pixels, max_length=64)
    reference = peft_model.merge_and_unload().state_dict()
    assert all(torch.equal(reference[k], merged[k]) for k in merged)
    plain = BlipForConditionalGeneration.from_pretrained(blip_run / "last").eval()
    with torch.no_grad():
        assert torch.equal(plain.generate(pixels, max_length=64), expected)


def test_export_merges_an_adapter_directory_into_the_saved_merged_weights(blip_run, tmp_path, caplog):
    from captioning.export.adapters import is_adapter, merge_adapter
    from captioning.export.graphs import load_captioner

    adapter = blip_run / "best" / "adapter"
    assert is_adapter(adapter) and not is_adapter(blip_run / "best")
    with caplog.at_level("INFO", logger="captioning.export.adapters"):
        out = merge_adapter(adapter, load_captioner, tmp_path / "merged")
    assert f"{adapter} is a LoRA adapter: merged onto" in caplog.text
    expected, found = _weights(blip_run / "best" / "model.safetensors"), _weights(out / "model.safetensors")
    assert found.keys() == expected.keys() and all(torch.equal(found[k], expected[k]) for k in found)
    assert (out / "preprocessor_config.json").is_file() and (out / "tokenizer.json").is_file()


def test_a_resumed_lora_run_equals_an_uninterrupted_one(fixture_checkpoints, shared_data, tmp_path):
    """mBART with LoRA dropout on: the adapter, optimizer and RNG state all come back from last/."""
    full = _train_mbart(fixture_checkpoints, shared_data, tmp_path / "full", max_steps=4)
    resumed = _train_mbart(
        fixture_checkpoints, shared_data, tmp_path / "resumed", max_steps=4, stop_at_step=2
    )
    assert json.loads((resumed / "metrics.json").read_text())["step"] == 2
    _train_mbart(fixture_checkpoints, shared_data, resumed, max_steps=4, resume=True)
    losses = [json.loads((run / "metrics.json").read_text())["train_loss"] for run in (full, resumed)]
    assert [s for s, _ in losses[1]] == [1, 2, 3, 4]
    assert [v for _, v in losses[1]] == pytest.approx([v for _, v in losses[0]], rel=1e-6)
    for name in ("adapter/adapter_model.safetensors", "model.safetensors"):
        a, b = _weights(full / "last" / name), _weights(resumed / "last" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


def test_targets_options_and_dev_samples(fixture_checkpoints, shared_data, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import MBartForConditionalGeneration

    from captioning.cli import build_parser
    from captioning.training.lora import lora_options_from_args
    from captioning.training.translator import TranslatorData, TranslatorTask

    argv = ["train-captioner", "--data", "d", "--output", "o", "--lora-rank", "8", "--lora-dropout", "0.1"]
    assert lora_options_from_args(build_parser().parse_args(argv)) == LoraOptions(8, None, 0.1)
    assert LoraOptions(8).scaled_alpha == 16 and LoraOptions(8, alpha=4).scaled_alpha == 4
    assert not lora_options_from_args(build_parser().parse_args(argv[:5])).enabled
    with pytest.raises(ValueError, match="rank"):
        LoraOptions(-1).validate()
    mbart = MBartForConditionalGeneration.from_pretrained(fixture_checkpoints.mbart)
    wrapped = get_peft_model(mbart, LoraConfig(r=RANK, target_modules=LORA_TARGETS["mbart"]))
    adapted = {n.split("base_model.model.", 1)[1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert len(adapted) == 2 * 2 + 2 * 4  # encoder self q/v, decoder self and cross q/v, 2 layers each
    assert "model.decoder.layers.1.encoder_attn.v_proj" in adapted
    pairs = TranslatorData(shared_data / "tatoeba_ara_eng" / "ara.txt", held_out=0.25, limit_pairs=8)
    task = TranslatorTask(fixture_checkpoints.mbart, pairs, _config(tmp_path, dev_sample=3))
    with torch.no_grad():
        scores = task.dev_metrics(mbart.eval(), torch.device("cpu"))
    assert "chrF" in scores and len(task.last_samples) == 2  # the 2 held-out pairs of 8
    assert [ref for ref, _ in task.last_samples] == [p.target for p in task.dev[:2]]
    assert all(isinstance(hyp, str) for _, hyp in task.last_samples)


# BLIP-base and mBART-large-50 dimensions, as docs/training.md ("LoRA") counts them.
BLIP_BASE = dict(
    text_config=dict(hidden_size=768, encoder_hidden_size=768, intermediate_size=3072, num_hidden_layers=12),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, image_size=384),
)
MBART_LARGE_50 = dict(
    vocab_size=250054, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_ffn_dim=4096,
    decoder_ffn_dim=4096, max_position_embeddings=1024,
)  # fmt: skip


@pytest.mark.parametrize(
    ("family", "counts"),
    [("blip", {8: 884_736, 16: 1_769_472}), ("mbart", {8: 1_179_648, 16: 2_359_296})],
)
def test_documented_trainable_parameter_counts(family, counts):
    """The counts in docs/training.md are r x (in + out) summed over the targets; PEFT agrees on the real
    architectures (built on the meta device: shapes only)."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        MBartConfig,
        MBartForConditionalGeneration,
    )

    if family == "blip":
        per_rank = 12 * (768 + 3 * 768) + 12 * 4 * (768 + 768)  # vision qkv; decoder self/cross query, value
        build = lambda: BlipForConditionalGeneration(BlipConfig(**BLIP_BASE))  # noqa: E731
    else:
        per_rank = (12 * 2 + 12 * 4) * (1024 + 1024)  # encoder q/v; decoder self and cross q/v
        build = lambda: MBartForConditionalGeneration(MBartConfig(**MBART_LARGE_50))  # noqa: E731
    for rank, count in counts.items():
        assert per_rank * rank == count
        with torch.device("meta"):
            model = get_peft_model(build(), LoraConfig(r=rank, target_modules=LORA_TARGETS[family]))
        assert model.get_nb_trainable_parameters()[0] == count


@pytest.mark.parametrize(("rank", "logged"), [("0", True), ("1", False)])
def test_only_the_main_process_logs_the_trainable_parameters(monkeypatch, caplog, rank, logged):
    """Every rank wraps the same adapter; a launch of eight processes logs the count once (RANK: torchrun's
    and accelerate's)."""
    from captioning.training import lora

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.v_proj = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    monkeypatch.setenv("RANK", rank)
    with caplog.at_level("INFO", logger="captioning.training.lora"):
        wrapped = lora.wrap(Tiny(), "mbart", LoraOptions(2), "tiny", None)
    assert wrapped.get_nb_trainable_parameters()[0] == 2 * 2 * (4 + 4)  # two Linear(4, 4), rank 2
    assert ("LoRA: 32 of 72 parameters trainable" in caplog.text) is logged, caplog.text


@pytest.mark.integration
def test_merged_and_adapter_checkpoints_export_and_serve_like_generate(
    blip_run, fixture_checkpoints, shared_data, flickr_images, tmp_path
):
    from captioning.client import CaptionClient
    from captioning.export.build import BuildOptions, build_repository
    from captioning.testing.fixtures import FixturePaths

    from serving_helpers import Reference, assert_all_equal, serve

    mbart_run = _train_mbart(fixture_checkpoints, shared_data, tmp_path / "mbart")
    options = BuildOptions(progress=False, validate=False)
    merged = build_repository(blip_run / "best", mbart_run / "best", tmp_path / "merged", options)
    adapters = build_repository(
        blip_run / "best" / "adapter", mbart_run / "best" / "adapter", tmp_path / "adapters", options
    )
    for repository in (merged, adapters):
        assert sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    manifest = (adapters / "manifest.json").read_text()
    assert str(blip_run / "best" / "adapter") in manifest
    images = [path.read_bytes() for path in flickr_images[:2]]
    with serve(adapters, tmp_path) as server, CaptionClient(server.grpc_url, timeout_s=300) as client:
        results = client.caption_batch(images)
    reference = Reference(FixturePaths(blip=blip_run / "best", mbart=mbart_run / "best"))
    expected = [reference.both(data) for data in images]
    assert_all_equal([(r.english, e[0]) for r, e in zip(results, expected, strict=True)], "English captions")
    assert_all_equal([(r.arabic, e[1]) for r, e in zip(results, expected, strict=True)], "Arabic captions")
