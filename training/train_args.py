"""Training options: the `TrainConfig` dataclass and its command-line form, shared by `train-captioner` and
`train-translator` (no heavy imports)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from captioning.training.trackers import REPORT_TO

# Settings that change the data order or the schedule: a resumed run should keep them. The global batch
# (batch x accumulation x world size) must be kept (distributed.check_resume_batch); the accumulation alone may
# change with the world size.
RESUME_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "warmup_ratio",
    "warmup_steps",
    "max_steps",
    "seed",
)


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings; the defaults are the original study's BLIP settings."""

    output: Path = Path("runs/train")
    epochs: int = 7
    batch_size: int = 8  # per process: the global batch is batch_size x grad_accum_steps x world size
    grad_accum_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # overrides warmup_ratio
    max_grad_norm: float | None = 1.0
    max_length: int = 64
    padding: str = "max_length"  # "max_length" (the study: every sequence padded to 64) or "longest"
    seed: int = 0
    precision: str = "auto"  # auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16
    max_steps: int | None = None  # total optimizer steps (defines the schedule); None: epochs x steps/epoch
    stop_at_step: int | None = None  # stop and save `last` here, keeping the full run's schedule
    eval_every: int | None = None  # optimizer steps between dev evaluations; None: at each epoch end
    dev_sample: int = 100  # items generated for the dev BLEU/chrF
    best_metric: str = "loss"  # "loss" (dev loss, lower is better) or a dev metric name (higher is better)
    num_workers: int = 0
    device: str | None = None  # None: cuda when available
    resume: bool = False
    progress: bool = True
    report_to: str | None = None  # tensorboard, mlflow, wandb or none; None: tensorboard when installed
    # Hub revision (branch, tag or commit sha) of the `--model` source, for every file read from it; None: the
    # hub's default branch; a local directory (and `last/` when resuming) ignores it.
    model_revision: str | None = None

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum_steps", "max_length", "dev_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.report_to not in (None, *REPORT_TO):
            raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")
        if self.padding not in ("max_length", "longest"):
            raise ValueError(f"padding must be max_length or longest, got {self.padding!r}")
        for name in ("max_steps", "stop_at_step", "eval_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def add_model_revision_argument(parser, source: str) -> None:
    """`--captioner-revision` (train-captioner) or `--translator-revision` (train-translator) for `--model`."""
    parser.add_argument(
        f"--{source}-revision",
        dest="model_revision",
        metavar="REV",
        help="branch, tag or commit sha of the --model hub id, read for every file of it (model, config, "
        "generation config, processor/tokenizer); default: the hub's default branch; a folder ignores it",
    )


def add_train_arguments(parser, defaults: TrainConfig) -> None:
    """The options both trainers share; `defaults` carries each model's published settings."""
    group = parser.add_argument_group("training")
    group.add_argument(
        "--output", required=True, help="run folder: best/, last/, metrics.json, loss_curve.png"
    )
    _add_optimizer_arguments(group, defaults)
    _add_sequence_and_precision_arguments(group)
    _add_run_arguments(group, defaults)


def _add_optimizer_arguments(group, defaults: TrainConfig) -> None:
    """Epochs, batch size and the AdamW schedule."""
    group.add_argument("--epochs", type=int, default=defaults.epochs, help="default: %(default)s")
    group.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="items per forward pass of each process; default: %(default)s",
    )
    group.add_argument(
        "--grad-accum-steps",
        type=int,
        default=1,
        help="micro-batches per optimizer step and process (global batch = batch size x this x processes); "
        "default: %(default)s",
    )
    group.add_argument(
        "--lr", type=float, default=defaults.lr, help="AdamW learning rate; default: %(default)s"
    )
    group.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW weight decay; default: %(default)s"
    )
    group.add_argument(
        "--warmup-ratio",
        type=float,
        default=0.0,
        help="linear warm-up share of all steps; default: %(default)s",
    )
    group.add_argument("--warmup-steps", type=int, help="linear warm-up steps (overrides --warmup-ratio)")


def _add_sequence_and_precision_arguments(group) -> None:
    """Sequence length and padding, the seed and the numeric precision."""
    group.add_argument(
        "--max-length", type=int, default=64, help="token limit; sequences padded to it; default: %(default)s"
    )
    group.add_argument(
        "--padding",
        choices=["max_length", "longest"],
        default="max_length",
        help="pad every sequence to --max-length (the original study) or to the longest in the batch "
        "(same loss, faster); default: %(default)s",
    )
    group.add_argument("--seed", type=int, default=0, help="seeds python, numpy, torch and the data order")
    group.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 (or fp16 with loss scaling) autocast on CUDA, fp32 on CPU; default: %(default)s",
    )


def _add_run_arguments(group, defaults: TrainConfig) -> None:
    """Run length, dev evaluation, best-checkpoint choice, device and resuming."""
    group.add_argument(
        "--max-steps", type=int, help="total optimizer steps (overrides --epochs; for smoke runs)"
    )
    group.add_argument(
        "--stop-at-step",
        type=int,
        help="stop at this step and save last/ without changing the schedule; continue later with --resume",
    )
    group.add_argument("--eval-every", type=int, help="dev evaluation every N steps (default: each epoch)")
    group.add_argument(
        "--dev-sample",
        type=int,
        default=defaults.dev_sample,
        help="dev items generated for BLEU/chrF at each evaluation; default: %(default)s",
    )
    group.add_argument(
        "--best-metric",
        default=defaults.best_metric,
        help="what picks best/: 'loss' (dev loss) or a dev score name such as "
        f"{defaults.best_metric!r}; default: %(default)s",
    )
    group.add_argument(
        "--device",
        help="cpu, cuda or cuda:N for one process (default: cuda when available, else cpu); launched "
        "processes (torchrun, accelerate launch) each take the GPU of their LOCAL_RANK",
    )
    group.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT/last at its step and state"
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument(
        "--report-to",
        choices=REPORT_TO,
        help="tracker for losses, learning rate, throughput and dev scores (events under OUTPUT/<tracker>/); "
        "default: tensorboard when installed, else none",
    )


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        output=Path(args.output),
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum_steps=args.grad_accum_steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        warmup_steps=args.warmup_steps,
        max_length=args.max_length,
        padding=args.padding,
        seed=args.seed,
        precision=args.precision,
        max_steps=args.max_steps,
        stop_at_step=args.stop_at_step,
        eval_every=args.eval_every,
        dev_sample=args.dev_sample,
        best_metric=args.best_metric,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
        report_to=args.report_to,
        model_revision=args.model_revision,
    )
