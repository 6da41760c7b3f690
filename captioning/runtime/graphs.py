"""Graph runners: how decoding code reaches an ONNX graph, independent of where the graph executes.

`OrtRunner` runs a graph in-process with ONNX Runtime (CPU); a Triton BLS runner on a GPU node implements the
same `GraphRunner` protocol, and `StepDecoder` adapts a pair of them to the generation library's `Decoder`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from captioning.runtime import cpu_slots


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
        # Several model instances share the cores in one server; idle threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if os.environ.get("CAPTIONING_ORT_ARENA", "1").strip().lower() in ("0", "false", "no", "off"):
            options.enable_cpu_mem_arena = False  # see docs/reliability.md, "Soak"
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
        feeds = {name: feeds[name] for name in self.input_names}
        with cpu_slots.held():  # a no-op unless the model was given CPU slots
            outputs = self.session.run(list(self.output_names), feeds)
        return dict(zip(self.output_names, outputs, strict=True))


class StepDecoder:
    """The generation library's `Decoder` over a cross-KV graph and a decoder-step graph (docs/design.md).

    `start` projects each source's cross-attention keys/values once; the session then feeds them, unexpanded,
    to every step of every beam, and keeps the self-attention cache between steps.
    """

    def __init__(self, cross: GraphRunner, step: GraphRunner) -> None:
        self.cross = cross
        self.step = step
        self.cross_names = tuple(n for n in step.input_names if n.startswith("cross."))
        self.past_names = tuple(n for n in step.input_names if n.startswith("past_key_values."))
        self.present_names = tuple(n for n in step.output_names if n.startswith("present."))
        if not self.cross_names or len(self.past_names) != len(self.present_names):
            raise ValueError(f"step graph inputs {step.input_names} do not follow the decoder step contract")

    def start(
        self, encoder_hidden_states: np.ndarray, encoder_attention_mask: np.ndarray, num_beams: int
    ) -> StepSession:
        states = np.ascontiguousarray(encoder_hidden_states, dtype=np.float32)
        cross = self.cross.run({"encoder_hidden_states": states})
        return StepSession(
            self,
            {name: cross[name] for name in self.cross_names},
            np.ascontiguousarray(encoder_attention_mask, dtype=np.int64),
            rows=states.shape[0] * num_beams,
        )


class StepSession:
    """One `generate()` call's decoder state: the cross keys/values and the growing self-attention cache."""

    def __init__(self, decoder: StepDecoder, cross: dict[str, np.ndarray], mask: np.ndarray, rows: int):
        self.decoder = decoder
        self.feeds: dict[str, np.ndarray] = {"encoder_attention_mask": mask, **cross}
        key = cross[decoder.cross_names[0]]  # [B, H, S, Dh]
        empty = np.zeros((rows, key.shape[1], 0, key.shape[3]), dtype=np.float32)
        self.past = [empty] * len(decoder.past_names)

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        feeds = dict(self.feeds)
        feeds["input_ids"] = np.ascontiguousarray(input_ids, dtype=np.int64)
        feeds.update(zip(self.decoder.past_names, self.past, strict=True))
        outputs = self.decoder.step.run(feeds)
        self.past = [outputs[name] for name in self.decoder.present_names]
        return np.asarray(outputs["logits"], dtype=np.float32)

    def reorder(self, rows: np.ndarray) -> None:
        """Beam search reorders every step, but most rows usually keep their own history (translation on the
        benchmark checkpoints: 11% of rows move, half the steps none), so only moved rows are copied, in place.
        A full gather copied the whole cache every step (4% of an int8 translation, in-process)."""
        rows = np.asarray(rows, dtype=np.int64)
        count = self.past[0].shape[0]
        if len(rows) != count or not all(p.flags.writeable for p in self.past):
            self.past = [np.take(p, rows, axis=0) for p in self.past]
            return
        moved = np.flatnonzero(rows != np.arange(count))
        if moved.size:
            sources = rows[moved]
            for p in self.past:
                p[moved] = p[sources]  # the right side is gathered before anything is written
