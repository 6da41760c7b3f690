"""`captioning export --target gpu`: configs through Triton's schema, the fp16 vision graph, and the torch-runner
generators of that repository run on this machine's CPU through the real adapters (fake Triton stub utils)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from captioning import contract
from captioning.export.model_config import read_config

import fake_pb_utils
from fake_pb_utils import FakeRequest
from serving_helpers import Reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpu_repositories(fixture_checkpoints, tmp_path_factory) -> dict[str, Path]:
    from captioning.export.build import BuildOptions, build_repository

    out = {}
    for precision in ("fp32", "fp16"):
        options = BuildOptions(target="gpu", precision=precision, validate=False, progress=False)
        path = tmp_path_factory.mktemp(f"gpu-{precision}") / "repository"
        out[precision] = build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, path, options)
    return out


def _configs(repository: Path) -> dict:
    return {p.parent.name: read_config(p) for p in repository.glob("*/config.pbtxt")}


def test_gpu_configs_parse_and_name_the_gpu(gpu_repositories):
    configs = _configs(gpu_repositories["fp32"])
    assert set(configs) == {
        contract.PREPROCESS_MODEL, contract.VISION_MODEL, contract.CAPTION_MODEL, contract.TRANSLATOR_MODEL,
        contract.ENGLISH_MODEL, contract.ARABIC_MODEL,
    }  # fmt: skip
    kind = {name: [g.kind for g in c.instance_group] for name, c in configs.items()}
    gpu = 1  # ModelInstanceGroup.KIND_GPU
    assert (
        kind[contract.VISION_MODEL]
        == kind[contract.CAPTION_MODEL]
        == kind[contract.TRANSLATOR_MODEL]
        == [gpu]
    )
    assert kind[contract.PREPROCESS_MODEL] == [2]  # images decode on the CPU
    vision = configs[contract.VISION_MODEL]
    assert vision.backend == "onnxruntime" and vision.dynamic_batching.max_queue_delay_microseconds == 2000
    assert not vision.dynamic_batching.preferred_batch_size  # GPUs batch images (CPUs run one request a run)
    assert not vision.optimization.execution_accelerators.gpu_execution_accelerator  # exact: plain CUDA EP
    for name in (contract.CAPTION_MODEL, contract.TRANSLATOR_MODEL):
        params = {k: v.string_value for k, v in configs[name].parameters.items()}
        assert params[contract.PARAM_DECODER_RUNNER] == "torch"
        assert (params[contract.PARAM_DEVICE], params[contract.PARAM_PRECISION]) == ("cuda", "fp32")
        assert contract.PARAM_CPU_SLOTS not in params
        assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"
        assert (gpu_repositories["fp32"] / name / "1" / "checkpoint" / "config.json").is_file()
    manifest = json.loads((gpu_repositories["fp32"] / "manifest.json").read_text())
    assert manifest["target"] == "gpu" and manifest["cuda_memory_pool_byte_size"] >= 64 * 1024 * 1024


def test_fp16_uses_tensorrt_and_keeps_norms_and_softmax_fp32(gpu_repositories):
    from captioning.export.gpu import check_fp32_ops

    vision = _configs(gpu_repositories["fp16"])[contract.VISION_MODEL]
    (accelerator,) = vision.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    graph = gpu_repositories["fp16"] / contract.VISION_MODEL / "1" / "model.onnx"
    check_fp32_ops(graph)  # raises naming a LayerNorm/Softmax that reads fp16


def test_the_fp32_check_catches_a_half_precision_norm(gpu_repositories, tmp_path):
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from captioning.export.gpu import check_fp32_ops

    source = gpu_repositories["fp32"] / contract.VISION_MODEL / "1" / "model.onnx"
    everything = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)  # nothing kept fp32
    onnx.save(everything, str(tmp_path / "all-fp16.onnx"))
    with pytest.raises(ValueError, match="LayerNormalization node .* reads fp16 input"):
        check_fp32_ops(tmp_path / "all-fp16.onnx")


def test_gpu_options_refused_by_name():
    from captioning.export.build import BuildOptions

    with pytest.raises(ValueError, match="precision on gpu must be one of fp32, fp16, bf16, got 'int8'"):
        BuildOptions(target="gpu", precision="int8").validate_options()
    with pytest.raises(ValueError, match="precision on cpu must be one of"):
        BuildOptions(target="cpu", precision="fp16").validate_options()
    with pytest.raises(ValueError, match="target must be one of cpu, gpu"):
        BuildOptions(target="tpu").validate_options()


def _adapter(repository: Path, name: str, monkeypatch):
    """The repository's own adapter, initialised as Triton would, with the device switched to this CPU."""
    fake_pb_utils.install(monkeypatch)
    path = repository / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"gpu_adapter_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json.loads(json.dumps(_config_json(repository / name / "config.pbtxt")))
    config["parameters"][contract.PARAM_DEVICE] = {"string_value": "cpu"}
    adapter = module.TritonPythonModel()
    adapter.initialize(
        {"model_config": json.dumps(config), "model_repository": str(repository / name), "model_version": "1"}
    )
    return adapter


