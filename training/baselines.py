"""`captioning train-baseline` and `captioning attention-map`: the original study's from-scratch captioners.

A baseline checkpoint is a folder: `baseline.json` (model type, options, vocabulary), `decoder.pt` (the
LSTM decoder) and `encoder/` (the frozen ResNet, `save_pretrained` format). `load_captioner(dir)` turns it
into an object with `caption(images)`, which `captioning evaluate --checkpoint DIR` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `captioning --help` must not import torch
    from captioning.datasets import DataReport
    from captioning.training.baseline_models import ModelOptions
    from captioning.training.baseline_train import CaptionSet, TrainOptions
    from captioning.training.vocab import Vocab

LOG = logging.getLogger(__name__)
CALIBRATION_IMAGES = 64


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train_baseline(subparsers)
    _register_attention_map(subparsers)


def _register_train_baseline(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train-baseline",
        help="train the from-scratch CNN-LSTM captioners (merge, or Show-Attend-Tell attention)",
        description="Train a from-scratch captioner on a Flickr8k-layout folder (Images/, captions.txt, "
        "Flickr_8k.{train,dev}Images.txt). A frozen ResNet-50 (transformers ResNetModel) encodes each image "
        "once (features cached); only the LSTM decoder trains. Without --encoder the ResNet is RANDOMLY "
        "initialised (ImageNet weights cannot be downloaded here). Writes the best checkpoint, metrics.json "
        "and loss_curve.png to --output.",
    )
    _add_data_and_model_arguments(train)
    _add_training_arguments(train)
    train.set_defaults(func=run_train)


def _add_data_and_model_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--data", required=True, help="Flickr8k-layout folder, e.g. ../shared/data/flickr8k")
    train.add_argument("--output", required=True, help="checkpoint folder to write")
    train.add_argument("--model", choices=("merge", "attention"), default="attention")
    train.add_argument("--encoder", help="local ResNet checkpoint dir (e.g. a saved microsoft/resnet-50)")
    train.add_argument("--feature-cache", help="folder for cached CNN features (default: OUTPUT/features)")
    train.add_argument("--attention", choices=("dot", "additive"), default="additive")
    train.add_argument("--glove", help="GloVe text file ('word v1 v2 ...'); its vectors are used frozen")
    train.add_argument(
        "--embed-dim", type=int, default=256, help="ignored with --glove (the file's dimension)"
    )
    train.add_argument("--hidden", type=int, help="LSTM size (default: 256 merge, 512 attention)")
    train.add_argument("--dropout", type=float, default=0.5)
    train.add_argument("--min-count", type=int, default=2, help="vocabulary: words seen at least this often")


def _add_training_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument(
        "--batch-size", type=int, default=16, help="images per batch (with all their captions)"
    )
    train.add_argument("--lr", type=float, default=4e-4, help="Adam learning rate")
    train.add_argument(
        "--alpha-c", type=float, default=1.0, help="doubly stochastic attention weight; 0 = off"
    )
    train.add_argument("--max-len", type=int, default=30, help="longest caption, in words")
    train.add_argument("--beam", type=int, default=3, help="beam width for dev captions; 0 = greedy")
    train.add_argument(
        "--bleu-images", type=int, default=200, help="dev images captioned for BLEU each epoch"
    )
    train.add_argument("--limit-train", type=int, help="use only the first N train images (smoke runs)")
    train.add_argument("--limit-dev", type=int, help="use only the first N dev images")
    train.add_argument(
        "--time-limit",
        type=float,
        help="minutes for the whole run, features included; no new epoch starts when it would end past it",
    )
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--no-meteor", action="store_true", help="final dev scores without METEOR (no JVM start)"
    )
    train.add_argument("--no-progress", action="store_true")


def _register_attention_map(subparsers: argparse._SubParsersAction) -> None:
    maps = subparsers.add_parser(
        "attention-map",
        help="draw where an attention baseline looks for each word of its caption (PNG)",
        description="Caption each image with an attention checkpoint from `train-baseline --model attention` "
        "and draw one panel per generated word, the 7x7 attention weights upsampled over the image.",
    )
    maps.add_argument("--checkpoint", required=True, help="folder written by train-baseline")
    maps.add_argument("images", nargs="+", help="image files")
    maps.add_argument("--output-dir", required=True, help="where <image-stem>_attention.png files go")
    maps.add_argument("--beam", type=int, help="beam width (default: the checkpoint's)")
    maps.add_argument("--columns", type=int, default=5, help="panels per row")
    maps.set_defaults(func=run_attention_map)


@dataclasses.dataclass
class _Splits:
    """The train and dev images of a Flickr8k-layout folder, each with its captions, in split-file order."""

    train_images: list[Path]
    train_caps: list[list[str]]
    dev_images: list[Path]
    dev_caps: list[list[str]]
    report: DataReport


def _grouped(examples) -> tuple[list[Path], list[list[str]]]:
    by_image: dict[Path, list[str]] = {}
    for example in examples:
        by_image.setdefault(example.image, []).append(example.caption)
    return list(by_image), list(by_image.values())


def _read_splits(args: argparse.Namespace) -> _Splits:
    from captioning.datasets import DataReport, FlickrLayout

    layout, report = FlickrLayout(Path(args.data)), DataReport()
    train_images, train_caps = _grouped(layout.examples("train", report, limit=args.limit_train))
    dev_images, dev_caps = _grouped(layout.examples("dev", report, limit=args.limit_dev))
    LOG.info("data: %d train images, %d dev images", len(train_images), len(dev_images))
    return _Splits(train_images, train_caps, dev_images, dev_caps, report)


def _encoded_sets(args: argparse.Namespace, output: Path, splits: _Splits) -> tuple[CaptionSet, CaptionSet]:
    """(train, dev) CaptionSets of frozen-ResNet features, cached; the encoder is saved to OUTPUT/encoder."""
    from captioning.training import baseline_features as bf
    from captioning.training.baseline_train import CaptionSet

    calibration = None
    if args.encoder is None:
        from PIL import Image

        calibration = bf.preprocess([Image.open(p) for p in splits.train_images[:CALIBRATION_IMAGES]])
    encoder = bf.build_encoder(args.encoder, seed=args.seed, calibrate=calibration)
    encoder.save_pretrained(output / "encoder")
    encoder_id = (
        str(Path(args.encoder).resolve())
        if args.encoder
        else f"random-{json.dumps(encoder.config.to_dict(), sort_keys=True)}-seed{args.seed}-calib{len(calibration)}"
    )
    cache = bf.FeatureCache(Path(args.feature_cache or output / "features"), progress=not args.no_progress)
    train_set = CaptionSet(
        [p.name for p in splits.train_images],
        cache.features(encoder, encoder_id, splits.train_images),
        splits.train_caps,
    )
    dev_set = CaptionSet(
        [p.name for p in splits.dev_images],
        cache.features(encoder, encoder_id, splits.dev_images),
        splits.dev_caps,
    )
    return train_set, dev_set


def _model_options(args: argparse.Namespace, glove) -> ModelOptions:
    from captioning.training.baseline_models import ModelOptions

    return ModelOptions(
        model=args.model,
        embed_dim=glove.shape[1] if glove is not None else args.embed_dim,
        hidden=args.hidden or (256 if args.model == "merge" else 512),
        attention=args.attention,
        dropout=args.dropout,
        frozen_embeddings=glove is not None,
    )


def _train_options(args: argparse.Namespace) -> TrainOptions:
    from captioning.training.baseline_train import TrainOptions

    return TrainOptions(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, alpha_c=args.alpha_c,
        max_len=args.max_len, beam=args.beam, bleu_images=args.bleu_images, time_limit=args.time_limit,
        progress=not args.no_progress,
    )  # fmt: skip


def _checkpoint_config(
    args: argparse.Namespace,
    model_options: ModelOptions,
    options: TrainOptions,
    vocab: Vocab,
    train_set: CaptionSet,
) -> dict:
    """What `baseline.json` holds (with the best epoch added when it is saved): enough to rebuild the decoder."""
    return {
        "type": args.model,
        "model": dataclasses.asdict(model_options),
        "training": dataclasses.asdict(options),
        "vocab": vocab.words,
        "feature_dim": int(train_set.features.shape[-1]),
        "regions": int(train_set.features.shape[1]),
        "encoder": args.encoder or "random init (no ImageNet weights)",
        "glove": args.glove,
    }


def _final_dev_scores(
    output: Path, dev_set: CaptionSet, vocab: Vocab, options: TrainOptions, meteor: bool
) -> dict:
    """The saved best checkpoint, reloaded, captioning the whole dev split and scored on it."""
    from captioning.training.baseline_train import all_scores, caption_all

    captioner = load_captioner(output)
    hypotheses = caption_all(captioner.model, dev_set, vocab, options.beam, options.max_len)
    return {
        "images": len(hypotheses),
        "beam": options.beam,
        "scores": all_scores(hypotheses, dev_set.captions, meteor=meteor),
        "captions": dict(zip(dev_set.names, hypotheses, strict=True)),
    }


def _write_metrics(
    output: Path, config: dict, vocab: Vocab, splits: _Splits, final: dict, result: dict, begun: float
) -> None:
    metrics = {
        "config": {k: v for k, v in config.items() if k != "vocab"},
        "vocab_size": len(vocab),
        "train_images": len(splits.train_images),
        "train_captions": sum(map(len, splits.train_caps)),
        "dev": final,
        "data_report": splits.report.summary(),
        "total_minutes": round((time.monotonic() - begun) / 60, 2),
        **result,
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    LOG.info(
        "dev scores of the best epoch (%d) on %d images: %s",
        result["best_epoch"],
        final["images"],
        final["scores"],
    )
    LOG.info("wrote %s (metrics.json, loss_curve.png)", output)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from captioning.training.baseline_train import train
    from captioning.training.vocab import Vocab, load_glove

    if args.threads:
        torch.set_num_threads(args.threads)
    begun = time.monotonic()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    splits = _read_splits(args)
    train_set, dev_set = _encoded_sets(args, output, splits)

    vocab = Vocab.build((c for caps in splits.train_caps for c in caps), args.min_count)
    glove = load_glove(Path(args.glove), vocab, args.seed)[0] if args.glove else None
    model_options, options = _model_options(args, glove), _train_options(args)
    config = _checkpoint_config(args, model_options, options, vocab, train_set)
    if args.time_limit:
        # What the features took comes off the training time; about a minute is kept for the final scores.
        options.time_limit = max(args.time_limit - (time.monotonic() - begun) / 60 - 1.0, 0.01)
    result = train(train_set, dev_set, vocab, model_options, options, output, config, glove)

    final = _final_dev_scores(output, dev_set, vocab, options, meteor=not args.no_meteor)
    _write_metrics(output, config, vocab, splits, final, result, begun)
    return 0


class BaselineCaptioner:
    """A trained baseline: images in, captions out (beam search)."""

    def __init__(self, directory: Path) -> None:
        import torch
        from transformers import ResNetModel

        from captioning.training.baseline_models import ModelOptions, build_model
        from captioning.training.vocab import Vocab

        directory = Path(directory)
        config_path = directory / "baseline.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: not a baseline checkpoint (no baseline.json)")
        self.config = json.loads(config_path.read_text(encoding="utf-8"))
        self.type = self.config["type"]
        self.vocab = Vocab(self.config["vocab"])
        self.beam = int(self.config["training"]["beam"])
        self.max_len = int(self.config["training"]["max_len"])
        self.model = build_model(
            ModelOptions(**self.config["model"]), len(self.vocab), self.config["feature_dim"]
        )
        # Tensors only: weights_only refuses anything else a tampered checkpoint could unpickle.
        self.model.load_state_dict(
            torch.load(directory / "decoder.pt", map_location="cpu", weights_only=True)
        )
        self.model.eval()
        encoder = ResNetModel.from_pretrained(  # nosec B615 # the baseline checkpoint's own encoder/ dir, local_files_only
            str(directory / "encoder"), local_files_only=True
        )
        self.encoder = encoder.eval()

    def features(self, images):
        import torch

        from captioning.training.baseline_features import encode, preprocess

        images = list(images)
        chunks = [encode(self.encoder, preprocess(images[i : i + 16])) for i in range(0, len(images), 16)]
        return (
            torch.cat(chunks)
            if chunks
            else torch.zeros(0, self.config["regions"], self.config["feature_dim"])
        )

    def caption(self, images, beam: int | None = None) -> list[str]:
        from captioning.training.baseline_train import decode

        width = self.beam if beam is None else beam
        features = self.features(images)
        return [
            " ".join(self.vocab.decode(decode(self.model, f, self.vocab, width, self.max_len).tokens))
            for f in features
        ]

    def caption_with_attention(self, image, beam: int | None = None):
        """(words, alphas [len(words), regions]) for one image; attention checkpoints only."""
        import torch

        from captioning.training.baseline_train import decode

        if self.type != "attention":
            raise ValueError(f"a {self.type!r} baseline has no attention; train one with --model attention")
        hyp = decode(
            self.model,
            self.features([image])[0],
            self.vocab,
            self.beam if beam is None else beam,
            self.max_len,
        )
        words = self.vocab.decode(hyp.tokens)
        alphas = torch.stack(hyp.alphas[: len(words)]) if words else torch.zeros(0, self.config["regions"])
        return words, alphas.numpy()


def load_captioner(directory: str | Path) -> BaselineCaptioner:
    return BaselineCaptioner(Path(directory))


def run_attention_map(args: argparse.Namespace) -> int:
    from PIL import Image

    from captioning.training.attention_maps import draw_attention

    captioner = load_captioner(args.checkpoint)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        image = Image.open(name).convert("RGB")
        words, alphas = captioner.caption_with_attention(image, args.beam)
        path = output / f"{Path(name).stem}_attention.png"
        draw_attention(image, words, alphas, path, columns=args.columns)
        LOG.info("%s: %r -> %s", name, " ".join(words), path)
    return 0
