"""`captioning gpu-check`: what a GPU node proves in one run of a few minutes, with PyTorch as its only GPU runtime.

1. Exactness: the torch runner (fp32, TF32 off) through the server's own stages against `generate()` on the same
   GPU, on the fixture checkpoints and the shared Flickr8k images: greedy, beams 3 and 5, batches 1, 4 and 16.
2. Speed on full-size random-weight checkpoints (BLIP-base at 384 px, mBART-large-50 with 250,054 tokens; fixed
   output lengths as `captioning bench` uses): images/s of the original pipeline (one request at a time), of
   batched `generate()` (the peer a GPU user would write) and of this project's decoding with the torch runner,
   at batch 16 and 64, fp32 and bf16; bf16's agreement with fp32; and the split of decoding time between the
   device (step graphs) and the host (the numpy search).

Writes one JSON file and prints a table. `--smoke` runs every part on tiny inputs (CPU tests use it).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from pathlib import Path

from captioning import contract

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckOptions:
    device: str = "cuda"
    output: Path = Path("build/gpu-check/gpu-check.json")
    exact_images: int = 48
    speed_images: int = 64
    original_images: int = 16
    batches: tuple[int, ...] = (16, 64)
    caption_beams: int = 3
    caption_tokens: int = 20
    translation_beams: int = 5
    translation_tokens: int = 24
    smoke: bool = False  # tiny inputs and the fixture checkpoints for the speed part too

    @classmethod
    def smoke_test(cls, output: Path, device: str = "cpu") -> CheckOptions:
        return cls(
            device=device, output=output, exact_images=4, speed_images=4, original_images=2, batches=(2, 4),
            caption_tokens=4, translation_tokens=4, smoke=True,
        )  # fmt: skip


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Timed:
    """Wraps a Decoder: time spent in its sessions' steps and reorders (the device side, synchronised)."""

    def __init__(self, decoder, device: str) -> None:
        self.decoder, self.device, self.seconds = decoder, device, 0.0

    def start(self, states, mask, beams):
        return _TimedSession(self, self.decoder.start(states, mask, beams))


class _TimedSession:
    def __init__(self, owner: _Timed, session) -> None:
        self.owner, self.session = owner, session

    def step(self, ids):
        started = time.perf_counter()
        out = self.session.step(ids)  # .cpu() inside synchronises
        self.owner.seconds += time.perf_counter() - started
        return out

    def reorder(self, rows):
        started = time.perf_counter()
        self.session.reorder(rows)
        _sync(self.owner.device)
        self.owner.seconds += time.perf_counter() - started


@dataclasses.dataclass
class Project:
    """This project's decoding over the torch runner: the stages a GPU repository's generators run."""

    vision: object
    caption: object
    encoder: object
    translation: object
    config: object

    @classmethod
    def load(cls, blip_dir: Path, mbart_dir: Path, device: str, precision: str, lengths: dict) -> Project:
        from captioning.export.build import caption_settings, translation_settings
        from captioning.runtime import torch_runner as tr
        from captioning.runtime.preprocess import PreprocessConfig
        from captioning.runtime.stages import CaptionStage, TranslationStage
        from captioning.runtime.tokenization import TextCodec

        options = tr.TorchOptions(device=device, precision=precision)
        blip, mbart = tr.load_checkpoint("blip", blip_dir), tr.load_checkpoint("mbart", mbart_dir)
        codec = TextCodec.load(mbart_dir, src_lang=contract.SOURCE_LANG)
        cs = caption_settings(blip, contract.MAX_LENGTH).with_overrides(lengths["caption"])
        ts = translation_settings(mbart, codec.tokenizer, contract.TARGET_LANG, contract.MAX_LENGTH)
        ts = ts.with_overrides(lengths["translation"])
        caption = CaptionStage(
            _Timed(tr.step_decoder("blip", blip, options, cs.max_length), device),
            cs,
            TextCodec.load(blip_dir),
        )
        translation = TranslationStage(
            tr.encoder_graph(mbart, options),
            _Timed(tr.step_decoder("mbart", mbart, options, ts.max_length), device),
            ts,
            codec,
        )
        config = PreprocessConfig.from_file(blip_dir / "preprocessor_config.json")
        return cls(tr.vision_graph(blip, options), caption, translation.encoder, translation, config)

    def run(self, images: list[bytes], beams: tuple[int, int]) -> list[tuple[str, str]]:
        import numpy as np

        from captioning.decoding import Overrides
        from captioning.runtime.preprocess import preprocess_bytes
        from captioning.runtime.stages import Source

        pixels = np.stack([preprocess_bytes(d, self.config) for d in images])
        embeds = self.vision.run({contract.PIXEL_VALUES: pixels})[contract.IMAGE_EMBEDS]
        english = self.caption.run(list(embeds), [Overrides(num_beams=beams[0])] * len(images))
        sources = [Source(e, generated=True) if isinstance(e, str) else e for e in english]
        arabic = self.translation.run(sources, [Overrides(num_beams=beams[1])] * len(images))
        failed = [r for r in english + arabic if isinstance(r, Exception)]
        if failed:
            raise failed[0]
        return list(zip(english, arabic, strict=True))

    def device_seconds(self) -> float:
        return self.caption.decoder.seconds + self.translation.decoder.seconds


