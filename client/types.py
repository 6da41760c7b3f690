"""Value objects shared by the sync and async clients; importing this module touches no tritonclient code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from captioning.client.errors import InvalidInputError

Lang = Literal["both", "en", "ar"]
LANGS: tuple[str, ...] = ("both", "en", "ar")

# Public tensor contract (docs/design.md).
ARABIC_MODEL = "arabic_caption"
ENGLISH_MODEL = "english_caption"
TRANSLATOR_MODEL = "translator"
IMAGE_INPUT = "image"
CAPTION_EN = "caption_en"
CAPTION_AR = "caption_ar"
TEXT_INPUT = "text"
TRANSLATION_OUTPUT = "translation"
MAX_BATCH_SIZE = 16


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

    def to_parameters(self) -> dict[str, int]:
        """Only the set fields, so unset ones fall back to the checkpoint's generation config."""
        self.validate()
        return {k: int(v) for k, v in asdict(self).items() if v is not None}


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
