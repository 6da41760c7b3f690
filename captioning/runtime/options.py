"""Per-request generation options: read once from Triton request parameters, validated before any work.

This is the request boundary: what a client sends becomes `Overrides` here, and nothing past this module sees
raw parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from captioning.contract import MAX_BEAMS, STAGE_PARAMETERS
from captioning.decoding.settings import Overrides


class InvalidRequestError(ValueError):
    """A request option is malformed or out of range; the message names it."""


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise InvalidRequestError(f"{name} must be an integer, got {value!r}")


def parse_parameters(raw: str | Mapping[str, object] | None) -> dict[str, object]:
    """Triton hands Python models the request parameters as a JSON string."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"request parameters are not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidRequestError("request parameters must be a JSON object")
    return parsed


def stage_options(
    parameters: str | Mapping[str, object] | None, stage: str, max_new_tokens_limit: int
) -> Overrides:
    """Read and validate one stage's options; parameters of other stages are ignored."""
    params = parse_parameters(parameters)
    names = STAGE_PARAMETERS[stage]
    beams = _as_int(names.num_beams, params[names.num_beams]) if names.num_beams in params else None
    tokens = (
        _as_int(names.max_new_tokens, params[names.max_new_tokens])
        if names.max_new_tokens in params
        else None
    )
    if beams is not None and not 1 <= beams <= MAX_BEAMS:
        raise InvalidRequestError(f"{names.num_beams} must be in 1..{MAX_BEAMS}, got {beams}")
    if tokens is not None and not 1 <= tokens <= max_new_tokens_limit:
        raise InvalidRequestError(
            f"{names.max_new_tokens} must be in 1..{max_new_tokens_limit}, got {tokens}"
        )
    return Overrides(num_beams=beams, max_new_tokens=tokens)
