"""The training loop shared by `train-captioner` and `train-translator`, on Hugging Face Accelerate.

One `Trainer` drives any `TrainTask` (a seq2seq-style model whose forward returns `.loss`) on one process or
on many under `torchrun` / `accelerate launch` (data-parallel; FSDP through accelerate's config): seeded,
resumable to the exact step and state at any world size with the same global batch (training/distributed.py),
accumulation and mixed precision by accelerate, `save_pretrained` checkpoints (`captioning export` takes them
directly), `metrics.json`, a loss-curve PNG and tracker events (training/trackers.py), all written by the main
process alone. The dev loss is computed on all ranks and gathered (the number one process gets); the generated
dev scores run on the main process while the others wait: corpus BLEU/chrF need every hypothesis in one place,
`dev_metrics` scores a whole sample, and a few generated items cost little beside training.

Checkpoint layout under the output folder:
    best/   the model + processor/tokenizer files with the best dev score so far
    last/   the same for the latest save, plus `trainer_state.pt` (optimizer state by parameter name, scheduler,
            scaler, epoch, step, loss history; no RNG state: every step reseeds from (seed, step, rank)):
            `--resume` continues from here at the same step with the same state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from captioning.training import distributed, trackers
from captioning.training.distributed import MicroBatch
from captioning.training.loop_state import (
    STATE_FILE,
    TrainState,
    is_better,
    load_trainer_state,
    replace_dir,
    seed_everything,
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
        """Generation-based dev scores (BLEU, chrF) on a sample, with the model in eval mode; a task may also
        set `last_samples`, a few (reference, prediction) pairs, which the trackers log as text."""

    def save(self, model: Any, path: Path) -> None:
        """`save_pretrained` the model with its processor/tokenizer files."""

    def data_summary(self) -> dict[str, Any]: ...


class Trainer:
    def __init__(self, config: TrainConfig, task: TrainTask, model_source: str | Path):
        config.validate()
        self.config = config
        self.task = task
        self.model_source = model_source
        self.output = Path(config.output)
        self.state = TrainState()
        self._plotted = time.monotonic()
        self._gathered: Any = None  # FSDP: the main process's whole copy for evaluation and saving

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        config = self.config
        self.tracker = trackers.resolve_report_to(config.report_to)
        self.accelerator, self.precision = distributed.make_accelerator(config, self.tracker)
        acc = self.accelerator
        self.rank, self.world = acc.process_index, acc.num_processes
        self.global_batch = distributed.global_batch(config.batch_size, config.grad_accum_steps, self.world)
        seed_everything(config.seed)  # the same initial weights (a fresh LoRA adapter) on every rank
        resuming = self._resuming()
        self.model = self.task.load_model(self.output / "last" if resuming else self.model_source)
        self.train_items = self.task.train_items()
        self.dev_items = self.task.dev_items()
        self.steps_per_epoch = math.ceil(len(self.train_items) / self.global_batch)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self._prepare_optimizer()
        if resuming:
            self._load_state(self.output / "last" / STATE_FILE)
        if acc.is_main_process:
            how = distributed.describe(
                self.world, config.batch_size, config.grad_accum_steps, acc.distributed_type
            )
            LOG.info(
                "%s: %d training items, %d dev items, %d steps/epoch, %d steps in all, %s on %s; %s%s",
                *(self.task.name, len(self.train_items), len(self.dev_items), self.steps_per_epoch),
                *(self.total_steps, self.precision, acc.device, how),
                f"; resuming at step {self.state.step}" if resuming else "",
            )

    def _prepare_optimizer(self) -> None:
        """AdamW over the trainable parameters (a LoRA model's adapters only), prepared with the model."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        warmup = config.warmup_steps
        if warmup is None:
            warmup = int(config.warmup_ratio * self.total_steps)
        # Not prepared: accelerate would step it once per process; this schedule counts global steps.
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer.optimizer, warmup, self.total_steps)

    def _resuming(self) -> bool:
        """Whether last/ holds a state to continue; every rank must see the same (a shared OUTPUT)."""
        from accelerate.utils import gather_object

        last = self.output / "last"
        found = self.config.resume and (last / STATE_FILE).is_file()
        if len(set(gather_object([found]))) > 1:
            raise RuntimeError(f"{last}: only some ranks see it; OUTPUT must be storage every node shares")
        if self.config.resume and not found and self.accelerator.is_main_process:
            LOG.warning("--resume: no checkpoint in %s; starting from %s", last, self.model_source)
        return found

    def _load_state(self, path: Path) -> None:
        saved = load_trainer_state(path)  # weights_only: refuses a file holding anything but plain data
        distributed.check_resume_batch(saved["config"], saved.get("world_size", 1), self.config, self.world)
        distributed.load_optimizer_state(self.model, self.optimizer.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.accelerator.scaler is not None and saved["scaler"]:
            self.accelerator.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["state"])
        now = self.config.to_dict()
        changed = [k for k in RESUME_KEYS if saved["config"].get(k) != now.get(k)]
        if changed and self.accelerator.is_main_process:
            LOG.warning(
                "resuming with different %s than the saved run: it will not match an uninterrupted run",
                ", ".join(f"{k} ({saved['config'].get(k)} -> {now.get(k)})" for k in changed),
            )

    # ------------------------------------------------------------------------------------------ data
    def _epoch_order(self, epoch: int) -> list[int]:
        """The shuffled item order of an epoch, a function of (seed, epoch) only: resuming needs no sampler state."""
        import torch

        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.train_items), generator=generator).tolist()

    def _epoch_plan(self, epoch: int) -> list[tuple[list[int], list[MicroBatch | None]]]:
        """The rest of the epoch from the current step: each global batch and this rank's slots of it."""
        config = self.config
        batches = distributed.cut(self._epoch_order(epoch), self.global_batch)[self.state.step_in_epoch :]
        shard = (config.batch_size, config.grad_accum_steps, self.rank, self.world)
        return [(batch, distributed.rank_micro_batches(batch, *shard)) for batch in batches]

    def _loader(self, items: Sequence[Any], batches: list[list[int]], shuffle_seed: int):
        import torch
        from torch.utils.data import DataLoader

        # A private generator: iterating a DataLoader otherwise draws from the global RNG that dropout uses.
        return DataLoader(
            items,
            batch_sampler=batches,
            collate_fn=self.task.collate,
            num_workers=self.config.num_workers,
            generator=torch.Generator().manual_seed(shuffle_seed),
        )

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.accelerator.device
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}

    # ------------------------------------------------------------------------------------------ train
    def train(self) -> dict[str, Any]:
        """Run (or continue) training; returns what `metrics.json` holds."""
        self._setup()
        try:
            return self._train()
        finally:
            self.accelerator.end_training()  # closes the trackers (main process)

    def _train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        config, state, acc = self.config, self.state, self.accelerator
        if acc.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
        trackers.start(acc, self.tracker, self.task.name, config.to_dict())
        stop = min(self.total_steps, config.stop_at_step or self.total_steps)
        started = time.monotonic() - state.elapsed_s
        shown = config.progress and acc.is_main_process
        bar = tqdm(total=self.total_steps, initial=state.step, disable=not shown, desc=self.task.name)
        while state.step < stop:
            self._train_epoch(stop, bar)
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
        metrics = self._write_metrics(finished=state.step >= self.total_steps)
        acc.wait_for_everyone()
        return metrics

    def _train_epoch(self, stop: int, bar) -> None:
        config, state = self.config, self.state
        self.model.train()
        plan = self._epoch_plan(state.epoch)
        runs = [list(slot.indices) for _, slots in plan for slot in slots if slot is not None]
        loader = iter(self._loader(self.train_items, runs, config.seed + state.epoch))
        for batch, slots in plan:
            began = time.monotonic()
            loss, tokens, lr = self._optimizer_step(slots, loader)
            state.step += 1
            state.step_in_epoch += 1
            state.train_loss.append([state.step, loss])
            values = trackers.step_values(loss, lr, len(batch), tokens, time.monotonic() - began)
            self.accelerator.log(values, step=state.step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", epoch=state.epoch + 1)
            if config.eval_every and state.step % config.eval_every == 0 and state.step < self.total_steps:
                self._evaluate()
            if state.step >= stop:
                break

    def _optimizer_step(self, slots: list[MicroBatch | None], batches: Iterator) -> tuple[float, int, float]:
        """One optimizer step over this rank's slots; the loss (mean of the global batch's micro-batch mean
        losses) and label tokens are summed over ranks. Returns (loss, tokens, learning rate)."""
        import torch

        acc, model = self.accelerator, self.model
        seed_everything(distributed.step_seed(self.config.seed, self.state.step, self.rank))
        totals = torch.zeros(2, dtype=torch.float64, device=acc.device)
        share = self.config.grad_accum_steps * self.world
        for slot in slots:
            with acc.accumulate(model):
                if slot is None:
                    continue
                batch = self._to_device(next(batches))
                loss = model(**batch).loss
                acc.backward(loss * slot.weight)
                if slot.weight:
                    tokens = int((batch["labels"] != -100).sum())
                    step = [float(loss.detach()) * slot.weight / share, tokens]
                    totals += torch.tensor(step, dtype=totals.dtype, device=totals.device)
        if self.config.max_grad_norm:
            acc.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:
            self.scheduler.step()  # fp16 overflow: the optimizer skipped this step, so the schedule waits too
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens = acc.reduce(totals, reduction="sum").tolist()
        return loss_sum, int(tokens), lr

    # ------------------------------------------------------------------------------------------ eval
    def dev_loss(self) -> float:
        """Token-weighted mean loss over the whole dev set, the same number at any world size: ranks take
        every world-th batch and the per-batch (loss x tokens, tokens) are added in batch order."""
        import torch
        from accelerate.utils import gather_object

        acc = self.accelerator
        sharded = distributed.is_sharded(acc)
        model = self.model if sharded else acc.unwrap_model(self.model)  # no DDP collectives in eval
        model.eval()
        shard = (len(self.dev_items), self.config.batch_size, self.rank, self.world)
        mine = distributed.dev_batches(*shard, equal=sharded)  # FSDP's forward is a collective
        sums = []
        loader = self._loader(self.dev_items, [indices for _, indices in mine], 0)
        with torch.no_grad(), acc.autocast():
            for (number, _), batch in zip(mine, loader, strict=True):
                count = int((batch["labels"] != -100).sum())
                loss = model(**self._to_device(batch)).loss
                sums.append((number, float(loss) * count, count))
        return distributed.token_weighted_mean(gather_object(sums))

    def _whole_model(self) -> Any:
        """The complete model on the main process (None elsewhere), for generation and `task.save`: the
        unwrapped model, or under FSDP a copy loaded with the gathered weights (every rank must call this)."""
        acc = self.accelerator
        if not distributed.is_sharded(acc):
            return acc.unwrap_model(self.model) if acc.is_main_process else None
        weights = acc.get_state_dict(self.model)  # a collective; the main process gets the whole state
        if not acc.is_main_process:
            return None
        if self._gathered is None:
            self._gathered = self.task.load_model(self.model_source).to(acc.device)
        self._gathered.load_state_dict(weights)
        return self._gathered

    def _evaluate(self) -> None:
        import torch
        from accelerate.utils import broadcast_object_list

        state, acc = self.state, self.accelerator
        record: dict[str, float] = {"step": state.step, "epoch": state.step / self.steps_per_epoch}
        record["dev_loss"] = self.dev_loss()
        model = self._whole_model()
        if acc.is_main_process:
            model.eval()
            with torch.no_grad(), acc.autocast():
                record.update(self.task.dev_metrics(model, acc.device))
            acc.log(trackers.eval_values(record), step=state.step)
            trackers.log_samples(acc, self.tracker, getattr(self.task, "last_samples", None), state.step)
        record = broadcast_object_list([record])[0]  # every rank keeps the same state
        self.model.train()
        state.evals.append(record)
        key = "dev_loss" if self.config.best_metric == "loss" else self.config.best_metric
        if key not in record:
            raise ValueError(f"best_metric {self.config.best_metric!r} is not one of {sorted(record)}")
        if acc.is_main_process:
            LOG.info(
                "step %d: %s", state.step, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step")
            )
        best = state.best[key] if state.best else None
        if is_better(self.config.best_metric, record[key], best):
            state.best = dict(record)
            if acc.is_main_process:
                best_dir = self.output / "best"
                replace_dir(lambda path: self.task.save(model, path), best_dir)
                LOG.info("new best %s=%.4g at step %d: saved %s", key, record[key], state.step, best_dir)

    # ------------------------------------------------------------------------------------------ save
    def _save_last(self) -> None:
        import torch

        acc = self.accelerator
        optimizer = distributed.optimizer_state(self.model, self.optimizer.optimizer)  # collective
        model = self._whole_model()
        if not acc.is_main_process:
            return
        payload = {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else {},
            "state": dataclasses.asdict(self.state),
            "config": self.config.to_dict(),
            "world_size": self.world,  # informs the global-batch check; nothing else depends on it
        }

        def write(path: Path) -> None:
            self.task.save(model, path)
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
            "device": str(self.accelerator.device),
            "world_size": self.world,
            "global_batch": self.global_batch,
            "elapsed_s": round(state.elapsed_s, 2),
            "config": self.config.to_dict(),
            "data": self.task.data_summary(),
            "train_loss": state.train_loss,
            "evals": state.evals,
            "best": state.best,
            "final": state.evals[-1] if state.evals else None,
        }
        if not self.accelerator.is_main_process:
            return metrics
        (self.output / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        if plot:
            plot_loss_curve(
                state.train_loss, state.evals, self.output / "loss_curve.png", title=self.task.name
            )
            self._plotted = time.monotonic()
        return metrics
