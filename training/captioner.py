"""`captioning train-captioner`: fine-tune a BlipForConditionalGeneration checkpoint on a caption dataset
(Flickr8k layout, COCO, Karpathy JSON, an imagefolder, `hub:NAME` or a `datasets` folder: docs/training.md,
"Data formats"), every weight or LoRA adapters (`--lora-rank`, training/lora.py).

Defaults are the original study's (7 epochs, batch 8, AdamW lr 5e-5, linear schedule, captions padded to 64 tokens
with the pads masked out of the loss), but only on the official train split: the dev split picks the best
checkpoint and the test split is never read.

How the loss is fed: `BlipForConditionalGeneration.forward` (transformers 4.57) passes `input_ids` to the text
decoder as given and computes the loss of position t's prediction against `labels[t + 1]`. `generate()` starts
every caption from `[DEC]` (the text config's bos), not the tokenizer's `[CLS]`, so the first input id is replaced
by `[DEC]` here too; labels are the same ids with `-100` at the pads and at the first position (never scored).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from captioning.caption_sources import CAPTION_FORMATS, detect_caption_format, open_caption_source
from captioning.datasets import (
    CaptionExample,
    DataError,
    DataReport,
    FlickrLayout,
    ImageLike,
    flickr_examples,
    load_image,
    read_captions,
    read_split,
)
from captioning.hub_sources import HubOptions, add_hub_arguments, hub_options_from_args
from captioning.training import lora
from captioning.training.distributed import is_main_process
from captioning.training.lora import (
    FULL_FINE_TUNING,
    LoraOptions,
    add_lora_arguments,
    lora_options_from_args,
)
from captioning.training.train_args import TrainConfig

LOG = logging.getLogger(__name__)

DEFAULTS = TrainConfig(epochs=7, batch_size=8, lr=5e-5, dev_sample=100, best_metric="loss")


@dataclasses.dataclass
class CaptionerData:
    """Where the captions come from and how much of them to use."""

    root: Path
    limit_images: int | None = None  # per split, for smoke runs
    strict: bool = False
    format: str | None = None  # one of caption_sources.CAPTION_FORMATS; None: detected from root
    images: Path | None = None  # COCO / Karpathy image folder (default: see caption_sources)
    caption_column: str | None = None  # imagefolder: `text`; hf: the first of caption/captions/text present
    hub: HubOptions = HubOptions()  # hub:NAME and dataset folders: columns, splits, config, revision


class CaptionerTask:
    """BLIP captioning for the shared `Trainer`."""

    name = "train-captioner"

    def __init__(
        self,
        model_source: str | Path,
        data: CaptionerData,
        config: TrainConfig,
        lora_options: LoraOptions = FULL_FINE_TUNING,
    ):
        from transformers import BlipConfig, BlipProcessor

        self.config = config
        self.lora = lora_options
        self.last_samples: list[tuple[str, str]] = []  # (reference, caption) of the last dev_metrics
        self.report = DataReport(strict=data.strict)
        self.missing_images: dict[str, int] = {}
        self._load_data(data)
        revision = config.model_revision
        self.processor = BlipProcessor.from_pretrained(str(model_source), revision=revision)
        self.bos_id = BlipConfig.from_pretrained(
            str(model_source), revision=revision
        ).text_config.bos_token_id
        self.dev_refs = _group_by_image(self.dev)

    def _load_data(self, data: CaptionerData) -> None:
        """Train and dev examples; Flickr8k keeps its own reader (missing images logged once, not per line),
        every other format goes through `open_caption_source` with the test split refused."""
        fmt = data.format or detect_caption_format(Path(data.root))
        if fmt == "flickr8k":
            layout = FlickrLayout(Path(data.root))
            captions = read_captions(layout.captions, self.report)  # once: its problems are reported once
            self.train = self._split(layout, "train", captions, data.limit_images)
            self.dev = self._split(layout, "dev", captions, data.limit_images)
            _refuse_test_images(layout, self.train + self.dev)
            return
        source = open_caption_source(data.root, fmt, data.images, data.caption_column, data.hub)
        self.train = source.examples("train", self.report, data.limit_images, training=True)
        self.dev = source.examples("dev", self.report, data.limit_images, training=True)
        self.missing_images = {"train": 0, "dev": 0, **source.missing_images}

    def _split(
        self, layout: FlickrLayout, split: str, captions: dict[str, list[str]], limit: int | None
    ) -> list[CaptionExample]:
        """Like `FlickrLayout.examples`: split images absent from Images/ are counted and logged once (a partial
        image folder, like the shared one, is normal), not reported per line; the count goes to metrics.json."""
        names = read_split(layout.split(split))
        present = [name for name in names if (layout.images / name).is_file()]
        self.missing_images[split] = len(names) - len(present)
        if self.missing_images[split]:
            LOG.info(
                "%s split: %d of %d images are present in %s", split, len(present), len(names), layout.images
            )
        examples = flickr_examples(layout.images, captions, present[:limit], self.report, layout.split(split))
        if not examples:
            raise DataError(
                f"{layout.split(split)}: no captioned image of the {split} split in {layout.images}"
            )
        return examples

    def load_model(self, source: str | Path) -> Any:
        """The checkpoint; with LoRA, wrapped in a fresh adapter, or (resuming from last/) its saved one."""
        if not self.lora.enabled:
            return _blip(source, self.config.model_revision)
        adapter = lora.resume_adapter(Path(source)) if Path(source) == self.config.output / "last" else None
        if adapter is not None:
            return lora.load_trainable(adapter, _blip, self.lora)
        return lora.wrap(
            _blip(source, self.config.model_revision), "blip", self.lora, source, self.config.model_revision
        )

    def train_items(self) -> list[CaptionExample]:
        return self.train

    def dev_items(self) -> list[CaptionExample]:
        return self.dev

    def _pixels(self, paths: list[ImageLike]):
        images = []
        for path in paths:
            try:
                images.append(load_image(path))
            except OSError as exc:
                raise DataError(f"{path}: cannot read the image ({exc})") from exc
        return self.processor(images=images, return_tensors="pt").pixel_values

    def collate(self, items: list[CaptionExample]) -> dict[str, Any]:
        text = self.processor.tokenizer(
            [item.caption for item in items],
            padding=self.config.padding,
            max_length=self.config.max_length,
            truncation=True,
            return_tensors="pt",
        )
        input_ids = text.input_ids.clone()
        input_ids[:, 0] = self.bos_id  # [CLS] -> [DEC], the prompt generate() uses
        labels = input_ids.masked_fill(text.attention_mask == 0, -100)
        labels[
            :, 0
        ] = -100  # never scored (the model compares position t with label t + 1); keeps counts honest
        return {
            "pixel_values": self._pixels([item.image for item in items]),
            "input_ids": input_ids,
            "attention_mask": text.attention_mask,
            "labels": labels,
        }

    def generate(self, model: Any, images: list[ImageLike], device: Any) -> list[str]:
        """Captions as served: the checkpoint's generation config, max_length 64."""
        captions: list[str] = []
        for start in range(0, len(images), self.config.batch_size):
            pixels = self._pixels(images[start : start + self.config.batch_size]).to(device)
            ids = model.generate(pixels, max_length=self.config.max_length)
            captions.extend(self.processor.batch_decode(ids, skip_special_tokens=True))
        return captions

    def dev_metrics(self, model: Any, device: Any) -> dict[str, float]:
        from captioning.training.metrics import bleu_scores

        images = list(self.dev_refs)[: self.config.dev_sample]
        hypotheses = self.generate(model, images, device)
        self.last_samples = [(self.dev_refs[i][0], h) for i, h in zip(images[:4], hypotheses, strict=False)]
        return bleu_scores(hypotheses, [self.dev_refs[image] for image in images])

    def save(self, model: Any, path: Path) -> None:
        """`save_pretrained` with the processor; with LoRA, the merged weights and the adapter (adapter/)."""
        if self.lora.enabled:
            lora.save(model, path, self.processor.save_pretrained)
            return
        model.save_pretrained(path)
        self.processor.save_pretrained(path)

    def data_summary(self) -> dict[str, Any]:
        return {
            "train_images": len({e.image for e in self.train}),
            "train_captions": len(self.train),
            "dev_images": len(self.dev_refs),
            "dev_captions": len(self.dev),
            "missing_images": self.missing_images,
            **self.report.summary(),
        }


