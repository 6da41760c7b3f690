"""The GPU repository (`captioning export --target gpu`): what changes from the CPU one, for NVIDIA's Triton 24.10.

- `blip_vision` is a native Triton model: `onnxruntime_onnx` on the CUDA execution provider (fp32, exact), with
  the TensorRT accelerator in fp16 mode (fast), or a `tensorrt_plan` once `captioning build-engines` has built
  engines for the node's GPU.
- `caption_generator` and `translator` run the checkpoints' own PyTorch modules in-process on the GPU (the torch
  runner): caches stay on the device, and only token ids and logits cross per step.
- `image_preprocess` decodes images on the CPU; every other model gets a `KIND_GPU` instance group.

`--precision` chooses exact (fp32) or a fast mode (fp16, bf16) for both. In fp16 the vision graph is converted
with LayerNorm and softmax kept in fp32 (`fp16_graph`), and `check_fp32_ops` proves it on the written graph.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from captioning import contract
from captioning.export.model_config import AcceleratorSpec, ModelSpec

PRECISIONS = ("fp32", "fp16", "bf16")
VISION_ENGINES = ("onnxruntime", "tensorrt")
# Ops whose reductions lose too much in half precision; they stay fp32 in the fp16 graphs.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf")
ENGINE_CACHE = "/engines"  # a volume in the container; engines are GPU- and TensorRT-version-specific
DEFAULT_POOL_BYTES = 64 * 1024 * 1024  # Triton's default CUDA memory pool per GPU


@dataclasses.dataclass(frozen=True)
class GpuOptions:
    precision: str = "fp32"  # fp32: exact; fp16, bf16: fast modes
    vision_engine: str = (
        "onnxruntime"  # or "tensorrt": a plan built on the node by `captioning build-engines`
    )
    device: str = "cuda"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"GPU precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.vision_engine not in VISION_ENGINES:
            raise ValueError(
                f"vision engine must be one of {', '.join(VISION_ENGINES)}, got {self.vision_engine!r}"
            )

    @property
    def vision_precision(self) -> str:
        """ONNX Runtime's CUDA provider has no bf16 path for this graph: bf16 mode runs vision in fp16."""
        return "fp32" if self.precision == "fp32" else "fp16"


def gpu_specs(specs: list[ModelSpec], gpu: GpuOptions) -> list[ModelSpec]:
    """The CPU repository's specs turned into the GPU repository's (same names, tensors and ensembles)."""
    gpu.validate()
    out = []
    for spec in specs:
        if spec.name == contract.VISION_MODEL:
            out.append(_vision(spec, gpu))
        elif spec.name in (contract.CAPTION_MODEL, contract.TRANSLATOR_MODEL):
            params = {k: v for k, v in spec.parameters.items() if k not in _CPU_ONLY_PARAMS}
            params.update(_torch_parameters(gpu))
            # Image embeddings stay on the GPU between blip_vision and the generator (DLPack, no host copy).
            params["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
            out.append(dataclasses.replace(spec, instance_kind="KIND_GPU", parameters=params))
        else:
            out.append(spec)
    return out


_CPU_ONLY_PARAMS = (contract.PARAM_INTRA_OP_THREADS, contract.PARAM_CPU_SLOTS)


def _torch_parameters(gpu: GpuOptions) -> dict[str, str]:
    return {
        contract.PARAM_DECODER_RUNNER: contract.TORCH_RUNNER,
        contract.PARAM_DEVICE: gpu.device,
        contract.PARAM_PRECISION: gpu.precision,
    }


def _vision(spec: ModelSpec, gpu: GpuOptions) -> ModelSpec:
    if gpu.vision_engine == "tensorrt":
        return dataclasses.replace(
            spec,
            backend="tensorrt",
            instance_kind="KIND_GPU",
            parameters={},
            default_model_filename="model.plan",
        )
    accelerators: tuple[AcceleratorSpec, ...] = ()
    if gpu.vision_precision == "fp16":
        accelerators = (
            AcceleratorSpec(
                "tensorrt",
                {
                    "precision_mode": "FP16",
                    "max_workspace_size_bytes": str(4 << 30),
                    "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": f"{ENGINE_CACHE}/{contract.VISION_MODEL}",
                },
            ),
        )
    return dataclasses.replace(
        spec, backend="onnxruntime", instance_kind="KIND_GPU", parameters={}, gpu_accelerators=accelerators
    )


def cuda_memory_pool_bytes(
    max_batch_size: int, image_size: tuple[int, int], vision_tokens: int, hidden: int
) -> int:
    """Triton's CUDA pool holds the GPU tensors that cross model boundaries: a batch of pixel values into
    `blip_vision` and its embeddings out, twice over so one batch can be written while another is read.
    Rounded up to 64 MiB and never below Triton's default."""
    height, width = image_size
    crossing = max_batch_size * 4 * (3 * height * width + vision_tokens * hidden)
    step = 64 * 1024 * 1024
    return max(DEFAULT_POOL_BYTES, math.ceil(2 * crossing / step) * step)


def fp16_graph(source: Path, target: Path) -> Path:
    """An fp16 copy of an ONNX graph with inputs and outputs kept fp32 and `FP32_OPS` computed in fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(target))
    check_fp32_ops(target)
    return target


def check_fp32_ops(path: Path) -> None:
    """Raise naming the first `FP32_OPS` node whose float input is not fp32, and fail if nothing became fp16."""
    import onnx
    from onnx import TensorProto

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    halves = sum(1 for t in types.values() if t == TensorProto.FLOAT16)
    if not halves:
        raise ValueError(f"{path}: no fp16 tensor in the graph")
    for node in model.graph.node:
        if node.op_type in FP32_OPS:
            for name in node.input:
                if name and types.get(name) == TensorProto.FLOAT16:
                    raise ValueError(f"{path}: {node.op_type} node {node.name!r} reads fp16 input {name!r}")
