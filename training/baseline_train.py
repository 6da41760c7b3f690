"""Training loop of the from-scratch baselines on cached CNN features (`captioning train-baseline`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path

import torch

from captioning.training.baseline_decode import Hypothesis, beam_search
from captioning.training.baseline_models import ModelOptions, build_model, caption_loss
from captioning.training.vocab import Vocab

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainOptions:
    epochs: int = 20
    batch_size: int = 16  # images per batch; each brings all its captions (5 in Flickr8k)
    lr: float = 4e-4
    seed: int = 0
    alpha_c: float = 1.0  # doubly stochastic attention regularisation; 0 turns it off
    clip: float = 5.0
    max_len: int = 30
    beam: int = 3
    bleu_images: int = 200  # dev images decoded for BLEU after each epoch
    time_limit: float | None = None  # minutes; no new epoch starts when it would run past it
    progress: bool = True


@dataclasses.dataclass
class CaptionSet:
    """Images (as rows of a feature tensor) with their reference captions."""

    names: list[str]
    features: torch.Tensor  # [N, R, C] float16
    captions: list[list[str]]

    def encoded(self, vocab: Vocab, max_len: int) -> list[tuple[int, list[int]]]:
        return [(i, vocab.encode(c, max_len)) for i, caps in enumerate(self.captions) for c in caps]


def batches(data: CaptionSet, vocab: Vocab, options: TrainOptions, shuffle: bool, epoch: int = 0):
    """(features [n, R, C], rows [B], inputs [B, T], targets [B, T], mask [B, T]) grouped by image."""
    order = list(range(len(data.names)))
    if shuffle:
        random.Random(options.seed * 1000 + epoch).shuffle(order)
    for start in range(0, len(order), options.batch_size):
        images = order[start : start + options.batch_size]
        rows, seqs = [], []
        for row, image in enumerate(images):
            for caption in data.captions[image]:
                rows.append(row)
                seqs.append(vocab.encode(caption, options.max_len))
        width = max(len(s) for s in seqs)
        padded = torch.tensor([s + [vocab.pad] * (width - len(s)) for s in seqs])
        targets = padded[:, 1:]
        yield data.features[images].float(), torch.tensor(rows), padded[:, :-1], targets, targets != vocab.pad


def dev_loss(model, data: CaptionSet, vocab: Vocab, options: TrainOptions) -> float:
    model.eval()
    total, words = 0.0, 0
    with torch.no_grad():
        for features, rows, inputs, targets, mask in batches(data, vocab, options, shuffle=False):
            n = int(mask.sum())
            total += float(caption_loss(model, features, rows, inputs, targets, mask)[1]) * n
            words += n
    return total / max(words, 1)


def decode(model, features: torch.Tensor, vocab: Vocab, beam: int, max_len: int) -> Hypothesis:
    """Beam search on one image's features [R, C] -> the best Hypothesis; beam 0 or 1 is greedy decoding
    (a width-1 beam is exactly greedy, and keeps the attention weights)."""
    model.eval()
    with torch.no_grad():
        state = model.init_state(features[None].float())
        return beam_search(model.step, state, vocab.start, vocab.end, max(beam, 1), max_len)


def caption_all(model, data: CaptionSet, vocab: Vocab, beam: int, max_len: int, limit: int | None = None):
    count = len(data.names) if limit is None else min(limit, len(data.names))
    return [
        " ".join(vocab.decode(decode(model, data.features[i], vocab, beam, max_len).tokens))
        for i in range(count)
    ]


def bleu(hypotheses: list[str], references: list[list[str]]) -> dict[str, float] | None:
    """BLEU-1..4 from the shared COCO-metrics module (another part of issue 3); None when it is missing."""
    try:
        from captioning.training.metrics import bleu_scores
    except ImportError as exc:
        LOG.warning("BLEU skipped: captioning.training.metrics is not available (%s)", exc)
        return None
    return {k: float(v) for k, v in bleu_scores(hypotheses, references).items()}


def all_scores(hypotheses: list[str], references: list[list[str]], meteor: bool = True) -> dict[str, float]:
    """BLEU-1..4, plus METEOR and CIDEr when `caption_scores` is available (it needs Java)."""
    try:
        from captioning.training.metrics import caption_scores

        return {k: float(v) for k, v in caption_scores(hypotheses, references, meteor=meteor).items()}
    except Exception as exc:  # noqa: BLE001 - METEOR needs Java; fall back to BLEU alone, loudly
        LOG.warning("METEOR/CIDEr skipped (%s: %s); BLEU only", type(exc).__name__, exc)
        return bleu(hypotheses, references) or {}


def save_decoder(model, directory: Path, config: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "decoder.pt")
    (directory / "baseline.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax.plot(epochs, [h["dev_loss"] for h in history], marker="o", label="dev loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per word")
    if any(h.get("dev_bleu") for h in history):
        twin = ax.twinx()
        twin.plot(
            epochs,
            [(h.get("dev_bleu") or {}).get("BLEU-4", math.nan) for h in history],
            "g--",
            label="dev BLEU-4",
        )
        twin.set_ylabel("dev BLEU-4")
        twin.legend(loc="upper center")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclasses.dataclass
class _Learner:
    """The decoder being trained with what its updates need."""

    model: torch.nn.Module
    params: list[torch.nn.Parameter]  # the trainable ones (frozen GloVe embeddings are not)
    optimizer: torch.optim.Optimizer
    alpha_c: float  # attention regularisation weight; 0 for the merge model


def _learner(
    model_options: ModelOptions, options: TrainOptions, vocab: Vocab, features: int, glove=None
) -> _Learner:
    """A seeded fresh decoder, with the GloVe vectors frozen in if given, and its Adam optimizer."""
    torch.manual_seed(options.seed)
    model = build_model(model_options, len(vocab), features)
    if glove is not None:
        if model_options.model != "attention":
            model.embed.weight.data.copy_(glove)
            model.embed.weight.requires_grad_(False)
        else:
            model.set_embeddings(glove)
    params = [p for p in model.parameters() if p.requires_grad]
    LOG.info("%s model: %d trainable parameters", model_options.model, sum(p.numel() for p in params))
    optimizer = torch.optim.Adam(params, lr=options.lr)
    alpha_c = options.alpha_c if model_options.model == "attention" else 0.0
    return _Learner(model, params, optimizer, alpha_c)


def _train_epoch(
    learner: _Learner, train_set: CaptionSet, vocab: Vocab, options: TrainOptions, epoch: int
) -> float:
    """One pass over the training images; the mean cross-entropy per word of its batches."""
    from tqdm import tqdm

    model, optimizer = learner.model, learner.optimizer
    model.train()
    total, steps = 0.0, 0
    bar = tqdm(
        batches(train_set, vocab, options, shuffle=True, epoch=epoch),
        total=math.ceil(len(train_set.names) / options.batch_size),
        desc=f"epoch {epoch}/{options.epochs}",
        disable=not options.progress,
    )
    for features, rows, inputs, targets, mask in bar:
        loss, cross_entropy = caption_loss(model, features, rows, inputs, targets, mask, learner.alpha_c)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.params, options.clip)
        optimizer.step()
        total, steps = total + float(cross_entropy), steps + 1
        bar.set_postfix(loss=f"{total / steps:.3f}")
    return total / steps


def _epoch_record(
    model,
    dev_set: CaptionSet,
    vocab: Vocab,
    options: TrainOptions,
    epoch: int,
    train_loss: float,
    started: float,
) -> dict:
    """The epoch's history entry: train and dev loss, dev BLEU, a sample caption, and its duration."""
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "dev_loss": dev_loss(model, dev_set, vocab, options),
    }
    hyps = caption_all(model, dev_set, vocab, options.beam, options.max_len, options.bleu_images)
    record["dev_bleu"] = bleu(hyps, dev_set.captions[: len(hyps)])
    record["sample"] = {"image": dev_set.names[0], "caption": hyps[0]}
    record["seconds"] = round(time.monotonic() - started, 1)
    LOG.info(
        "epoch %d: train loss %.3f, dev loss %.3f, dev %s; %s: %r",
        epoch,
        record["train_loss"],
        record["dev_loss"],
        record["dev_bleu"],
        record["sample"]["image"],
        record["sample"]["caption"],
    )
    return record


