"""The evaluation behind `captioning evaluate` (its command line is `evaluate_cli`): load a split, caption it
with a checkpoint or the running Triton pipeline, score the captions and build the report.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from captioning.caption_sources import open_caption_source
from captioning.datasets import DataReport, ImageLike, load_image, read_arabic_captions
from captioning.hub_sources import HubOptions
from captioning.training import report as reports

LOG = logging.getLogger(__name__)
DEFAULT_DATA = Path("../shared/data/flickr8k")
DEFAULT_ARABIC = Path("../shared/data/arabic_flickr8k/Flickr8k.arabic.full.txt")


class EvaluateError(RuntimeError):
    """The evaluation cannot run; the message says what to fix."""


@dataclasses.dataclass
class EvalOptions:
    data: Path = DEFAULT_DATA
    split: str = "dev"
    limit: int | None = None
    arabic_captions: Path = DEFAULT_ARABIC
    num_beams: int | None = None
    translation_num_beams: int | None = None
    max_length: int = 64
    batch_size: int = 8
    meteor: bool = True
    samples: int = 5
    progress: bool = True
    label: str | None = None
    timeout_s: float = 300.0
    data_format: str | None = None  # caption_sources.CAPTION_FORMATS; None: detected from `data`
    images: Path | None = None  # COCO / Karpathy image folder
    caption_column: str | None = None  # imagefolder: `text`; hf: the first of caption/captions/text present
    hub: HubOptions = HubOptions()  # hub:NAME and dataset folders: image column, dev split, config, revision


@dataclasses.dataclass
class EvalSet:
    """The images to caption and their references, in split-file order."""

    names: list[str]
    paths: list[ImageLike]  # files, or rows of a `datasets` split (read when captioned)
    english: dict[str, list[str]]
    arabic: dict[str, list[str]] | None
    issues: DataReport


def load_eval_set(options: EvalOptions, *, arabic: bool) -> EvalSet:
    issues = DataReport()
    source = open_caption_source(
        options.data, options.data_format, options.images, options.caption_column, options.hub
    )
    english: dict[str, list[str]] = {}
    paths: dict[str, ImageLike] = {}
    for example in source.examples(options.split, issues, limit=options.limit):
        english.setdefault(example.image.name, []).append(example.caption)
        paths[example.image.name] = example.image
    names = list(english)
    arabic_refs = None
    if arabic:
        everything = read_arabic_captions(Path(options.arabic_captions), issues)
        arabic_refs = {n: everything[n] for n in names if n in everything}
        if len(arabic_refs) < len(names):
            LOG.warning("%d of %d images have no Arabic reference", len(names) - len(arabic_refs), len(names))
    LOG.info("evaluating %d %s-split images from %s", len(names), options.split, options.data)
    return EvalSet(names, [paths[n] for n in names], english, arabic_refs, issues)


# ---------------------------------------------------------------------------------------------- captioners


class BlipCaptioner:
    """`generate()` of a BlipForConditionalGeneration checkpoint on batches of PIL images."""

    def __init__(self, path: Path, num_beams: int | None = None, max_length: int = 64) -> None:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # `--checkpoint` is a directory (load_checkpoint_captioner read its config.json): never the hub.
        local = {"local_files_only": True}
        self.processor = BlipProcessor.from_pretrained(path, **local)  # nosec B615 # the --checkpoint dir, local_files_only
        model = BlipForConditionalGeneration.from_pretrained(path, **local)  # nosec B615 # the --checkpoint dir, as above
        self.model = model.to(self.device).eval()
        self.kwargs: dict[str, int] = {"max_length": max_length}
        if num_beams is not None:
            self.kwargs["num_beams"] = num_beams

    def caption(self, images: list) -> list[str]:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device)
        with self.torch.inference_mode():
            ids = self.model.generate(pixel_values=pixels, **self.kwargs)
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


def load_checkpoint_captioner(path: Path, options: EvalOptions) -> tuple[Callable[[list], list[str]], str]:
    """(`caption(images) -> list[str]`, model kind) for a BLIP or a baseline checkpoint dir."""
    path = Path(path)
    if (path / "baseline.json").is_file():
        try:
            from captioning.training.baselines import load_captioner
        except ImportError as exc:
            raise EvaluateError(
                f"{path} is a baseline checkpoint, but captioning.training.baselines.load_captioner is not "
                f"available in this install ({exc})"
            ) from exc
        baseline = load_captioner(path)
        if options.num_beams is None:
            return baseline.caption, "baseline"
        return functools.partial(baseline.caption, beam=options.num_beams), "baseline"
    config = path / "config.json"
    if not config.is_file():
        raise EvaluateError(f"{path}: neither baseline.json nor a transformers config.json found")
    kind = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if kind != "blip":
        raise EvaluateError(f"{path}: model_type {kind!r} is not a BLIP captioner (expected 'blip')")
    return BlipCaptioner(path, options.num_beams, options.max_length).caption, "blip"


def _progress(total: int, enabled: bool, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="img", disable=not enabled)


def caption_images(
    caption: Callable[[list], list[str]], paths: Sequence[ImageLike], options: EvalOptions
) -> tuple[list[str | None], dict[str, str]]:
    """Captions in input order (None where an image could not be read); failures by image name."""
    captions: list[str | None] = [None] * len(paths)
    failures: dict[str, str] = {}
    with _progress(len(paths), options.progress, "captioning") as bar:
        for start in range(0, len(paths), options.batch_size):
            batch, where = [], []
            for i in range(start, min(start + options.batch_size, len(paths))):
                try:
                    batch.append(load_image(paths[i]))
                    where.append(i)
                except OSError as exc:
                    failures[paths[i].name] = f"cannot read image: {exc}"
                    LOG.warning("skipped %s: %s", paths[i], exc)
            if batch:
                for i, text in zip(where, caption(batch), strict=True):
                    captions[i] = text
            bar.update(min(options.batch_size, len(paths) - start))
    return captions, failures


def caption_via_server(
    url: str, protocol: str | None, paths: Sequence[ImageLike], options: EvalOptions, lang: str
) -> tuple[list[tuple[str, str | None] | None], dict[str, str]]:
    """(English, Arabic) per image from the running pipeline, in input order; failed requests by name."""
    from captioning.client import CaptionClient
    from captioning.client.types import GenerationOptions

    generation = GenerationOptions(
        caption_num_beams=options.num_beams, translation_num_beams=options.translation_num_beams
    )
    results: list[tuple[str, str | None] | None] = [None] * len(paths)
    failures: dict[str, str] = {}
    with (
        CaptionClient(url, protocol=protocol, timeout_s=options.timeout_s, wait_ready_s=30) as client,
        _progress(len(paths), options.progress, f"captioning via {url}") as bar,
    ):
        for start in range(0, len(paths), options.batch_size):
            chunk = list(paths[start : start + options.batch_size])
            sent = [p if isinstance(p, Path) else p.read_bytes() for p in chunk]  # dataset rows as bytes
            answers = client.caption_batch(sent, lang=lang, options=generation, return_exceptions=True)
            for offset, answer in enumerate(answers):
                if isinstance(answer, Exception):
                    failures[chunk[offset].name] = str(answer)
                    LOG.warning("request for %s failed: %s", chunk[offset], answer)
                else:
                    results[start + offset] = (answer.english, answer.arabic)
            bar.update(len(chunk))
    return results, failures


# ---------------------------------------------------------------------------------------------- scoring


def score_english(hypotheses: dict[str, str], references: dict[str, list[str]], meteor: bool) -> dict:
    """COCO metrics with the PTB tokenizer; without Java (and without METEOR) a Python tokenizer instead."""
    from captioning.training import metrics

    if metrics.java_available() or meteor:
        return metrics.caption_scores(hypotheses, references, meteor=meteor, tokenize=True)
    LOG.warning("java not found: English text tokenised in Python instead of the PTB tokenizer")
    hyps = {k: metrics.simple_tokenize(v) for k, v in hypotheses.items()}
    refs = {k: [metrics.simple_tokenize(r) for r in v] for k, v in references.items()}
    return metrics.caption_scores(hyps, refs, meteor=False, tokenize=False)


def _samples(
    eval_set: EvalSet, english: dict[str, str], arabic: dict[str, str] | None, count: int
) -> list[dict]:
    out = []
    for name in [n for n in eval_set.names if n in english][:count]:
        sample: dict[str, object] = {
            "image": name,
            "caption_en": english[name],
            "references_en": eval_set.english[name],
        }
        if arabic is not None and name in arabic:
            sample["caption_ar"] = arabic[name]
            sample["references_ar"] = (eval_set.arabic or {}).get(name, [])
        out.append(sample)
    return out


def build_report(
    source: dict,
    options: EvalOptions,
    eval_set: EvalSet,
    english: dict[str, str],
    arabic: dict[str, str] | None = None,
    **extra: object,
) -> dict:
    """Score the captions and gather everything a reader needs to trust (or distrust) the numbers."""
    if not english:
        raise EvaluateError("no image was captioned: nothing to score")
    scores = {"en": score_english(english, {n: eval_set.english[n] for n in english}, options.meteor)}
    scored_arabic: dict[str, str] = {}
    if arabic is not None and eval_set.arabic is not None:
        from captioning.training.metrics import arabic_caption_scores

        scored_arabic = {n: t for n, t in arabic.items() if n in eval_set.arabic}
        if scored_arabic:
            refs = {n: eval_set.arabic[n] for n in scored_arabic}
            scores["ar"] = arabic_caption_scores(scored_arabic, refs, meteor=options.meteor)
    settings = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in dataclasses.asdict(options).items()
        if k not in ("label", "progress", "timeout_s")
    }
    return {
        "kind": reports.REPORT_KIND,
        "version": reports.REPORT_VERSION,
        "name": options.label or source.get("label", "?"),
        "source": source,
        "settings": settings,
        "images": len(english),
        "images_arabic": len(scored_arabic),
        "scores": scores,
        "samples": _samples(eval_set, english, arabic, options.samples),
        "data_issues": eval_set.issues.summary(),
        **extra,
    }


# ---------------------------------------------------------------------------------------------- entry points


def evaluate_checkpoint(path: Path, options: EvalOptions) -> dict:
    eval_set = load_eval_set(options, arabic=False)
    caption, kind = load_checkpoint_captioner(path, options)
    start = time.perf_counter()
    captions, failures = caption_images(caption, eval_set.paths, options)
    english = {n: c for n, c in zip(eval_set.names, captions, strict=True) if c is not None}
    source = {"checkpoint": str(path), "model": kind, "label": f"{kind.upper()} {Path(path).name}"}
    return build_report(
        source, options, eval_set, english, failures=failures, caption_time_s=time.perf_counter() - start
    )


def evaluate_url(url: str, options: EvalOptions, protocol: str | None = None, lang: str = "both") -> dict:
    eval_set = load_eval_set(options, arabic=lang != "en")
    start = time.perf_counter()
    answers, failures = caption_via_server(url, protocol, eval_set.paths, options, lang)
    english, arabic = {}, {}
    for name, answer in zip(eval_set.names, answers, strict=True):
        if answer is not None:
            english[name] = answer[0]
            if answer[1] is not None:
                arabic[name] = answer[1]
    source = {"url": url, "protocol": protocol or "auto", "lang": lang, "label": f"Triton pipeline ({url})"}
    return build_report(
        source,
        options,
        eval_set,
        english,
        arabic=arabic if lang != "en" else None,
        failures=failures,
        caption_time_s=time.perf_counter() - start,
    )
