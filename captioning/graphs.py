"""Graph runners: how decoding code reaches an ONNX graph, independent of where the graph executes.

`OrtRunner` runs a graph in-process with ONNX Runtime (CPU); a Triton BLS runner on a GPU node implements the
same `GraphRunner` protocol, and `DecoderGraph` adapts either to the generation library's `Decoder`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np

_PAST = re.compile(r"^past_key_values\.(\d+)\.key$")


class GraphRunner(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    """A GraphRunner over an onnxruntime.InferenceSession on the CPU provider."""

    def __init__(
        self, path: str | Path, *, intra_op_threads: int | None = None, inter_op_threads: int = 1
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        self.input_names = tuple(i.name for i in inputs)
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        # Static dims are ints, dynamic ones their symbolic name (str) or None.
        self.input_shapes: dict[str, tuple[int | str | None, ...]] = {i.name: tuple(i.shape) for i in inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(list(self.output_names), {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs, strict=True))


class DecoderGraph:
    """The generation library's `Decoder` over any runner that follows the decoder graph contract."""

    def __init__(
        self, runner: GraphRunner, *, num_heads: int | None = None, head_dim: int | None = None
    ) -> None:
        self.runner = runner
        layers = sorted(int(m.group(1)) for name in runner.input_names if (m := _PAST.match(name)))
        if not layers or layers != list(range(len(layers))):
            raise ValueError(f"runner inputs {runner.input_names} do not follow the decoder graph contract")
        self.num_layers = len(layers)
        shape = getattr(runner, "input_shapes", {}).get("past_key_values.0.key", ())
        self.num_heads = num_heads if num_heads is not None else _static(shape, 1, "heads")
        self.head_dim = head_dim if head_dim is not None else _static(shape, 3, "head dim")
        self.past_names = [
            f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")
        ]
        self.present_names = [
            f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")
        ]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        empty = np.zeros((batch, self.num_heads, 0, self.head_dim), dtype=np.float32)
        return [empty] * (2 * self.num_layers)

    def __call__(
        self,
        input_ids: np.ndarray,
        past: list[np.ndarray] | None,
        encoder_hidden_states: np.ndarray,
        encoder_attention_mask: np.ndarray,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if past is None:
            past = self.empty_past(input_ids.shape[0])
        if len(past) != len(self.past_names):
            raise ValueError(f"expected {len(self.past_names)} past tensors, got {len(past)}")
        feeds = {
            "input_ids": input_ids,
            "encoder_hidden_states": np.asarray(encoder_hidden_states, dtype=np.float32),
            "encoder_attention_mask": np.asarray(encoder_attention_mask, dtype=np.int64),
        }
        feeds.update(zip(self.past_names, past, strict=True))
        outputs = self.runner.run(feeds)
        logits = np.ascontiguousarray(outputs["logits"][:, -1, :], dtype=np.float32)
        return logits, [outputs[name] for name in self.present_names]


def _static(shape: tuple, axis: int, what: str) -> int:
    if len(shape) > axis and isinstance(shape[axis], int):
        return shape[axis]
    raise ValueError(f"cannot read the {what} from the runner's past_key_values.0.key shape {shape}; pass it")