def _out_of_time(options: TrainOptions, begun: float, record: dict) -> bool:
    """Whether another epoch as long as this one would end past `--time-limit` (never after the last one)."""
    elapsed = (time.monotonic() - begun) / 60
    if (
        options.time_limit
        and elapsed + record["seconds"] / 60 > options.time_limit
        and record["epoch"] < options.epochs
    ):
        LOG.info(
            "stopping after epoch %d: %.1f min spent of the %.1f-min limit",
            record["epoch"],
            elapsed,
            options.time_limit,
        )
        return True
    return False


def train(
    train_set: CaptionSet,
    dev_set: CaptionSet,
    vocab: Vocab,
    model_options: ModelOptions,
    options: TrainOptions,
    output: Path,
    config: dict,
    glove=None,
) -> dict:
    """Trains, keeps the best decoder (by dev BLEU-4, or dev loss when BLEU is unavailable) in `output`."""
    learner = _learner(model_options, options, vocab, train_set.features.shape[-1], glove)
    model = learner.model
    history, best, begun = [], None, time.monotonic()
    for epoch in range(1, options.epochs + 1):
        started = time.monotonic()
        train_loss = _train_epoch(learner, train_set, vocab, options, epoch)
        record = _epoch_record(model, dev_set, vocab, options, epoch, train_loss, started)
        history.append(record)
        key = record["dev_bleu"]["BLEU-4"] if record["dev_bleu"] else -record["dev_loss"]
        if best is None or key > best[0]:
            best = (key, epoch)
            save_decoder(model, output, {**config, "epoch": epoch})
            LOG.info("epoch %d is the best so far; saved to %s", epoch, output)
        plot_curves(history, output / "loss_curve.png")
        if _out_of_time(options, begun, record):
            break
    return {
        "history": history,
        "best_epoch": best[1],
        "train_minutes": round((time.monotonic() - begun) / 60, 2),
    }
