"""Conversion between Triton request/response objects and numpy/Python, shared by the `model.py` adapters.

Importable only where `triton_python_backend_utils` is (inside the Triton Python stub, or beside the fake one
the unit tests install), so the adapters stay thin and the real work stays in `captioning.runtime`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from captioning.decoding import GenerationCancelled
from captioning.runtime.inflight import ServerBusy


def invalid(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def has_input(request, name: str) -> bool:
    return pb_utils.get_input_tensor_by_name(request, name) is not None


def input_array(request, name: str):
    """An input as numpy when Triton hands it over in host memory, else as a torch tensor on its GPU, shared
    through DLPack (models with FORCE_CPU_ONLY_INPUT_TENSORS=no receive GPU tensors from GPU models)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input tensor {name!r}")
    if tensor.is_cpu():
        return tensor.as_numpy()
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack())


def string_rows(request, name: str) -> list[bytes]:
    """A TYPE_STRING input of shape [batch, 1] as one bytes object per row."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input tensor {name!r}")
    array = tensor.as_numpy()
    if array.ndim != 2 or array.shape[1] != 1:
        raise ValueError(f"input {name!r} must have shape [batch, 1], got {list(array.shape)}")
    return [row[0] if isinstance(row[0], bytes) else bytes(row[0]) for row in array]


def string_tensor(name: str, values: Sequence[str]) -> pb_utils.Tensor:
    return pb_utils.Tensor(name, np.array([[v.encode("utf-8")] for v in values], dtype=np.object_))


def respond_per_row(
    rows_per_request: Sequence[int],
    results: Sequence[object],
    build: Callable[[list[object]], list[pb_utils.Tensor]],
) -> list[pb_utils.InferenceResponse]:
    """Split flat per-row results back into one response per request; any failed row fails its request only."""
    responses = []
    start = 0
    for count in rows_per_request:
        chunk = list(results[start : start + count])
        start += count
        errors = [r for r in chunk if isinstance(r, BaseException)]
        if errors:
            responses.append(error_response(errors[0]))
        else:
            responses.append(pb_utils.InferenceResponse(output_tensors=build(chunk)))
    assert start == len(results), "results do not cover the requests"
    return responses


def error_response(error: BaseException) -> pb_utils.InferenceResponse:
    """ValueErrors are the client's fault (INVALID_ARG), a full in-flight queue is UNAVAILABLE (retry later),
    a cancelled decode is CANCELLED, anything else is an internal error."""
    if isinstance(error, ValueError):
        return invalid(str(error))
    if isinstance(error, ServerBusy):
        return pb_utils.InferenceResponse(
            output_tensors=[], error=pb_utils.TritonError(str(error), pb_utils.TritonError.UNAVAILABLE)
        )
    if isinstance(error, GenerationCancelled):
        code = getattr(pb_utils.TritonError, "CANCELLED", pb_utils.TritonError.UNAVAILABLE)
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error), code))
    return internal(f"{type(error).__name__}: {error}")


def cancelled(request) -> Callable[[], bool]:
    """Whether Triton marked the request cancelled (its client went away); never, on stubs without it."""
    check = getattr(request, "is_cancelled", None)
    return check if callable(check) else (lambda: False)


def timeout_s(request) -> float:
    """The request's own timeout in seconds (the SDK sends its deadline), 0 when it has none."""
    read = getattr(request, "timeout", None)
    return read() / 1e6 if callable(read) else 0.0


def run_rows(
    requests: Sequence,
    parse: Callable[[object], tuple[list[object], object]],
    run: Callable[[list[object], list[object], list[Callable[[], bool]]], list[object]],
    build: Callable[[list[object]], list[pb_utils.Tensor]],
    cancelled_of: Callable[[object], Callable[[], bool]] = cancelled,
) -> list[pb_utils.InferenceResponse]:
    """Batch the rows of every valid request into one `run` call; invalid requests fail alone, up front.

    `parse(request)` returns the request's rows and its options (raising ValueError for bad input);
    `run(rows, options_per_row, cancelled_per_row)` returns one result or exception per row.
    """
    parsed: list[tuple[list[object], object] | BaseException] = []
    for request in requests:
        try:
            parsed.append(parse(request))
        except Exception as exc:
            parsed.append(exc)
    rows: list[object] = []
    row_options: list[object] = []
    row_cancelled: list[Callable[[], bool]] = []
    for request, item in zip(requests, parsed, strict=True):
        if not isinstance(item, BaseException):
            rows.extend(item[0])
            row_options.extend([item[1]] * len(item[0]))
            row_cancelled.extend([cancelled_of(request)] * len(item[0]))
    try:
        results = run(rows, row_options, row_cancelled) if rows else []
    except Exception as exc:  # a bug in the stage: fail these requests, keep the model alive
        results = [exc] * len(rows)
    responses, start = [], 0
    for item in parsed:
        if isinstance(item, BaseException):
            responses.append(error_response(item))
            continue
        count = len(item[0])
        responses.extend(respond_per_row([count], results[start : start + count], build))
        start += count
    return responses
