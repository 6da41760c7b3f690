"""`--report-to`: where a run's curves go, through accelerate's tracking (`Accelerator(log_with=...)`).

Per optimizer step: train loss, learning rate, samples/s and tokens/s (tokens: labels that are not -100); per
evaluation: dev loss, the dev scores and, when the task exposes them (`task.last_samples`), a few
(reference, prediction) pairs as text. accelerate runs the trackers on the main process only; the events go to
OUTPUT/<tracker>/ (TensorBoard: `tensorboard --logdir OUTPUT/tensorboard`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

REPORT_TO = ("tensorboard", "mlflow", "wandb", "none")
SAMPLES_KEY = "dev/samples"


def resolve_report_to(choice: str | None) -> str | None:
    """The tracker to start, or None. No choice: TensorBoard when it is installed (the `training` extra has
    it), else none; a named tracker that is not installed is an error rather than a silently lost run."""
    if choice is None:
        return "tensorboard" if _installed("tensorboard") else None
    if choice == "none":
        return None
    if choice not in REPORT_TO:
        raise ValueError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {choice!r}")
    if not _installed(choice):
        raise ValueError(
            f"--report-to {choice}: the {choice} package is not installed here (pip install {choice}), "
            "or choose --report-to tensorboard or none"
        )
    return choice


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def hyperparameters(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The run's settings as trackers take them (TensorBoard's hparams refuse None)."""
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in config.items()}


def start(accelerator: Any, tracker: str | None, project: str, config: dict[str, Any]) -> None:
    if tracker is None:
        return
    init_kwargs = {"wandb": {"dir": accelerator.logging_dir}} if tracker == "wandb" else {}
    if tracker == "wandb" and accelerator.is_main_process:
        import os

        os.makedirs(accelerator.logging_dir, exist_ok=True)  # wandb writes there but does not create it
    accelerator.init_trackers(project, config=hyperparameters(config), init_kwargs=init_kwargs)


def step_values(loss: float, lr: float, samples: int, tokens: int, seconds: float) -> dict[str, float]:
    seconds = max(seconds, 1e-9)
    return {
        "train/loss": loss,
        "train/lr": lr,
        "train/samples_per_s": samples / seconds,
        "train/tokens_per_s": tokens / seconds,
    }


def eval_values(record: dict[str, float]) -> dict[str, float]:
    """dev/loss and dev/<score> of one evaluation record."""
    skip = ("step", "epoch")
    return {f"dev/{'loss' if k == 'dev_loss' else k}": v for k, v in record.items() if k not in skip}


def samples_markdown(samples: Sequence[tuple[str, str]]) -> str:
    """A Markdown table, as TensorBoard's text tab renders it."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    rows = [f"| {cell(ref)} | {cell(pred)} |" for ref, pred in samples]
    return "\n".join(["| reference | prediction |", "|---|---|", *rows])


def log_samples(accelerator: Any, tracker: str | None, samples: Any, step: int) -> None:
    """The task's last dev (reference, prediction) pairs as text; a task without them logs none."""
    if tracker is None or not samples or not accelerator.is_main_process:
        return
    pairs = [(str(ref), str(pred)) for ref, pred in samples]
    if tracker == "wandb":
        table = accelerator.get_tracker("wandb")
        table.log_table(SAMPLES_KEY, columns=["reference", "prediction"], data=pairs, step=step)
    elif tracker == "mlflow":  # its metrics are numbers only: the table goes in as an artifact
        import mlflow

        mlflow.log_text(samples_markdown(pairs), f"dev_samples/step_{step:07d}.md")
    else:
        accelerator.log({SAMPLES_KEY: samples_markdown(pairs)}, step=step)
