"""`captioning verify`: does a running server give `generate()`'s tokens on this node's device, and how fast?

Sends N images (the shared Flickr8k images by default, or a folder) to the server, computes the original
pipeline on the same checkpoints locally (on the GPU where there is one), and reports the exact-match rate per
stage, the first mismatches, and images/s of both. Each translation is checked against `generate()`'s
translation of the caption the server served, so one caption mismatch does not count twice. Run it after every
deploy: it is how exact mode is proven on hardware this project's CI does not have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from captioning import contract

LOG = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclasses.dataclass(frozen=True)
class VerifyOptions:
    url: str
    captioner: str
    translator: str
    images: Path | None = None  # a folder; None: the shared Flickr8k images
    count: int = 50
    device: str = "auto"  # "auto": cuda where torch sees one, else cpu
    caption_num_beams: int | None = None  # None: the server's and the checkpoint's defaults
    translation_num_beams: int | None = None
    max_length: int = contract.MAX_LENGTH  # what the repository was exported with
    max_in_flight: int = 16
    min_match: float = 1.0  # exit non-zero below this exact-match rate (fast modes: lower it)
    output: Path | None = None
    # The hub revisions the repository was exported at (its manifest), for generate() to load the same files.
    captioner_revision: str | None = None
    translator_revision: str | None = None


def image_files(options: VerifyOptions) -> list[Path]:
    from captioning.datasets import default_data_dir

    folder = options.images or default_data_dir() / "flickr8k" / "Images"
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: options.count]
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files


def _device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def served_results(options: VerifyOptions, images: list[bytes]) -> tuple[list, float]:
    from captioning.client import CaptionClient, GenerationOptions

    generation = GenerationOptions(
        caption_num_beams=options.caption_num_beams, translation_num_beams=options.translation_num_beams
    )
    with CaptionClient(options.url, wait_ready_s=60, timeout_s=600) as client:
        client.caption(images[0], options=generation)  # warm-up, not timed
        started = time.perf_counter()
        results = client.caption_batch(
            images, options=generation, max_in_flight=options.max_in_flight, return_exceptions=True
        )
    return results, len(images) / (time.perf_counter() - started)


def run_verify(options: VerifyOptions) -> dict:
    from tqdm import tqdm

    from captioning.bench.pipeline import OriginalPipeline

    files = image_files(options)
    images = [p.read_bytes() for p in files]
    LOG.info("sending %d images to %s", len(images), options.url)
    served, served_rate = served_results(options, images)
    device = _device(options.device)
    caption_kw = {"max_length": options.max_length, "num_beams": options.caption_num_beams}
    translate_kw = {"max_length": options.max_length, "num_beams": options.translation_num_beams}
    revisions = (options.captioner_revision, options.translator_revision)
    reference = OriginalPipeline(
        options.captioner, options.translator, caption_kw, translate_kw, device, revisions=revisions
    )
    reference.translate(reference.caption(images[0]))  # warm-up
    rows, original_s = [], 0.0
    for path, data, result in tqdm(
        list(zip(files, images, served, strict=True)), desc="generate()", unit="img"
    ):
        started = time.perf_counter()
        english = reference.caption(data)
        arabic = reference.translate(english)  # the original pipeline's own work, timed
        original_s += time.perf_counter() - started
        row = {"image": path.name, "reference_en": english, "reference_ar": arabic}
        if isinstance(result, Exception):
            row["error"] = f"{type(result).__name__}: {result}"
        else:
            row["served_en"], row["served_ar"] = result.english, result.arabic
            row["expected_ar"] = arabic if result.english == english else reference.translate(result.english)
        rows.append(row)
    return summarise(rows, served_rate, len(images) / original_s, device, options)


def summarise(rows: list[dict], served_rate: float, original_rate: float, device: str, options) -> dict:
    answered = [r for r in rows if "error" not in r]
    captions = [r for r in answered if r["served_en"] == r["reference_en"]]
    translations = [r for r in answered if r["served_ar"] == r["expected_ar"]]
    mismatches = [
        r for r in answered if r["served_en"] != r["reference_en"] or r["served_ar"] != r["expected_ar"]
    ]
    return {
        "url": options.url,
        "device": device,
        "images": len(rows),
        "failed": len(rows) - len(answered),
        "caption_match": len(captions) / len(rows),
        "translation_match": len(translations) / len(rows),
        "first_mismatches": mismatches[:5],
        "errors": [r for r in rows if "error" in r][:5],
        "served_images_per_s": served_rate,
        "original_images_per_s": original_rate,
        "speedup": served_rate / original_rate,
        "passed": len(captions) / len(rows) >= options.min_match
        and len(translations) / len(rows) >= options.min_match,
    }


def format_report(report: dict) -> str:
    lines = [
        f"server {report['url']} against generate() on {report['device']}, {report['images']} images",
        f"  captions equal:     {report['caption_match']:.1%}",
        f"  translations equal: {report['translation_match']:.1%} (of the served captions)",
        f"  failed requests:    {report['failed']}",
        f"  served {report['served_images_per_s']:.3f} images/s, original pipeline "
        f"{report['original_images_per_s']:.3f} images/s: {report['speedup']:.2f}x",
    ]
    for row in report["first_mismatches"]:
        lines.append(f"  mismatch {row['image']}:")
        lines.append(f"    served   {row['served_en']!r} / {row['served_ar']!r}")
        lines.append(f"    expected {row['reference_en']!r} / {row['expected_ar']!r}")
    for row in report["errors"]:
        lines.append(f"  error {row['image']}: {row['error']}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path