def _refuse_test_images(layout: FlickrLayout, examples: list[CaptionExample]) -> None:
    """The original study trained on test images; a split file that does so here is an error, not a warning."""
    test_split = layout.split("test")
    if not test_split.is_file():
        return
    shared = {e.image.name for e in examples} & set(read_split(test_split))
    if shared:
        raise DataError(
            f"{len(shared)} train/dev images are in the test split {test_split}, e.g. {sorted(shared)[0]}"
        )


def add_caption_data_arguments(
    parser: argparse.ArgumentParser, required: bool, default: str | None = None
) -> None:
    """`--data`, `--data-format`, `--images`, `--caption-column`: shared with `captioning evaluate`."""
    parser.add_argument(
        "--data",
        required=required,
        default=default,
        help="captions: a Flickr8k-layout folder, a COCO captions_*.json, a Karpathy dataset_*.json, an "
        "imagefolder with metadata.jsonl/metadata.csv, hub:NAME (a Hub dataset) or a datasets folder "
        "(save_to_disk or parquet/arrow files) (docs/training.md, 'Data formats')"
        + ("; default: %(default)s" if default else ""),
    )
    parser.add_argument(
        "--data-format",
        choices=CAPTION_FORMATS,
        help="force the caption format (default: detected from --data)",
    )
    parser.add_argument(
        "--images",
        help="COCO/Karpathy image folder (default: COCO: the folder named like the file after captions_, beside "
        "its folder; Karpathy: the JSON's folder or its Images/ subfolder)",
    )
    parser.add_argument(
        "--caption-column",
        help="caption column; default: imagefolder: text; hf: the first of caption, captions, text present",
    )


