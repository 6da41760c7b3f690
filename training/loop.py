"""The training loop shared by `train-captioner` and `train-translator`.

One `Trainer` drives any `TrainTask` (a Hugging Face seq2seq-style model whose forward returns `.loss`): seeded,
resumable to the exact step and state, gradient accumulation, mixed precision on CUDA, per-epoch dev evaluation,
best/last checkpoints written with `save_pretrained` (so `captioning export` takes them directly), `metrics.json`
and a loss-curve PNG.

Checkpoint layout under the output folder:
    best/   the model + processor/tokenizer files with the best dev score so far
    last/   the same for the latest save, plus `trainer_state.pt` (optimizer, scheduler, scaler, RNG states,
            epoch, step, loss history): `--resume` continues from here at the same step with the same state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from captioning.training.loop_state import (
    STATE_FILE,
    TrainState,
    is_better,
    load_trainer_state,
    replace_dir,
    rng_states,
    seed_everything,
    set_rng_states,
)
from captioning.training.train_args import RESUME_KEYS, TrainConfig

LOG = logging.getLogger(__name__)


class TrainTask(Protocol):
    """What a trainer needs from a model family."""

    name: str

    def load_model(self, source: str | Path) -> Any:
        """The model from a hub id or folder (the `--model` source, or `last/` when resuming)."""

    def train_items(self) -> Sequence[Any]: ...

    def dev_items(self) -> Sequence[Any]: ...

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """A batch of tensors for `model(**batch)`, with `labels` -100 wherever no loss is taken."""

    def dev_metrics(self, model: Any, device: Any) -> dict[str, float]:
        """Generation-based dev scores (BLEU, chrF) on a sample, with the model in eval mode."""

    def save(self, model: Any, path: Path) -> None:
        """`save_pretrained` the model with its processor/tokenizer files."""

    def data_summary(self) -> dict[str, Any]: ...


def _precision(config: TrainConfig, device) -> str:
    import torch

    if config.precision != "auto":
        return config.precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class Trainer:
    def __init__(self, config: TrainConfig, task: TrainTask, model_source: str | Path):
        config.validate()
        self.config = config
        self.task = task
        self.model_source = model_source
        self.output = Path(config.output)
        self.state = TrainState()
        self._plotted = time.monotonic()

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        import torch
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        seed_everything(config.seed)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = _precision(config, self.device)
        last = self.output / "last"
        resuming = config.resume and (last / STATE_FILE).is_file()
        if config.resume and not resuming:
            LOG.warning("--resume: no checkpoint in %s; starting from %s", last, self.model_source)
        self.model = self.task.load_model(last if resuming else self.model_source).to(self.device)
        self.train_items = self.task.train_items()
        self.dev_items = self.task.dev_items()
        batches = math.ceil(len(self.train_items) / config.batch_size)
        self.steps_per_epoch = math.ceil(batches / config.grad_accum_steps)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = config.warmup_steps
        if warmup is None:
            warmup = int(config.warmup_ratio * self.total_steps)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if resuming:
            self._load_state(last / STATE_FILE)
        LOG.info(
            "%s: %d training items, %d dev items, %d steps/epoch, %d steps in all, %s on %s%s",
            self.task.name,
            len(self.train_items),
            len(self.dev_items),
            self.steps_per_epoch,
            self.total_steps,
            self.precision,
            self.device,
            f", resuming at step {self.state.step}" if resuming else "",
        )

    def _load_state(self, path: Path) -> None:
        saved = load_trainer_state(path)  # weights_only: refuses a file holding anything but plain data
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["state"])
        now = self.config.to_dict()
        changed = [k for k in RESUME_KEYS if saved["config"].get(k) != now.get(k)]
        if changed:
            LOG.warning(
                "resuming with different %s than the saved run: it will not match an uninterrupted run",
                ", ".join(f"{k} ({saved['config'].get(k)} -> {now.get(k)})" for k in changed),
            )
        set_rng_states(saved["rng"])

    # ------------------------------------------------------------------------------------------ data
    def _epoch_order(self, epoch: int) -> list[int]:
        """The shuffled item order of an epoch, a function of (seed, epoch) only: resuming needs no sampler state."""
        import torch

        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.train_items), generator=generator).tolist()

    def _loader(self, items: Sequence[Any], indices: list[int], shuffle_seed: int):
        import torch
        from torch.utils.data import DataLoader

        # A private generator: iterating a DataLoader otherwise draws from the global RNG that dropout uses.
        return DataLoader(
            items,
            batch_size=self.config.batch_size,
            sampler=indices,
            collate_fn=self.task.collate,
            num_workers=self.config.num_workers,
            generator=torch.Generator().manual_seed(shuffle_seed),
        )

    def _autocast(self):
        import contextlib

        import torch

        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}

    # ------------------------------------------------------------------------------------------ train
    def train(self) -> dict[str, Any]:
        """Run (or continue) training; returns what `metrics.json` holds."""
        from tqdm.auto import tqdm

        self._setup()
        config, state = self.config, self.state
        self.output.mkdir(parents=True, exist_ok=True)
        stop = min(self.total_steps, config.stop_at_step or self.total_steps)
        started = time.monotonic() - state.elapsed_s
        bar = tqdm(
            total=self.total_steps, initial=state.step, disable=not config.progress, desc=self.task.name
        )
        while state.step < stop:
            self.model.train()
            order = self._epoch_order(state.epoch)
            skip = state.step_in_epoch * config.grad_accum_steps * config.batch_size
            loader = self._loader(self.train_items, order[skip:], config.seed + state.epoch)
            for group in _chunks(iter(loader), config.grad_accum_steps):
                loss = self._optimizer_step(group)
                state.step += 1
                state.step_in_epoch += 1
                state.train_loss.append([state.step, loss])
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=state.epoch + 1)
                if (
                    config.eval_every
                    and state.step % config.eval_every == 0
                    and state.step < self.total_steps
                ):
                    self._evaluate()
                if state.step >= stop:
                    break
            epoch_done = state.step_in_epoch >= self.steps_per_epoch
            if epoch_done:
                state.epoch += 1
                state.step_in_epoch = 0
            final = state.step >= self.total_steps
            if (epoch_done and not config.eval_every) or final:
                self._evaluate()
            state.elapsed_s = time.monotonic() - started
            self._save_last()
        bar.close()
        state.elapsed_s = time.monotonic() - started
        return self._write_metrics(finished=state.step >= self.total_steps)

    def _optimizer_step(self, group: list[dict[str, Any]]) -> float:
        import torch

        total = 0.0
        for batch in group:
            with self._autocast():
                loss = self.model(**self._to_device(batch)).loss / len(group)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        if self.config.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not self.scaler.is_enabled() or self.scaler.get_scale() >= scale:
            self.scheduler.step()  # fp16 overflow: the optimizer skipped this step, so the schedule waits too
        self.optimizer.zero_grad(set_to_none=True)
        return total

    # ------------------------------------------------------------------------------------------ eval
    def dev_loss(self) -> float:
        """Token-weighted mean loss over the whole dev set."""
        import torch

        self.model.eval()
        total, tokens = 0.0, 0
        loader = self._loader(self.dev_items, list(range(len(self.dev_items))), 0)
        with torch.no_grad():
            for batch in loader:
                count = int((batch["labels"] != -100).sum())
                with self._autocast():
                    loss = self.model(**self._to_device(batch)).loss
                total += float(loss) * count
                tokens += count
        return total / max(tokens, 1)

    def _evaluate(self) -> None:
        import torch

        state = self.state
        record: dict[str, float] = {"step": state.step, "epoch": state.step / self.steps_per_epoch}
        record["dev_loss"] = self.dev_loss()
        with torch.no_grad():
            record.update(self.task.dev_metrics(self.model, self.device))
        self.model.train()
        state.evals.append(record)
        key = "dev_loss" if self.config.best_metric == "loss" else self.config.best_metric
        if key not in record:
            raise ValueError(f"best_metric {self.config.best_metric!r} is not one of {sorted(record)}")
        LOG.info(
            "step %d: %s", state.step, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step")
        )
        best = state.best[key] if state.best else None
        if is_better(self.config.best_metric, record[key], best):
            state.best = dict(record)
            replace_dir(lambda path: self.task.save(self.model, path), self.output / "best")
            LOG.info(
                "new best %s=%.4g at step %d: saved %s", key, record[key], state.step, self.output / "best"
            )

    # ------------------------------------------------------------------------------------------ save
    def _save_last(self) -> None:
        import torch

        payload = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "state": dataclasses.asdict(self.state),
            "config": self.config.to_dict(),
        }

        def write(path: Path) -> None:
            self.task.save(self.model, path)
            torch.save(payload, path / STATE_FILE)

        replace_dir(write, self.output / "last")
        # The PNG takes ~1 s: redraw it mid-run at most once a minute; train() always draws the final one.
        self._write_metrics(finished=False, plot=time.monotonic() - self._plotted > 60)

    def _write_metrics(self, finished: bool, plot: bool = True) -> dict[str, Any]:
        from captioning.training.plots import plot_loss_curve

        state = self.state
        metrics = {
            "task": self.task.name,
            "model": str(self.model_source),
            "finished": finished,
            "step": state.step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "precision": self.precision,
            "device": str(self.device),
            "elapsed_s": round(state.elapsed_s, 2),
            "config": self.config.to_dict(),
            "data": self.task.data_summary(),
            "train_loss": state.train_loss,
            "evals": state.evals,
            "best": state.best,
            "final": state.evals[-1] if state.evals else None,
        }
        (self.output / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        if plot:
            plot_loss_curve(
                state.train_loss, state.evals, self.output / "loss_curve.png", title=self.task.name
            )
            self._plotted = time.monotonic()
        return metrics


def _chunks(iterator, size: int):
    """Groups of `size` micro-batches (the last group may be shorter): one optimizer step each."""
    group: list[Any] = []
    for item in iterator:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
