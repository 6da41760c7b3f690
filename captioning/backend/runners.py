"""How an adapter is set up from its Triton arguments, and how generators reach their graphs.

`ModelContext` reads the model's directory and config parameters once (the names come from
`captioning.contract`). Graph runners are either in-process ONNX Runtime sessions (`captioning.runtime.graphs`)
or `BlsRunner`, which calls another Triton model: on GPU nodes that model can be Triton's native ONNX Runtime
or TensorRT backend without any change to the decoding code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from captioning import contract
from captioning.runtime import cpu_slots
from captioning.runtime.graphs import GraphRunner, OrtRunner, StepDecoder
from captioning.runtime.heap import keep_heap


def _log_to_server() -> None:
    """The stub's stderr is the server's log: the runtime's INFO lines (cancelled decodes, CPU slots) land
    there, tagged with the model instance. CAPTIONING_LOG_LEVEL changes the level."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("CAPTIONING_LOG_LEVEL", "INFO").upper(),
            format=f"%(asctime)s {os.getpid()} %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )


@dataclasses.dataclass
class ModelContext:
    """What every adapter needs from `initialize(args)`."""

    directory: Path  # the version directory, `<repo>/<model>/<version>`
    repository: Path
    parameters: dict[str, str]
    max_batch_size: int

    @classmethod
    def setup(cls, args: dict) -> ModelContext:
        """Read the arguments and apply the process-wide settings (heap thresholds, CPU slots) first,
        before any large allocation."""
        _log_to_server()
        keep_heap()  # see captioning/runtime/heap.py
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        cpu_slots.install(params.get(contract.PARAM_CPU_SLOTS))  # see captioning/runtime/cpu_slots.py
        repository = Path(args["model_repository"])
        return cls(
            repository / args["model_version"], repository.parent, params, config.get("max_batch_size", 0)
        )

    @property
    def threads(self) -> int | None:
        """ONNX Runtime intra-op threads; 0 or absent lets it use every core."""
        return int(self.parameters.get(contract.PARAM_INTRA_OP_THREADS, "0")) or None

    @property
    def runner_kind(self) -> str:
        return self.parameters.get(contract.PARAM_DECODER_RUNNER, "inprocess")

    def inflight(self, start):
        """The in-flight engine when the repository was exported with `--inflight`, else None."""
        if self.parameters.get(contract.PARAM_INFLIGHT) != "1":
            return None
        from captioning.runtime.inflight import InflightEngine, Limits

        p = self.parameters
        limits = Limits(
            max_rows=int(p.get(contract.PARAM_INFLIGHT_ROWS, contract.MAX_BATCH_SIZE)),
            max_queue=int(p.get(contract.PARAM_MAX_QUEUE_SIZE, contract.MAX_QUEUE_SIZE)),
            queue_timeout_s=float(p.get(contract.PARAM_QUEUE_TIMEOUT_S, contract.QUEUE_TIMEOUT_S)),
        )
        return InflightEngine(start, limits)

    def graphs(self) -> dict:
        """`graphs.json`: the graphs a generator drives, by role."""
        return json.loads((self.directory / "graphs.json").read_text())

    def torch_options(self):
        from captioning.runtime.torch_runner import TorchOptions

        return TorchOptions(
            device=self.parameters.get(contract.PARAM_DEVICE, "cuda"),
            precision=self.parameters.get(contract.PARAM_PRECISION, "fp32"),
            threads=self.threads,
            strict_cpu=True,  # a served model: no bf16 on a CPU that would run it slower than fp32
        )

    def checkpoint(self, graphs: dict):
        """The checkpoint a torch-runner generator serves, loaded once per model instance; a trimmed
        translator's (`vocab`) is trimmed to the kept ids as it loads."""
        if getattr(self, "_checkpoint", None) is None:
            from captioning.runtime.torch_runner import load_checkpoint

            meta = graphs["checkpoint"]
            vocab = self.directory / meta["vocab"] if meta.get("vocab") else None
            self._checkpoint = load_checkpoint(meta["kind"], self.directory / meta["dir"], vocab)
        return self._checkpoint

    def graph_model_runner(self) -> GraphRunner:
        """A graph model's runner (blip_vision and, with BLS, the decoder graphs): its `model.onnx` in ONNX
        Runtime, or, where the export chose the torch runner (bf16 on a CPU), blip_vision's checkpoint."""
        runner = self.parameters.get(contract.PARAM_VISION_RUNNER, contract.ONNX_RUNNER)
        if runner == contract.TORCH_RUNNER:
            from captioning.runtime.torch_runner import load_checkpoint, vision_graph

            model = load_checkpoint("blip_vision", self.directory / contract.CHECKPOINT_DIR)
            return vision_graph(model, self.torch_options())
        if runner != contract.ONNX_RUNNER:
            raise ValueError(
                f"unknown {contract.PARAM_VISION_RUNNER} {runner!r}; expected "
                f"{contract.ONNX_RUNNER} or {contract.TORCH_RUNNER}"
            )
        return OrtRunner(self.directory / "model.onnx", intra_op_threads=self.threads)

    def encoder(self, graphs: dict) -> GraphRunner:
        """The translator's encoder: its ONNX graph, its Triton model, or the checkpoint's module."""
        if self.runner_kind == contract.TORCH_RUNNER:
            from captioning.runtime.torch_runner import encoder_graph

            return encoder_graph(self.checkpoint(graphs), self.torch_options())
        return self.graph_runner(graphs["encoder"])

    def graph_runner(self, meta: dict) -> GraphRunner:
        """`bls`: call the graph's Triton model; `inprocess`: run its ONNX graph in this process."""
        if self.runner_kind == "bls":
            return BlsRunner(meta["model"], meta)
        if self.runner_kind == "inprocess":
            # Repositories written before graphs moved into the generators' directories name only the model.
            file = meta.get("file", f"{meta['model']}/1/model.onnx")
            return OrtRunner(self.repository / file, intra_op_threads=self.threads)
        raise ValueError(
            f"unknown {contract.PARAM_DECODER_RUNNER} {self.runner_kind!r}; "
            f"expected one of {', '.join(contract.DECODER_RUNNERS)}"
        )

    def step_decoder(self, graphs: dict, max_length: int):
        """The generator's `Decoder`; `max_length` sizes the torch runner's preallocated caches."""
        if self.runner_kind == contract.TORCH_RUNNER:
            from captioning.runtime.torch_runner import step_decoder

            kind = graphs["checkpoint"]["kind"]
            return step_decoder(kind, self.checkpoint(graphs), self.torch_options(), max_length)
        return StepDecoder(self.graph_runner(graphs["cross"]), self.graph_runner(graphs["step"]))


class BlsRunner:
    """A `GraphRunner` that runs a graph by calling another Triton model (BLS).

    On CPU that model is a Python-backend ONNX Runtime model; on GPU nodes it can be Triton's native
    onnxruntime or TensorRT backend without any change here.
    """

    def __init__(self, model_name: str, meta: dict):
        self.model_name = model_name
        self.input_names = tuple(meta["input_names"])
        self.output_names = tuple(meta["output_names"])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=list(self.output_names),
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.model_name}: {response.error().message()}")
        return {
            name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.output_names
        }