def _images(count: int) -> list[bytes]:
    from captioning.datasets import default_data_dir

    files = sorted((default_data_dir() / "flickr8k" / "Images").glob("*.jpg"))
    if not files:
        raise FileNotFoundError("the shared Flickr8k images are needed (../shared/data/flickr8k/Images)")
    return [files[i % len(files)].read_bytes() for i in range(count)]


def exactness(options: CheckOptions, fixtures) -> list[dict]:
    """Part 1: the torch runner's tokens against generate() on the same device."""
    from captioning.bench.pipeline import OriginalPipeline
    from captioning.decoding import Overrides

    rows = []
    free = {"caption": Overrides(), "translation": Overrides()}
    project = Project.load(fixtures.blip, fixtures.mbart, options.device, "fp32", free)
    images = _images(options.exact_images)
    for beams in (1, 3, 5):
        kw = {"max_length": contract.MAX_LENGTH, "num_beams": beams}
        reference = OriginalPipeline(fixtures.blip, fixtures.mbart, kw, kw, options.device)
        expected = []
        for data in images:
            english = reference.caption(data)
            expected.append((english, reference.translate(english)))
        for batch in (1, 4, 16):
            served = [
                pair
                for i in range(0, len(images), batch)
                for pair in project.run(images[i : i + batch], (beams, beams))
            ]
            same = sum(a == b for a, b in zip(served, expected, strict=True))
            rows.append({"beams": beams, "batch": batch, "images": len(images), "equal": same})
            LOG.info("exactness: beams %d, batch %d: %d/%d equal", beams, batch, same, len(images))
    return rows


def _rate(fn, count: int, device: str) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return count / (time.perf_counter() - started)


