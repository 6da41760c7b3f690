"""Typed failures of the export pipeline, so callers (CLI, tests) can tell a bad checkpoint from a bad graph."""

from __future__ import annotations


class ExportError(Exception):
    """Base class: anything that stops a checkpoint from becoming validated ONNX graphs."""


class UnsupportedCheckpointError(ExportError):
    """The checkpoint is not of the architecture the graph contract was written for."""

    def __init__(self, checkpoint: str, expected: str | None = None, found: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.expected = expected
        self.found = found
        # A single argument is a ready-made message (e.g. a wrapped loading error).
        message = (
            checkpoint
            if expected is None
            else f"checkpoint {checkpoint!r} is a {found}, expected a {expected}"
        )
        super().__init__(message)


class GraphValidationError(ExportError):
    """An exported graph disagrees with PyTorch by more than its declared tolerance."""

    def __init__(
        self,
        graph: str,
        output_name: str,
        max_abs_diff: float,
        atol: float,
        *,
        rtol: float = 0.0,
        case: str = "",
    ) -> None:
        self.graph = graph
        self.output_name = output_name
        self.max_abs_diff = max_abs_diff
        self.atol = atol
        self.rtol = rtol
        self.case = case
        where = f" on {case}" if case else ""
        super().__init__(
            f"graph {graph!r} output {output_name!r} differs from PyTorch{where}: "
            f"max abs diff {max_abs_diff:.3e} exceeds atol {atol:.1e} (rtol {rtol:.1e})"
        )
