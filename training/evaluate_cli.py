"""`captioning evaluate`: BLEU-1..4, METEOR and CIDEr of a captioner on a caption dataset's split.

`--data` takes the sources training takes (Flickr8k layout, COCO, Karpathy JSON, imagefolder, `hub:NAME` or a
`datasets` folder); the test split is Flickr8k's test file, COCO's val file, Karpathy's `test` images, an
imagefolder's `split=test` rows or a dataset's `test` split (`--split dev`: its `--dev-split`, else the first of
validation/dev/val/valid). Evaluation may read any split; only training refuses the test split.

Three ways in: a checkpoint directory (a BLIP `save_pretrained` dir, or a baseline dir with `baseline.json`
from `captioning train-baseline`), the running Triton pipeline (`--url`: English captions against the Flickr8k
references, Arabic captions against the Arabic Flickr8k references, normalised), or `--compare` to put several
saved reports into one table. Each evaluation writes a JSON report and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioning.datasets import DataError
from captioning.hub_sources import add_hub_arguments, hub_options_from_args
from captioning.training import report as reports
from captioning.training.captioner import add_caption_data_arguments
from captioning.training.evaluate import (
    DEFAULT_ARABIC,
    DEFAULT_DATA,
    EvalOptions,
    EvaluateError,
    evaluate_checkpoint,
    evaluate_url,
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
        data_format=args.data_format,
        images=Path(args.images) if args.images else None,
        caption_column=args.caption_column,
        hub=hub_options_from_args(args),
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
    add_caption_data_arguments(parser, required=False, default=str(DEFAULT_DATA))
    add_hub_arguments(parser, train_split=False, image_column=True)
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
