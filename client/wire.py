"""Request building and response decoding shared by the sync and async clients (tritonclient-module agnostic)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from captioning.client.errors import CaptionError, InvalidInputError
from captioning.client.types import CaptionResult, GenerationOptions, check_lang
from captioning.contract import (
    CAPTION_AR,
    CAPTION_EN,
    CAPTION_STAGE,
    IMAGE_INPUT,
    TEXT_INPUT,
    TRANSLATION_OUTPUT,
    TRANSLATION_STAGE,
)


@dataclass(frozen=True)
class CaptionPlan:
    """Which model answers a `lang`, which outputs to ask for and which parameters apply."""

    model: str
    outputs: tuple[str, ...]
    parameters: dict[str, int]


def caption_plan(
    lang: str, options: GenerationOptions | None, *, arabic_model: str, english_model: str
) -> CaptionPlan:
    check_lang(lang)
    options = options or GenerationOptions()
    if lang == "en":
        # english_caption never translates: keep the translation parameters off its request.
        return CaptionPlan(english_model, (CAPTION_EN,), options.to_parameters(CAPTION_STAGE))
    return CaptionPlan(arabic_model, (CAPTION_EN, CAPTION_AR), options.to_parameters())


def translation_parameters(options: GenerationOptions | None) -> dict[str, int]:
    return (options or GenerationOptions()).to_parameters(TRANSLATION_STAGE)


def bytes_input(lib: ModuleType, name: str, items: Sequence[bytes]) -> Any:
    """TYPE_STRING with a batch dim: an [n, 1] object array of bytes."""
    array = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        array[i, 0] = item
    tensor = lib.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def image_inputs(lib: ModuleType, data: bytes) -> list[Any]:
    return [bytes_input(lib, IMAGE_INPUT, [data])]


def text_inputs(lib: ModuleType, texts: Sequence[str]) -> list[Any]:
    return [bytes_input(lib, TEXT_INPUT, [t.encode("utf-8") for t in texts])]


def requested_outputs(lib: ModuleType, names: Sequence[str]) -> list[Any]:
    return [lib.InferRequestedOutput(name) for name in names]


def decode_column(result: Any, name: str) -> list[str]:
    """One string per batch row; output bytes are UTF-8."""
    array = result.as_numpy(name)
    if array is None:
        raise CaptionError(f"server response has no output {name!r}")
    return [_to_text(v) for v in np.asarray(array, dtype=object).reshape(-1)]


def caption_result(result: Any, plan: CaptionPlan, source: str, latency_s: float) -> CaptionResult:
    english = decode_column(result, CAPTION_EN)[0]
    arabic = decode_column(result, CAPTION_AR)[0] if CAPTION_AR in plan.outputs else None
    return CaptionResult(english=english, arabic=arabic, source=source, latency_s=latency_s)


def translation_output() -> tuple[str, ...]:
    return (TRANSLATION_OUTPUT,)


def check_texts(text: str | Sequence[str]) -> tuple[list[str], bool]:
    """Return (texts, single): a bare str means one translation back, a sequence means a list."""
    if isinstance(text, str):
        return [text], True
    if isinstance(text, (bytes, bytearray)):
        raise InvalidInputError("translate() takes str, not bytes")
    texts = list(text)
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            raise InvalidInputError(f"text[{i}] must be str, got {type(item).__name__}")
    return texts, False


# One text per request, several requests in flight: the server batches them (dynamic batching) or joins them to
# the decoding batch (in-flight repositories, whose sequence batcher accepts one row per request).
TEXTS_PER_REQUEST = 1
TEXT_REQUESTS_IN_FLIGHT = 16


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def check_max_in_flight(max_in_flight: int) -> int:
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise InvalidInputError(f"max_in_flight must be a positive integer, got {max_in_flight!r}")
    return max_in_flight


def check_timeout(timeout_s: float) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise InvalidInputError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def _to_text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)
