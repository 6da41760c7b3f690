"""A stand-in for Triton's `triton_python_backend_utils`, enough to run the adapters' glue outside the stub.

It implements the calls the adapters make, with the same signatures and error codes, as tensorrtllm_backend's
tests do for its BLS decoder; `install()` puts it into `sys.modules` under the real name.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE = 0, 1, 2, 3, 4

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class DeviceTensor(Tensor):
    """A tensor Triton keeps in device memory: readable only through DLPack (a CPU torch tensor stands in)."""

    def __init__(self, name: str, tensor) -> None:
        self._name, self._tensor = name, tensor

    def as_numpy(self):
        raise RuntimeError("as_numpy() on a GPU tensor")

    def is_cpu(self) -> bool:
        return False

    def to_dlpack(self):
        return self._tensor.__dlpack__()


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None) -> None:
        self._tensors, self._error = list(output_tensors), error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


class FakeRequest:
    """What an adapter reads from a request: its input tensors and its JSON parameters."""

    def __init__(self, inputs: dict, parameters: dict | None = None, correlation_id: int = 0) -> None:
        self._inputs = [v if isinstance(v, Tensor) else Tensor(k, v) for k, v in inputs.items()]
        self._parameters = json.dumps(parameters or {})
        self._correlation_id, self.release_flags, self.cancelled = correlation_id, 0, False
        self.sequence_flags = 1  # what the sequence batcher sets on an iterative request: START
        self.timeout_us = 0  # the request's own timeout; 0: none

    def correlation_id(self) -> int:
        return self._correlation_id

    def flags(self) -> int:
        return self.sequence_flags

    def set_release_flags(self, flags: int) -> None:
        self.release_flags = flags

    def is_cancelled(self) -> bool:
        return self.cancelled

    def timeout(self) -> int:
        return self.timeout_us

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def parameters(self) -> str:
        return self._parameters


class InferenceRequest:
    """BLS: `exec()` answers with whatever the test registered for the model name."""

    handlers: dict = {}

    def __init__(self, model_name: str, requested_output_names, inputs) -> None:
        self.model_name, self.requested, self.inputs = model_name, list(requested_output_names), list(inputs)

    def exec(self) -> InferenceResponse:
        return self.handlers[self.model_name](self)


def get_input_tensor_by_name(request, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


def install(monkeypatch) -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = TRITONSERVER_REQUEST_RELEASE_RESCHEDULE
    for name in (
        "TritonError",
        "Tensor",
        "InferenceResponse",
        "InferenceRequest",
        "get_input_tensor_by_name",
        "get_output_tensor_by_name",
    ):
        setattr(module, name, globals()[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    for cached in [m for m in sys.modules if m.startswith("captioning.backend.")]:
        monkeypatch.delitem(sys.modules, cached)
    return module
