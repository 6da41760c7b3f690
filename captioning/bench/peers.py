"""The peers of `captioning bench`: what a user would otherwise write or install, measured in the same run.

- `generate()` one at a time, translation alone: the translation stage of the original app, the reference
  every translation row is a ratio of and agrees with.
- `generate()` batched, for the whole pipeline (images in batches through BLIP, their captions in batches
  through mBART) and for translation alone: the peer a PyTorch user writes first.
- CTranslate2 fp32 and int8, translation alone, in batches (`captioning.bench.ctranslate`).

All share the checkpoints, inputs, beams and fixed output lengths of the baseline, and run in passes at the
baseline's slots between the Triton runs, so machine drift hits every side of a ratio.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from captioning.bench import ctranslate
from captioning.bench.options import BenchOptions

LOG = logging.getLogger(__name__)

SINGLE = "generate() one at a time"
PIPELINE, TRANSLATION = "pipeline", "translation"


@dataclasses.dataclass
class PeerRow:
    name: str
    stage: str  # PIPELINE (images/s) or TRANSLATION (sentences/s)
    # inputs -> (outputs, per-item latencies, seconds the work took); None: not measured (`skipped` says why)
    run: Callable[[Sequence], tuple[list, list[float], float]] | None
    rates: list[float] = dataclasses.field(default_factory=list)
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    outputs: list = dataclasses.field(default_factory=list)
    skipped: str | None = None  # why the peer was not measured

    def to_dict(self) -> dict:
        from captioning.bench.stats import percentile, summary

        out: dict = {"name": self.name, "stage": self.stage, "skipped": self.skipped}
        if self.rates:
            out["rate"] = summary(self.rates)
            out["rates"] = self.rates
            out["p50_ms"] = percentile(self.latencies_s, 50) * 1000
            out["p95_ms"] = percentile(self.latencies_s, 95) * 1000
            out["outputs"] = self.outputs
        return out


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Peers:
    """Loaded once (sharing the baseline's PyTorch models); `run_passes` measures every peer at a slot."""

    def __init__(self, options: BenchOptions, pipeline, translator: Path, kept_ids: list[int] | None):
        self.options, self.pipeline = options, pipeline
        self.batch = options.peer_batch_size
        self.rows = [
            PeerRow(SINGLE, TRANSLATION, self._translate_single),
            PeerRow(f"generate() batches of {self.batch}", PIPELINE, self._pipeline_batched),
            PeerRow(f"generate() batches of {self.batch}", TRANSLATION, self._translate_batched),
        ]
        self.rows += self._ctranslate2_rows(translator, kept_ids)

    def _ctranslate2_rows(self, translator: Path, kept_ids: list[int] | None) -> list[PeerRow]:
        """fp32 and int8 on the full vocabulary; with a trimmed repository compared, int8 with a vocabulary
        map of its kept tokens as well, so trimmed is compared with trimmed."""
        variants = [("fp32", "float32", False), ("int8", "int8", False)]
        if kept_ids is not None:
            variants.append(("int8 + vocabulary map", "int8", True))
        names = [f"CTranslate2 {label}, batches of {self.batch}" for label, _, _ in variants]
        missing = ctranslate.available()
        if missing is not None:
            LOG.warning("%s; its rows are skipped", missing)
            return [PeerRow(name, TRANSLATION, None, skipped=missing) for name in names]
        tokenizer = self.pipeline.tokenizer
        kept = None if kept_ids is None else ctranslate.kept_tokens(tokenizer, kept_ids)
        rows = []
        for name, (_, quantization, mapped) in zip(names, variants, strict=True):
            model_dir = ctranslate.convert(
                translator,
                Path(self.options.output_dir) / "ctranslate2",
                quantization,
                kept if mapped else None,
            )
            rows.append(PeerRow(name, TRANSLATION, self._ct2_runner(model_dir, mapped)))
        return rows

    @property
    def pipeline_threads(self) -> int:
        import torch

        return torch.get_num_threads()

    # -- the peers -------------------------------------------------------------------------------------
    def _timed_batches(self, items: Sequence, size: int, fn: Callable[[Sequence], list]):
        """(outputs, per-item latencies, seconds in all)."""
        outputs, latencies, elapsed = [], [], 0.0
        for batch in _batches(items, size):
            started = time.perf_counter()
            outputs += fn(batch)
            took = time.perf_counter() - started
            latencies += [took] * len(batch)  # a batch's items finish together
            elapsed += took
        return outputs, latencies, elapsed

    def _translate_single(self, texts: Sequence[str]):
        return self._timed_batches(texts, 1, lambda batch: [self.pipeline.translate(batch[0])])

    def _generate_translations(self, texts: Sequence[str]) -> list[str]:
        import torch

        p = self.pipeline
        with torch.inference_mode():
            source = p.tokenizer(list(texts), return_tensors="pt", padding=True).to(p.device)
            ids = p.mbart.generate(**source, **p.translate_kw)
        return p.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _translate_batched(self, texts: Sequence[str]):
        return self._timed_batches(texts, self.batch, self._generate_translations)

    def _pipeline_batched(self, images: Sequence[bytes]):
        import torch
        from PIL import Image

        p = self.pipeline

        def run(batch: Sequence[bytes]) -> list[dict]:
            with torch.inference_mode():
                pictures = [Image.open(io.BytesIO(data)) for data in batch]  # as the baseline
                pixels = p.processor(images=pictures, return_tensors="pt").pixel_values.to(p.device)
                ids = p.blip.generate(pixel_values=pixels, **p.caption_kw)
            english = p.processor.batch_decode(ids, skip_special_tokens=True)
            arabic = self._generate_translations(english)
            return [{"english": e, "arabic": a} for e, a in zip(english, arabic, strict=True)]

        return self._timed_batches(images, self.batch, run)

    def _ct2_runner(self, model_dir: Path, mapped: bool):
        """Loaded for each pass and freed after it (outside the timed part): three converted mBART-large
        models held beside the baseline's would take memory the served repositories need."""
        o = self.options

        def run(texts: Sequence[str]):
            tokenizer = self.pipeline.tokenizer
            engine = ctranslate.CT2Translator(model_dir, tokenizer, self.pipeline_threads, use_vmap=mapped)
            started = time.perf_counter()
            outputs = engine.translate(texts, o.translation_num_beams, o.translation_tokens, self.batch)
            elapsed = time.perf_counter() - started
            del engine
            # translate_batch batches internally: per sentence, the batch's share of the time
            share = elapsed * min(self.batch, len(texts)) / len(texts)
            return outputs, [share] * len(texts), elapsed

        return run

    # -- passes ----------------------------------------------------------------------------------------
    def run_passes(self, images: list[tuple[str, bytes]], texts: list[str], count: int, slot: str) -> None:
        from tqdm import tqdm

        inputs = {PIPELINE: [data for _, data in images], TRANSLATION: texts}
        live = [row for row in self.rows if row.run is not None]
        if live:  # warm-up (models are loaded per slot): first-call allocations
            for row in live:
                row.run(inputs[row.stage][:1])
        for _ in range(count):
            for row in tqdm(live, desc=f"peers ({slot})", unit="peer"):
                items = inputs[row.stage]
                outputs, latencies, elapsed = row.run(items)
                rate = len(items) / elapsed
                if not row.outputs:
                    row.outputs = outputs
                row.rates.append(rate)
                row.latencies_s += latencies
                LOG.info("peer %s (%s, %s): %.3f items/s", row.name, row.stage, slot, rate)

    def result(self) -> list[dict]:
        return [row.to_dict() for row in self.rows]


def kept_ids_of(repositories: Sequence[tuple[str, Path]]) -> list[int] | None:
    """The kept ids of the first trimmed repository compared, so CTranslate2 gets the same vocabulary."""
    from captioning import contract
    from captioning.decoding import VocabMap

    for _, repository in repositories:
        path = Path(repository) / contract.TRANSLATOR_MODEL / "1" / "vocab.json"
        if path.is_file():
            return list(VocabMap.load(path).kept_ids)
    return None