def _blip(source: str | Path, revision: str | None) -> Any:
    from transformers import BlipForConditionalGeneration

    return BlipForConditionalGeneration.from_pretrained(str(source), revision=revision)


def _group_by_image(examples: list[CaptionExample]) -> dict[ImageLike, list[str]]:
    refs: dict[Path, list[str]] = {}
    for example in examples:
        refs.setdefault(example.image, []).append(example.caption)
    return refs


def train_captioner(
    model: str | Path, data: CaptionerData, config: TrainConfig, lora_options: LoraOptions = FULL_FINE_TUNING
) -> dict[str, Any]:
    """Fine-tune and return the run's metrics (also written to OUTPUT/metrics.json)."""
    from captioning.training.loop import Trainer

    task = CaptionerTask(model, data, config, lora_options)
    return Trainer(config, task, model).train()


def _run(args: argparse.Namespace) -> int:
    from captioning.training.train_args import config_from_args

    config = config_from_args(args)
    data = CaptionerData(
        root=Path(args.data),
        limit_images=args.limit_images,
        strict=args.strict,
        format=args.data_format,
        images=Path(args.images) if args.images else None,
        caption_column=args.caption_column,
        hub=hub_options_from_args(args),
    )
    metrics = train_captioner(args.model, data, config, lora_options_from_args(args))
    if is_main_process():  # every rank returns the same metrics; one prints them
        print(f"best checkpoint: {config.output / 'best'} ({metrics['best']})")
        print(f"metrics: {config.output / 'metrics.json'}; loss curve: {config.output / 'loss_curve.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from captioning.training.train_args import add_model_revision_argument, add_train_arguments

    parser = subparsers.add_parser(
        "train-captioner",
        help="fine-tune a BLIP captioner on Flickr8k, COCO, Karpathy or imagefolder captions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: captioning train-captioner --model Salesforce/blip-image-captioning-base "
        "--data ../shared/data/flickr8k --output runs/blip\n"
        "then:    captioning export --captioner runs/blip/best --translator ... --output repo",
    )
    parser.add_argument(
        "--model",
        default="Salesforce/blip-image-captioning-base",
        help="BlipForConditionalGeneration checkpoint with its processor: hub id or folder; default: %(default)s",
    )
    add_model_revision_argument(parser, "captioner")
    add_caption_data_arguments(parser, required=True)
    add_hub_arguments(parser, train_split=True, image_column=True)
    parser.add_argument("--limit-images", type=int, help="use at most N images of each split (smoke runs)")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad data line instead of skipping it"
    )
    add_train_arguments(parser, DEFAULTS)
    add_lora_arguments(parser)
    parser.set_defaults(func=_run)
