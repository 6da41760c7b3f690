"""`captioning evaluate`: BLEU-1..4, METEOR and CIDEr of a captioner on Flickr8k-layout images.

Three ways in: a checkpoint directory (a BLIP `save_pretrained` dir, or a baseline dir with `baseline.json`
from `captioning train-baseline`), the running Triton pipeline (`--url`: English captions against the Flickr8k
references, Arabic captions against the Arabic Flickr8k references, normalised), or `--compare` to put several
saved reports into one table. Each evaluation writes a JSON report and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from captioning.datasets import DataError, DataReport, FlickrLayout, read_arabic_captions
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


@dataclasses.dataclass
class EvalSet:
    """The images to caption and their references, in split-file order."""

    names: list[str]
    paths: list[Path]
    english: dict[str, list[str]]
    arabic: dict[str, list[str]] | None
    issues: DataReport


def load_eval_set(options: EvalOptions, *, arabic: bool) -> EvalSet:
    issues = DataReport()
    layout = FlickrLayout(Path(options.data))
    english: dict[str, list[str]] = {}
    paths: dict[str, Path] = {}
    for example in layout.examples(options.split, issues, limit=options.limit):
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
        self.processor = BlipProcessor.from_pretrained(path)
        self.model = BlipForConditionalGeneration.from_pretrained(path).to(self.device).eval()
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
    caption: Callable[[list], list[str]], paths: Sequence[Path], options: EvalOptions
) -> tuple[list[str | None], dict[str, str]]:
    """Captions in input order (None where an image could not be read); failures by image name."""
    from PIL import Image

    captions: list[str | None] = [None] * len(paths)
    failures: dict[str, str] = {}
    with _progress(len(paths), options.progress, "captioning") as bar:
        for start in range(0, len(paths), options.batch_size):
            batch, where = [], []
            for i in range(start, min(start + options.batch_size, len(paths))):
                try:
                    with Image.open(paths[i]) as image:
                        batch.append(image.convert("RGB"))
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
    url: str, protocol: str | None, paths: Sequence[Path], options: EvalOptions, lang: str
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
            answers = client.caption_batch(chunk, lang=lang, options=generation, return_exceptions=True)
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


def _options(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        data=Path(args.data),
        split=args.split,
        limit=args.limit,
        arabic_captions=Path(args.arabic_captions),
        num_beams=args.num_beams,
        translation_num_beams=args.translation_num_beams,
        max_length=args.max_length,
        batch_size=args.batch_size,
        meteor=not args.no_meteor,
        samples=args.samples,
        progress=not args.no_progress,
        label=args.label,
        timeout_s=args.timeout,
    )


def _run(args: argparse.Namespace) -> int:
    from captioning.training.metrics import MetricsError

    try:
        if args.compare:
            loaded = [reports.load_report(Path(p)) for p in args.compare]
            table = reports.markdown_table(loaded)
            if args.output:
                reports.write_markdown(loaded, Path(args.output))
            print(table)
            return 0
        options = _options(args)
        if args.checkpoint:
            result = evaluate_checkpoint(Path(args.checkpoint), options)
        else:
            result = evaluate_url(args.url, options, protocol=args.protocol, lang=args.lang)
    except (EvaluateError, DataError, MetricsError, reports.ReportError) as exc:
        print(f"captioning evaluate: error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output or "report.json")
    reports.write_json(result, output)
    table = reports.write_markdown([result], output.with_suffix(".md"))
    print(table.read_text(encoding="utf-8"))
    print(f"report written to {output} and {table}")
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="BLEU-1..4 / METEOR / CIDEr of a checkpoint or of the running Triton pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  captioning evaluate --checkpoint runs/blip --split dev --output reports/blip.json\n"
            "  captioning evaluate --url localhost:8001 --limit 100 --output reports/triton.json\n"
            "  captioning evaluate --compare reports/blip.json reports/attention.json --output table.md\n"
            "METEOR and the PTB tokenizer need `java` on PATH; --no-meteor runs without Java."
        ),
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="BLIP save_pretrained dir, or a baseline dir (with baseline.json)")
    what.add_argument("--url", help="HOST:PORT of the running Triton pipeline (English + Arabic captions)")
    what.add_argument("--compare", nargs="+", metavar="REPORT", help="combine JSON reports into one table")
    parser.add_argument("--protocol", choices=("grpc", "http"), help="with --url (default: from the port)")
    parser.add_argument("--lang", choices=("both", "en"), default="both", help="with --url: languages scored")
    parser.add_argument(
        "--data", default=str(DEFAULT_DATA), help="Flickr8k-layout folder (default: %(default)s)"
    )
    parser.add_argument(
        "--split", choices=("dev", "test", "train"), default="dev", help="default: %(default)s"
    )
    parser.add_argument("--limit", type=_positive, help="score only the first N images of the split present")
    parser.add_argument(
        "--arabic-captions",
        default=str(DEFAULT_ARABIC),
        help="Arabic Flickr8k references (default: %(default)s)",
    )
    parser.add_argument(
        "--num-beams", type=_positive, help="caption beams (default: the checkpoint's config)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="with --url: seconds per request (default: %(default)s)"
    )
    parser.add_argument(
        "--translation-num-beams", "--translation-beams", type=_positive, help="with --url: translation beams"
    )
    parser.add_argument(
        "--max-length",
        type=_positive,
        default=64,
        help="checkpoint captions: max tokens incl. prompt (%(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=8, help="images per batch (default: %(default)s)"
    )
    parser.add_argument("--samples", type=int, default=5, help="sample captions kept in the report")
    parser.add_argument("--label", help="row name in the table (default: from the checkpoint or url)")
    parser.add_argument(
        "--output",
        help="report JSON (default report.json; a .md table is written beside it); table with --compare",
    )
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (Java)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
