"""Per-request generation options, parsed from Triton request parameters and validated before any work."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

MAX_BEAMS = 8

# The request parameters each stage reads; ensembles forward all of them to every step.
STAGE_PARAMETERS = {
    "caption": ("caption_num_beams", "caption_max_new_tokens"),
    "translation": ("translation_num_beams", "translation_max_new_tokens"),
}
KNOWN_PARAMETERS = frozenset(name for names in STAGE_PARAMETERS.values() for name in names)


class InvalidRequestError(ValueError):
    """A request option is malformed or out of range; the message names it."""


@dataclasses.dataclass(frozen=True)
class StageOptions:
    """Overrides of one generation stage; None keeps the checkpoint's default."""

    num_beams: int | None = None
    max_new_tokens: int | None = None

    def validate(self, stage: str, max_new_tokens_limit: int) -> None:
        if self.num_beams is not None and not 1 <= self.num_beams <= MAX_BEAMS:
            raise InvalidRequestError(f"{stage}_num_beams must be in 1..{MAX_BEAMS}, got {self.num_beams}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= max_new_tokens_limit:
            raise InvalidRequestError(
                f"{stage}_max_new_tokens must be in 1..{max_new_tokens_limit}, got {self.max_new_tokens}"
            )


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
) -> StageOptions:
    """Read and validate one stage's options; parameters of other stages are ignored."""
    params = parse_parameters(parameters)
    beams_name, tokens_name = STAGE_PARAMETERS[stage]
    options = StageOptions(
        num_beams=_as_int(beams_name, params[beams_name]) if beams_name in params else None,
        max_new_tokens=_as_int(tokens_name, params[tokens_name]) if tokens_name in params else None,
    )
    options.validate(stage, max_new_tokens_limit)
    return options
