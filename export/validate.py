"""Check an exported graph against PyTorch through ONNX Runtime, the way optimum's validate_model_outputs does.

Every graph is run on fresh inputs of several shapes (batch 1 and >1, past length 0 and >0) so a shape that
the tracer baked in shows up as a failure here rather than in production.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError, GraphValidationError
from .specs import GraphSpec

logger = logging.getLogger(__name__)


@dataclass
class ValidationCase:
    """Fresh inputs (contract layout) and a thunk giving PyTorch's outputs for them."""

    label: str
    feeds: dict[str, np.ndarray]
    reference: Callable[[], dict[str, np.ndarray]]


@dataclass
class ExportJob:
    """Everything needed to export one graph: its contract, a flat-tensor wrapper, tracing inputs and checks."""

    spec: GraphSpec
    module: Any  # torch.nn.Module taking the spec's inputs positionally
    example: tuple[Any, ...]  # torch tensors in spec.input_names order
    cases: list[ValidationCase] = field(default_factory=list)


@dataclass(frozen=True)
class CaseResult:
    label: str
    max_abs_diff: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values(), default=0.0)


def check_interface(spec: GraphSpec, path: Path) -> None:
    """The graph's input/output names follow the contract and its dynamic axes are symbolic."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = tuple(i.name for i in graph.input)
    outputs = tuple(o.name for o in graph.output)
    if inputs != spec.input_names or outputs != spec.output_names:
        raise ExportError(
            f"graph {spec.name!r} has inputs {inputs} and outputs {outputs}; "
            f"the contract wants {spec.input_names} and {spec.output_names}"
        )
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        for axis in spec.dynamic_axes.get(value.name, {}):
            if dims[axis].HasField("dim_value"):
                raise ExportError(
                    f"graph {spec.name!r} fixed axis {axis} of {value.name!r} to {dims[axis].dim_value}"
                )


def validate_graph(
    spec: GraphSpec,
    path: Path,
    cases: Sequence[ValidationCase],
    *,
    atol: float | None = None,
    rtol: float | None = None,
    intra_op_threads: int | None = None,
) -> list[CaseResult]:
    """Run every case through ONNX Runtime and PyTorch; raise GraphValidationError on the first mismatch."""
    from captioning.runtime.graphs import OrtRunner

    atol = spec.atol if atol is None else atol
    rtol = spec.rtol if rtol is None else rtol
    check_interface(spec, path)
    runner = OrtRunner(path, intra_op_threads=intra_op_threads)
    results = []
    for case in cases:
        got = runner.run(case.feeds)
        want = case.reference()
        diffs: dict[str, float] = {}
        for name in spec.output_names:
            actual, expected = got[name], want[name]
            if actual.shape != expected.shape:
                raise GraphValidationError(
                    spec.name,
                    name,
                    float("inf"),
                    atol,
                    rtol=rtol,
                    case=f"{case.label} (shape {actual.shape} != {expected.shape})",
                )
            diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
            diffs[name] = diff
            if not np.allclose(actual, expected, atol=atol, rtol=rtol):
                raise GraphValidationError(spec.name, name, diff, atol, rtol=rtol, case=case.label)
        result = CaseResult(case.label, diffs)
        logger.info("%s: %s max abs diff %.2e", spec.name, case.label, result.worst)
        results.append(result)
    return results
