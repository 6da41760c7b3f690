"""How a served model's runner is chosen from its parameters and directory (`ModelContext`): served torch
options are strict about bf16 on a CPU, blip_vision runs ONNX or the checkpoint's vision model, and a trimmed
translator's checkpoint is trimmed as it loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captioning import contract

import fake_pb_utils


@pytest.fixture
def context(monkeypatch, tmp_path):
    fake_pb_utils.install(monkeypatch)
    from captioning.backend.runners import ModelContext

    def make(params: dict[str, str]) -> ModelContext:
        return ModelContext(tmp_path, tmp_path.parent, params, max_batch_size=16)

    return make


def test_served_torch_options_are_strict(context):
    options = context({contract.PARAM_DEVICE: "cpu", contract.PARAM_PRECISION: "bf16"}).torch_options()
    assert options.strict_cpu and (options.device, options.precision) == ("cpu", "bf16")


def test_blip_vision_runs_onnx_by_default_and_the_checkpoint_when_told(
    context, fixture_checkpoints, tmp_path
):
    from captioning.runtime.torch_runner import TorchGraph, load_checkpoint

    with pytest.raises(Exception, match="model.onnx"):  # the default reads the ONNX graph
        context({}).graph_model_runner()
    blip = load_checkpoint("blip", fixture_checkpoints.blip)
    blip.vision_model.save_pretrained(tmp_path / contract.CHECKPOINT_DIR)
    params = {contract.PARAM_VISION_RUNNER: contract.TORCH_RUNNER, contract.PARAM_DEVICE: "cpu"}
    runner = context(params).graph_model_runner()
    assert isinstance(runner, TorchGraph) and runner.input_names == (contract.PIXEL_VALUES,)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    out = runner.run({contract.PIXEL_VALUES: pixels})[contract.IMAGE_EMBEDS]
    assert out.dtype == np.float32 and out.shape[0] == 2
    with pytest.raises(ValueError, match="unknown vision_runner 'tensorrt'"):
        context({contract.PARAM_VISION_RUNNER: "tensorrt"}).graph_model_runner()


def test_a_trimmed_translator_checkpoint_is_trimmed_as_it_loads(context, fixture_checkpoints, tmp_path):
    import shutil

    from captioning.decoding import VocabMap

    shutil.copytree(fixture_checkpoints.mbart, tmp_path / contract.CHECKPOINT_DIR)
    size = json.loads((fixture_checkpoints.mbart / "config.json").read_text())["vocab_size"]
    kept = VocabMap.of([*range(0, size, 2), 1, 3], size)  # every other id, and the special ones
    kept.save(tmp_path / "vocab.json")
    meta = {"checkpoint": {"kind": "mbart", "dir": contract.CHECKPOINT_DIR, "vocab": "vocab.json"}}
    model = context({}).checkpoint(meta)
    assert model.lm_head.out_features == len(kept) == model.final_logits_bias.shape[1]
    assert model.get_encoder().embed_tokens.weight.shape[0] == size  # English input keeps every id
