"""Typed specs for Triton model configs, rendered through Triton's own protobuf schema.

Building `config.pbtxt` from a spec (never from a half-filled template) means every field name and enum is
checked by `model_config_pb2` when the file is written, not by the server at load time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb


class ModelConfigError(ValueError):
    """A model spec is inconsistent; the message names the model and the field."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton type name without the TYPE_ prefix: STRING, FP32, INT64, ...
    dims: tuple[int, ...]
    optional: bool = False

    def to_proto(self, cls):
        if f"TYPE_{self.dtype}" not in pb.DataType.keys():  # noqa: SIM118 - an enum wrapper, not a dict
            raise ModelConfigError(f"tensor {self.name}: unknown data type {self.dtype}")
        kwargs = {
            "name": self.name,
            "data_type": pb.DataType.Value(f"TYPE_{self.dtype}"),
            "dims": list(self.dims),
        }
        if self.optional:
            kwargs["optional"] = True
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class BatchingSpec:
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    # Overload: past `max_queue_size` waiting requests, or after `queue_timeout_us` in the queue, a request is
    # rejected at once (UNAVAILABLE) instead of waiting until its client gives up. 0 keeps Triton's default
    # (unbounded, no timeout). Clients may shorten the timeout per request (`timeout` parameter).
    max_queue_size: int = 0
    queue_timeout_us: int = 0


@dataclasses.dataclass(frozen=True)
class IterativeSpec:
    """The sequence batcher with iterative sequences (in-flight batching): every execution is one step of the
    requests in flight, which the model reschedules until it answers them. Triton offers no queue policy here;
    the model bounds its own queue (captioning/runtime/inflight.py), so `max_candidates` only has to let it
    see every request it may hold."""

    max_candidates: int
    max_queue_delay_us: int = 0
    idle_us: int = 600_000_000  # a request is rescheduled every step; this only guards against a lost one


@dataclasses.dataclass(frozen=True)
class AcceleratorSpec:
    """A GPU execution accelerator of Triton's onnxruntime backend (e.g. TensorRT with its parameters)."""

    name: str
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EnsembleStep:
    model: str
    input_map: dict[str, str]  # model input -> ensemble tensor
    output_map: dict[str, str]  # model output -> ensemble tensor


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str = "python"  # "python", "onnxruntime", "tensorrt" or "ensemble"
    max_batch_size: int = 0
    batching: BatchingSpec | None = None
    iterative: IterativeSpec | None = None
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)
    steps: tuple[EnsembleStep, ...] = ()
    default_model_filename: str | None = None
    gpu_accelerators: tuple[AcceleratorSpec, ...] = ()

    def validate(self) -> None:
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ModelConfigError(f"model {self.name}: duplicate tensor names {names}")
        if self.batching is not None and self.max_batch_size <= 0:
            raise ModelConfigError(f"model {self.name}: dynamic batching needs max_batch_size > 0")
        if self.iterative is not None and (self.batching is not None or self.max_batch_size <= 0):
            raise ModelConfigError(
                f"model {self.name}: iterative sequences need max_batch_size > 0 and no dynamic batching"
            )
        if (self.backend == "ensemble") != bool(self.steps):
            raise ModelConfigError(f"model {self.name}: ensembles, and only ensembles, have steps")
        if self.instance_count < 1:
            raise ModelConfigError(f"model {self.name}: instance_count must be >= 1")
        if self.steps:
            self._validate_steps()

    def _validate_steps(self) -> None:
        available = {t.name for t in self.inputs}
        for step in self.steps:
            missing = set(step.input_map.values()) - available
            if missing:
                raise ModelConfigError(
                    f"ensemble {self.name}: step {step.model} reads {sorted(missing)} before any step produces it"
                )
            available |= set(step.output_map.values())
        unproduced = {t.name for t in self.outputs} - available
        if unproduced:
            raise ModelConfigError(f"ensemble {self.name}: outputs {sorted(unproduced)} are never produced")

    def to_proto(self) -> pb.ModelConfig:
        self.validate()
        config = pb.ModelConfig(name=self.name, max_batch_size=self.max_batch_size)
        if self.backend == "ensemble":
            config.platform = "ensemble"
        else:
            config.backend = self.backend
        config.input.extend(t.to_proto(pb.ModelInput) for t in self.inputs)
        config.output.extend(t.to_proto(pb.ModelOutput) for t in self.outputs)
        if self.batching is not None:
            config.dynamic_batching.max_queue_delay_microseconds = self.batching.max_queue_delay_us
            config.dynamic_batching.preferred_batch_size.extend(self.batching.preferred_batch_sizes)
            if self.batching.max_queue_size or self.batching.queue_timeout_us:
                policy = config.dynamic_batching.default_queue_policy
                policy.timeout_action = pb.ModelQueuePolicy.TimeoutAction.Value("REJECT")
                policy.default_timeout_microseconds = self.batching.queue_timeout_us
                policy.allow_timeout_override = True
                policy.max_queue_size = self.batching.max_queue_size
        if self.iterative is not None:
            sequence = config.sequence_batching
            sequence.iterative_sequence = True
            sequence.max_sequence_idle_microseconds = self.iterative.idle_us
            sequence.oldest.max_candidate_sequences = self.iterative.max_candidates
            sequence.oldest.max_queue_delay_microseconds = self.iterative.max_queue_delay_us
        if self.backend != "ensemble":
            config.instance_group.append(
                pb.ModelInstanceGroup(
                    count=self.instance_count, kind=pb.ModelInstanceGroup.Kind.Value(self.instance_kind)
                )
            )
        for key, value in self.parameters.items():
            config.parameters[key].string_value = str(value)
        if self.default_model_filename:
            config.default_model_filename = self.default_model_filename
        for accelerator in self.gpu_accelerators:
            proto = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
                name=accelerator.name
            )
            proto.parameters.update(accelerator.parameters)
        for step in self.steps:
            proto_step = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
            proto_step.input_map.update(step.input_map)
            proto_step.output_map.update(step.output_map)
        return config

    def to_pbtxt(self) -> str:
        text = text_format.MessageToString(self.to_proto())
        # Round trip through the schema: what we write is exactly what the server will parse.
        text_format.Parse(text, pb.ModelConfig())
        return text

    def write(self, repository: Path) -> Path:
        path = Path(repository) / self.name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_pbtxt())
        return path


def read_config(path: Path) -> pb.ModelConfig:
    """Parse a config.pbtxt through the schema (used by tests and `captioning export` checks)."""
    return text_format.Parse(Path(path).read_text(), pb.ModelConfig())
