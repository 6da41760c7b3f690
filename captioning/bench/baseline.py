"""The baseline of `captioning bench`: the original app's pipeline, in-process eager PyTorch, one request
at a time (decode the JPEG, BLIP processor, `blip.generate`, decode, tokenise, `mbart.generate` with the
Arabic language code forced, decode), using every core as torch does by default."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioning.bench.options import BenchOptions
    from captioning.bench.pipeline import OriginalPipeline

LOG = logging.getLogger(__name__)


class Baseline:
    """The original app: per request, processor -> blip.generate -> decode -> tokenizer -> mbart.generate.

    `run_passes` measures passes over the images whenever the bench calls it, so the passes can sit between
    the Triton measurements and a slow or fast stretch of the machine hits both sides of a ratio. The bench
    loads `pipeline` for each slot and drops it before a repository is served (its memory goes to Triton).
    """

    def __init__(self, options: BenchOptions, pipeline: OriginalPipeline) -> None:
        self.threads = options.threads or os.cpu_count() or 1
        self.pipeline = pipeline
        self.passes: list[dict] = []
        self.latencies: list[float] = []
        self.outputs: list[dict] = []

    def one(self, data: bytes) -> tuple[float, dict]:
        pipeline = self.pipeline
        started = time.perf_counter()
        caption_ids = pipeline.caption_ids(data)
        english = pipeline.processor.decode(caption_ids[0], skip_special_tokens=True)
        translated = pipeline.translation_ids(english)
        arabic = pipeline.tokenizer.decode(translated[0], skip_special_tokens=True)
        elapsed = time.perf_counter() - started
        tokens = {"caption": caption_ids.shape[1] - 1, "translation": translated.shape[1] - 1}
        return elapsed, {"english": english, "arabic": arabic, "new_tokens": tokens}

    def run_passes(self, images: list[tuple[str, bytes]], count: int, slot: str) -> None:
        from tqdm import tqdm

        self.one(images[0][1])  # warm-up (models are loaded per slot): first-call allocations, kernels
        for _ in range(count):
            number = len(self.passes) + 1
            started, wall = time.perf_counter(), time.strftime("%H:%M:%S")
            for name, data in tqdm(images, desc=f"baseline pass {number} ({slot})", unit="img"):
                elapsed, output = self.one(data)
                self.latencies.append(elapsed)
                if number == 1:
                    self.outputs.append({"image": name, **output})
            rate = len(images) / (time.perf_counter() - started)
            self.passes.append({"slot": slot, "started": wall, "images_per_s": rate})
            LOG.info("baseline pass %d (%s): %.3f images/s", number, slot, rate)

    def result(self) -> dict:
        from captioning.bench.stats import percentile, summary

        return {
            "threads": self.threads,
            "passes": self.passes,
            "latencies_s": self.latencies,
            "images_per_s": summary([p["images_per_s"] for p in self.passes]),
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p95_ms": percentile(self.latencies, 95) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "outputs": self.outputs,
        }


def release_memory() -> None:
    """Collect, then hand freed heap back to the system (glibc keeps it otherwise)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def original_pipeline(options: BenchOptions, captioner: Path, translator: Path) -> OriginalPipeline:
    """The original app's models with the bench's settings (fixed lengths), on `--threads` torch threads;
    shared by the baseline and the `generate()` peers."""
    import torch

    from captioning.bench.pipeline import OriginalPipeline

    torch.set_num_threads(options.threads or os.cpu_count() or 1)

    def fixed(beams: int, tokens: int) -> dict:
        return {"num_beams": beams, "min_new_tokens": tokens, "max_new_tokens": tokens}

    return OriginalPipeline(
        captioner,
        translator,
        fixed(options.caption_num_beams, options.caption_tokens),
        fixed(options.translation_num_beams, options.translation_tokens),
    )


def pass_plan(repeats: int, labels: list[str]) -> list[tuple[str, int]]:
    """Baseline passes per gap: before each repository and after the last, at least `repeats` in all."""
    slots = [f"before {label}" for label in labels] + (["after " + labels[-1]] if labels else ["alone"])
    per_slot = -(-repeats // len(slots))
    return [(slot, per_slot) for slot in slots]