def speed(options: CheckOptions, checkpoints) -> dict:
    """Part 2: images/s of the original pipeline, batched generate() and this project, and bf16's agreement."""
    from captioning.bench.pipeline import OriginalPipeline
    from captioning.decoding import Overrides

    ct, tt = options.caption_tokens, options.translation_tokens
    caption_kw = {"num_beams": options.caption_beams, "min_new_tokens": ct, "max_new_tokens": ct}
    translate_kw = {"num_beams": options.translation_beams, "min_new_tokens": tt, "max_new_tokens": tt}
    reference = OriginalPipeline(
        checkpoints.blip, checkpoints.mbart, caption_kw, translate_kw, options.device
    )
    images = _images(options.speed_images)
    one = images[: options.original_images]
    reference.translate(reference.caption(one[0]))  # warm-up
    out: dict = {
        "original_images_per_s": _rate(
            lambda: [reference.translate(reference.caption(d)) for d in one], len(one), options.device
        )
    }
    for batch in options.batches:
        _batched_generate(reference, images[:batch])  # warm-up at this shape
        out[f"generate_b{batch}_images_per_s"] = _rate(
            lambda b=batch: [_batched_generate(reference, images[i : i + b]) for i in range(0, len(images), b)],
            len(images), options.device,
        )  # fmt: skip
    lengths = {
        "caption": Overrides(min_new_tokens=ct, max_new_tokens=ct),
        "translation": Overrides(min_new_tokens=tt, max_new_tokens=tt),
    }
    results = {}
    for precision in ("fp32", "bf16"):
        project = Project.load(checkpoints.blip, checkpoints.mbart, options.device, precision, lengths)
        beams = (options.caption_beams, options.translation_beams)
        for batch in options.batches:
            project.run(images[:batch], beams)  # warm-up at this shape
            project.caption.decoder.seconds = project.translation.decoder.seconds = 0.0
            started = time.perf_counter()
            outputs = [
                p for i in range(0, len(images), batch) for p in project.run(images[i : i + batch], beams)
            ]
            total = time.perf_counter() - started
            results[(precision, batch)] = outputs
            out[f"project_{precision}_b{batch}_images_per_s"] = len(images) / total
            out[f"project_{precision}_b{batch}_device_share"] = project.device_seconds() / total
    for batch in options.batches:
        pairs = list(zip(results[("fp32", batch)], results[("bf16", batch)], strict=True))
        out[f"bf16_b{batch}_captions_equal"] = sum(a[0] == b[0] for a, b in pairs) / len(pairs)
        out[f"bf16_b{batch}_translations_equal"] = sum(a[1] == b[1] for a, b in pairs) / len(pairs)
    return out


def _batched_generate(reference, images: list[bytes]) -> list[str]:
    """What a GPU user would write: one batched generate() per stage."""
    import torch
    from PIL import Image

    with torch.inference_mode():
        pixels = reference.processor(
            images=[Image.open(io.BytesIO(d)) for d in images], return_tensors="pt"
        ).pixel_values
        ids = reference.blip.generate(pixel_values=pixels.to(reference.device), **reference.caption_kw)
        english = reference.processor.batch_decode(ids, skip_special_tokens=True)
        source = reference.tokenizer(english, return_tensors="pt", padding=True).to(reference.device)
        out = reference.mbart.generate(**source, **reference.translate_kw)
    return reference.tokenizer.batch_decode(out, skip_special_tokens=True)


def run_check(options: CheckOptions) -> dict:
    import torch

    from captioning.testing.fixtures import cached_fixtures

    started = time.perf_counter()
    report: dict = {"device": options.device, "smoke": options.smoke, "torch": torch.__version__}
    if options.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    fixtures = cached_fixtures()
    report["exactness"] = exactness(options, fixtures)
    if options.smoke:
        checkpoints = fixtures
    else:
        from captioning.bench.checkpoints import cached_bench_checkpoints

        checkpoints = cached_bench_checkpoints()
    report["speed"] = speed(options, checkpoints)
    report["seconds"] = time.perf_counter() - started
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_table(report: dict) -> str:
    lines = [
        f"gpu-check on {report.get('gpu', report['device'])} (torch {report['torch']}), {report['seconds']:.0f} s"
    ]
    lines.append("exactness (torch runner fp32 against generate(), images equal):")
    for row in report["exactness"]:
        lines.append(f"  beams {row['beams']}  batch {row['batch']:>2}  {row['equal']}/{row['images']}")
    s = report["speed"]
    base = s["original_images_per_s"]
    lines.append("speed (images/s, x the original pipeline):")
    for key, value in s.items():
        if key.endswith("_images_per_s"):
            lines.append(f"  {key[: -len('_images_per_s')]:<22} {value:8.2f}  {value / base:7.1f}x")
        else:
            lines.append(f"  {key:<36} {value:.3f}")
    return "\n".join(lines)
