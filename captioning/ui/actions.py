"""What the page does, as plain functions over the client SDK, so the UI behaves exactly as the SDK does.

Each returns the values the page shows, and a message instead of an exception: a bad image, an unreachable
server or a model that is not ready reads as a sentence in the page, never as a stack trace. `transport` (TLS,
gateway headers) is the page's own, from `captioning ui`'s flags.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path

from captioning import contract
from captioning.client import (
    CaptionClient,
    CaptionError,
    CaptionTimeoutError,
    GenerationOptions,
    InvalidInputError,
    ModelNotReadyError,
    ServerBusyError,
    ServerUnreachableError,
    Transport,
)

LANGS = {"English": "en", "Arabic": "both", "Both": "both"}  # Arabic needs the English caption first
MAX_NEW_TOKENS = contract.MAX_LENGTH - 1  # the repository's default limit, prompt excluded


@dataclasses.dataclass(frozen=True)
class Settings:
    """The page's advanced settings; None keeps the server's defaults."""

    caption_num_beams: int | None = None
    caption_max_new_tokens: int | None = None
    translation_num_beams: int | None = None
    translation_max_new_tokens: int | None = None

    def options(self) -> GenerationOptions:
        return GenerationOptions(**{k: (int(v) if v else None) for k, v in dataclasses.asdict(self).items()})


def explain(error: Exception, url: str) -> str:
    """The page's sentence for an SDK error."""
    if isinstance(error, InvalidInputError):
        return f"The request was refused: {error}"
    if isinstance(error, ServerUnreachableError):
        return f"The captioning server at {url} cannot be reached. Is it running? ({error})"
    if isinstance(error, ModelNotReadyError):
        return f"The server at {url} is up but its models are not ready yet (loading?). Try again shortly."
    if isinstance(error, ServerBusyError):
        return "The server is busy and shed this request. Try again in a moment."
    if isinstance(error, CaptionTimeoutError):
        return f"No answer from {url} in time. The server may be overloaded."
    if isinstance(error, CaptionError):
        return f"The server could not caption this: {error}"
    return f"Unexpected error: {type(error).__name__}: {error}"


def caption_image(
    url: str,
    image,
    lang: str,
    settings: Settings = Settings(),
    timeout_s: float = 120.0,
    *,
    transport: Transport | None = None,
):
    """(English, Arabic, time taken, message) for one image: a path, bytes or a PIL image."""
    if image is None:
        return "", "", "", "Choose an image first."
    mode = LANGS.get(lang)
    if mode is None:
        return "", "", "", f"Unknown output language {lang!r}."
    started = time.perf_counter()
    try:
        with CaptionClient(url, timeout_s=timeout_s, transport=transport) as client:
            result = client.caption(image, lang=mode, options=settings.options())
    except Exception as exc:
        return "", "", "", explain(exc, url)
    took = f"{time.perf_counter() - started:.2f} s"
    english = result.english if lang in ("English", "Both") else ""
    arabic = (result.arabic or "") if lang in ("Arabic", "Both") else ""
    return english, arabic, took, ""


def translate_text(
    url: str,
    text: str,
    settings: Settings = Settings(),
    timeout_s: float = 120.0,
    *,
    transport: Transport | None = None,
):
    """(Arabic, time taken, message) for English text."""
    if not text or not text.strip():
        return "", "", "Type some English text first."
    started = time.perf_counter()
    try:
        with CaptionClient(url, timeout_s=timeout_s, transport=transport) as client:
            arabic = client.translate(text, options=settings.options())
    except Exception as exc:
        return "", "", explain(exc, url)
    return arabic, f"{time.perf_counter() - started:.2f} s", ""


def caption_many(
    url: str,
    files: list,
    settings: Settings = Settings(),
    timeout_s: float = 300.0,
    *,
    transport: Transport | None = None,
):
    """(rows [image, English, Arabic, seconds or error], CSV path, message) for several images, sent
    concurrently so the server batches them."""
    paths = [Path(getattr(f, "name", f)) for f in files or []]
    if not paths:
        return [], None, "Choose one or more images first."
    try:
        with CaptionClient(url, timeout_s=timeout_s, transport=transport) as client:
            results = client.caption_batch(
                [str(p) for p in paths], options=settings.options(), return_exceptions=True
            )
    except Exception as exc:
        return [], None, explain(exc, url)
    rows = []
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, Exception):
            rows.append([path.name, "", "", explain(result, url)])
        else:
            rows.append([path.name, result.english, result.arabic or "", f"{result.latency_s:.2f} s"])
    failed = sum(1 for r in results if isinstance(r, Exception))
    return rows, write_csv(rows), (f"{failed} of {len(rows)} images failed." if failed else "")


def write_csv(rows: list[list[str]]) -> str:
    import tempfile

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image", "english", "arabic", "time or error"])
    writer.writerows(rows)
    with tempfile.NamedTemporaryFile(
        "w", suffix=".csv", prefix="captions-", delete=False, encoding="utf-8"
    ) as f:
        f.write(out.getvalue())
        return f.name


def example_images(count: int = 4) -> list[str]:
    from captioning.datasets import default_data_dir

    folder = default_data_dir() / "flickr8k" / "Images"
    return [str(p) for p in sorted(folder.glob("*.jpg"))[:count]] if folder.is_dir() else []
