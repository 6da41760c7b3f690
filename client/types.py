"""Value objects shared by the sync and async clients; importing this module touches no tritonclient code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from captioning import contract
from captioning.client.errors import InvalidInputError

Lang = Literal["both", "en", "ar"]
LANGS: tuple[str, ...] = ("both", "en", "ar")


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request decoding knobs, sent as Triton request parameters; None keeps the server default."""

    caption_num_beams: int | None = None
    caption_max_new_tokens: int | None = None
    translation_num_beams: int | None = None
    translation_max_new_tokens: int | None = None

    def validate(self) -> None:
        """Reject values before the round trip; the server checks the upper bounds it knows."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{f.name} must be a positive integer, got {value!r}")

    def to_parameters(self, *stages: str) -> dict[str, int]:
        """Only the set fields (unset ones fall back to the server's defaults), of the given stages or all."""
        self.validate()
        wanted = {
            name
            for stage in stages or tuple(contract.STAGE_PARAMETERS)
            for name in (
                contract.STAGE_PARAMETERS[stage].num_beams,
                contract.STAGE_PARAMETERS[stage].max_new_tokens,
            )
        }
        return {k: int(v) for k, v in asdict(self).items() if v is not None and k in wanted}


@dataclass(frozen=True)
class CaptionResult:
    """One image's answer; `arabic` is None when only English was asked for."""

    english: str
    arabic: str | None
    source: str
    latency_s: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def check_lang(lang: str) -> str:
    if lang not in LANGS:
        raise InvalidInputError(f"lang must be one of {', '.join(LANGS)}, got {lang!r}")
    return lang
