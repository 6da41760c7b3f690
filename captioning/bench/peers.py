"""The peers of `captioning bench`: what a user would otherwise write or install, measured in the same run.

- `generate()` one at a time, translation alone: the translation stage of the original app, the reference
  every translation row is a ratio of and agrees with.
- `generate()` batched, for the whole pipeline (images in batches through BLIP, their captions in batches
  through mBART) and for translation alone: the peer a PyTorch user writes first.
- The same batches in bf16 (`model.to(torch.bfloat16)` on a copy, `captioning.bench.bf16`): the next thing
  that user tries; each row carries the CPU's bf16 flags and whether its bf16 matmuls are native or emulated.
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

from captioning.bench import bf16, ctranslate
from captioning.bench.options import BenchOptions

LOG = logging.getLogger(__name__)

SINGLE = "generate() one at a time"
PIPELINE, TRANSLATION = "pipeline", "translation"
FP32, BF16 = "fp32", "bf16"


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
    precision: str = FP32  # the weights': fp32, bf16, or CTranslate2's int8
    cpu: dict | None = None  # bf16 rows: `bf16.support()`, the CPU flags and the native/emulated note
    fp32_peer: str | None = None  # bf16 rows: the fp32 row run on the same batches

    def to_dict(self) -> dict:
        from captioning.bench.stats import percentile, summary

        out: dict = {"name": self.name, "stage": self.stage, "skipped": self.skipped}
        out["precision"] = self.precision
        if self.precision != FP32:
            out |= {"cpu": self.cpu, "fp32_peer": self.fp32_peer}
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
        self._bf16_models: tuple | None = None
        self.options, self.pipeline = options, pipeline
        self.batch = options.peer_batch_size
        self.rows = [
            PeerRow(SINGLE, TRANSLATION, self._translate_single),
            PeerRow(batched_name(self.batch), PIPELINE, self._batched_runner(PIPELINE, FP32)),
            PeerRow(batched_name(self.batch), TRANSLATION, self._batched_runner(TRANSLATION, FP32)),
        ]
        self.rows += self._bf16_rows()
        self.rows += self._ctranslate2_rows(translator, kept_ids)

    @property
    def pipeline(self):
        return self._pipeline

    @pipeline.setter
    def pipeline(self, pipeline) -> None:
        """The bench swaps the pipeline per slot (None while Triton serves): the bf16 copies go with it."""
        self._pipeline, self._bf16_models = pipeline, None

    def _bf16_rows(self) -> list[PeerRow]:
        """The fp32 batched peers' rows again in bf16, on the same batches; skipped (with the reason) when
        switched off or when this torch cannot run bf16 on the CPU."""
        cpu = bf16.support(bf16.cpu_flags())
        reason = None if self.options.bf16_peers else bf16.SWITCHED_OFF
        reason = reason or bf16.unavailable()
        if reason is not None and self.options.bf16_peers:
            LOG.warning("%s; the bf16 rows are skipped", reason)
        if reason is None and not cpu["native"]:
            LOG.warning("bf16 peers: %s", cpu["note"])
        name, twin = batched_name(self.batch, BF16), batched_name(self.batch)
        return [
            PeerRow(
                name,
                stage,
                None if reason else self._batched_runner(stage, BF16),
                skipped=reason,
                precision=BF16,
                cpu=cpu,
                fp32_peer=twin,
            )
            for stage in (PIPELINE, TRANSLATION)
        ]

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
            return [
                PeerRow(name, TRANSLATION, None, skipped=missing, precision=label.split()[0])
                for name, (label, _, _) in zip(names, variants, strict=True)
            ]
        tokenizer = self.pipeline.tokenizer
        kept = None if kept_ids is None else ctranslate.kept_tokens(tokenizer, kept_ids)
        rows = []
        for name, (label, quantization, mapped) in zip(names, variants, strict=True):
            model_dir = ctranslate.convert(
                translator,
                Path(self.options.output_dir) / "ctranslate2",
                quantization,
                kept if mapped else None,
            )
            runner = self._ct2_runner(model_dir, mapped)
            rows.append(PeerRow(name, TRANSLATION, runner, precision=label.split()[0]))
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

    def _models(self, precision: str) -> tuple:
        """(blip, mbart): the pipeline's own in fp32; in bf16 copies made once per slot, before any timing."""
        p = self.pipeline
        if precision == FP32:
            return p.blip, p.mbart
        if self._bf16_models is None:
            self._bf16_models = (bf16.bf16_copy(p.blip), bf16.bf16_copy(p.mbart))
        return self._bf16_models

    def _generate_translations(self, texts: Sequence[str], mbart) -> list[str]:
        import torch

        p = self.pipeline
        with torch.inference_mode():
            source = p.tokenizer(list(texts), return_tensors="pt", padding=True).to(p.device)
            ids = mbart.generate(**source, **p.translate_kw)
        return p.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _caption_batch(self, batch: Sequence[bytes], blip, mbart) -> list[dict]:
        import torch
        from PIL import Image

        p = self.pipeline
        with torch.inference_mode():
            pictures = [Image.open(io.BytesIO(data)) for data in batch]  # as the baseline
            pixels = p.processor(images=pictures, return_tensors="pt").pixel_values
            ids = blip.generate(pixel_values=pixels.to(p.device, blip.dtype), **p.caption_kw)
        english = p.processor.batch_decode(ids, skip_special_tokens=True)
        arabic = self._generate_translations(english, mbart)
        return [{"english": e, "arabic": a} for e, a in zip(english, arabic, strict=True)]

    def _batched_runner(self, stage: str, precision: str) -> Callable[[Sequence], tuple]:
        """Batches of `peer_batch_size` through generate(), the same batches in either precision."""

        def run(items: Sequence):
            blip, mbart = self._models(precision)  # a bf16 copy is made here, outside the timed batches
            if stage == TRANSLATION:
                return self._timed_batches(items, self.batch, lambda b: self._generate_translations(b, mbart))
            return self._timed_batches(items, self.batch, lambda b: self._caption_batch(b, blip, mbart))

        return run

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


def batched_name(batch: int, precision: str = FP32) -> str:
    """The batched generate() peers' row names (fp32 keeps its earlier name, so older results still read)."""
    if precision == FP32:
        return f"generate() batches of {batch}"
    return f"generate() {precision}, batches of {batch}"


def kept_ids_of(repositories: Sequence[tuple[str, Path]]) -> list[int] | None:
    """The kept ids of the first trimmed repository compared, so CTranslate2 gets the same vocabulary."""
    from captioning import contract
    from captioning.decoding import VocabMap

    for _, repository in repositories:
        path = Path(repository) / contract.TRANSLATOR_MODEL / "1" / "vocab.json"
        if path.is_file():
            return list(VocabMap.load(path).kept_ids)
    return None
