"""Helpers shared by the Python-backend `model.py` files; importable only inside the Triton Python stub.

Everything here is conversion between Triton objects and numpy/Python, so the `model.py` adapters stay thin
and the real work stays in modules that tests import without Triton.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def model_dir(args: dict) -> Path:
    """The version directory (`<repo>/<model>/<version>`) that holds a model's files."""
    return Path(args["model_repository"]) / args["model_version"]


def model_parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def invalid(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


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
    """ValueErrors are the client's fault (INVALID_ARG); anything else is an internal error."""
    if isinstance(error, ValueError):
        return invalid(str(error))
    return internal(f"{type(error).__name__}: {error}")


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


def run_rows(
    requests: Sequence,
    parse: Callable[[object], tuple[list[object], object]],
    run: Callable[[list[object], list[object]], list[object]],
    build: Callable[[list[object]], list[pb_utils.Tensor]],
) -> list[pb_utils.InferenceResponse]:
    """Batch the rows of every valid request into one `run` call; invalid requests fail alone, up front.

    `parse(request)` returns the request's rows and its options (raising ValueError for bad input);
    `run(rows, options_per_row)` returns one result or exception per row.
    """
    parsed: list[tuple[list[object], object] | BaseException] = []
    for request in requests:
        try:
            parsed.append(parse(request))
        except Exception as exc:
            parsed.append(exc)
    rows: list[object] = []
    row_options: list[object] = []
    for item in parsed:
        if not isinstance(item, BaseException):
            rows.extend(item[0])
            row_options.extend([item[1]] * len(item[0]))
    try:
        results = run(rows, row_options) if rows else []
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


def graph_runner(kind: str, meta: dict, repository: Path, threads: int | None = None):
    """`bls`: call the graph's Triton model; `inprocess`: run its ONNX graph in this process."""
    if kind == "bls":
        return BlsRunner(meta["model"], meta)
    if kind == "inprocess":
        from captioning.graphs import OrtRunner

        # Repositories written before graphs moved into the generators' directories name only the model.
        file = meta.get("file", f"{meta['model']}/1/model.onnx")
        return OrtRunner(repository / file, intra_op_threads=threads)
    raise ValueError(f"unknown decoder_runner {kind!r}; expected 'bls' or 'inprocess'")


def step_decoder(kind: str, graphs: dict, repository: Path, threads: int | None = None):
    from captioning.graphs import StepDecoder

    return StepDecoder(
        graph_runner(kind, graphs["cross"], repository, threads),
        graph_runner(kind, graphs["step"], repository, threads),
    )


def thread_count(params: dict[str, str]) -> int | None:
    """The `intra_op_threads` model parameter; 0 or absent lets ONNX Runtime use every core."""
    return int(params.get("intra_op_threads", "0")) or None