def _config_json(path: Path) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(read_config(path), preserving_proto_field_name=True)


def test_the_gpu_generators_run_the_torch_runner(
    gpu_repositories, fixture_checkpoints, flickr_images, monkeypatch
):
    import torch
    from PIL import Image
    from transformers import BlipProcessor

    repository = gpu_repositories["fp32"]
    reference = Reference(fixture_checkpoints)
    images = [p.read_bytes() for p in flickr_images[:3]]
    processor = BlipProcessor.from_pretrained(str(fixture_checkpoints.blip))
    pixels = processor(images=[Image.open(io.BytesIO(d)) for d in images], return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = reference.blip.vision_model(pixel_values=pixels)[0].numpy()
    captioner = _adapter(repository, contract.CAPTION_MODEL, monkeypatch)
    (response,) = captioner.execute([FakeRequest({contract.IMAGE_EMBEDS: embeds})])
    captions = [
        r[0].decode()
        for r in fake_pb_utils.get_output_tensor_by_name(response, contract.CAPTION_EN).as_numpy()
    ]
    assert captions == [reference.caption(d) for d in images]
    # From blip_vision on the GPU the embeddings arrive as a device tensor, taken through DLPack, not numpy.
    device_input = fake_pb_utils.DeviceTensor(contract.IMAGE_EMBEDS, torch.from_numpy(embeds))
    (response,) = captioner.execute([FakeRequest({contract.IMAGE_EMBEDS: device_input})])
    rows = fake_pb_utils.get_output_tensor_by_name(response, contract.CAPTION_EN).as_numpy()
    assert [r[0].decode() for r in rows] == captions

    translator = _adapter(repository, contract.TRANSLATOR_MODEL, monkeypatch)
    texts = np.array([[c.encode()] for c in captions], dtype=np.object_)
    (response,) = translator.execute(
        [FakeRequest({contract.CAPTION_INPUT: texts})]
    )  # as arabic_caption sends
    out = [
        r[0].decode()
        for r in fake_pb_utils.get_output_tensor_by_name(response, contract.TRANSLATION_OUTPUT).as_numpy()
    ]
    assert out == [reference.translate(c) for c in captions]


def test_the_server_command_sizes_the_cuda_pool_from_the_manifest(gpu_repositories):
    from captioning.server.launcher import ServerOptions, command

    manifest = json.loads((gpu_repositories["fp16"] / "manifest.json").read_text())
    args, _ = command(ServerOptions(repository=gpu_repositories["fp16"]))
    assert f"--cuda-memory-pool-byte-size=0:{manifest['cuda_memory_pool_byte_size']}" in args
    assert "--strict-readiness=true" in args


def test_the_pip_server_refuses_a_gpu_repository_by_name(gpu_repositories):
    from captioning.server.launcher import ServerError, ServerOptions, TritonServer

    with pytest.raises(ServerError, match="is a GPU repository .* no onnxruntime backend"):
        TritonServer(ServerOptions.on_free_ports(gpu_repositories["fp32"])).start()
