"""What the training loop (`loop.Trainer`) keeps between steps and across a `--resume`: the run's `TrainState`
(world-size independent: steps and positions count global batches), the seeding, the best-checkpoint rule, and
the swap-in directory write that keeps an interrupted save from leaving half a checkpoint.

The loop no longer saves RNG snapshots: it reseeds every RNG before each step from (seed, step, rank)
(`distributed.step_seed`), which a run of another world size can reproduce and a saved state of one rank could
not; an older state's `rng` entry is ignored. `rng_states`/`set_rng_states` remain for code that snapshots RNGs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.pt"
LOWER_IS_BETTER = ("loss", "dev_loss")


@dataclasses.dataclass
class TrainState:
    """Where the run is: enough to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    train_loss: list[list[float]] = dataclasses.field(default_factory=list)  # [step, loss]
    evals: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best: dict[str, float] | None = None
    elapsed_s: float = 0.0


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class TrainerStateError(RuntimeError):
    """A trainer state file that cannot be resumed from; the message names the file and what to do."""


def rng_states() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain Python values only (no numpy objects), so the state
    file loads with `torch.load(weights_only=True)`."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, float or None)
        "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_trainer_state(path: Path) -> dict[str, Any]:
    """`trainer_state.pt` as `save`d by the trainer: tensors, numbers, strings, lists, tuples and dicts only.

    Loaded with `weights_only=True`: a file holding any other object (one whose unpickling could run code) is
    refused with `TrainerStateError` naming what it holds, and nothing in it is executed."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            unsafe = (
                ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "unknown objects"
            )
        except Exception:  # a damaged file: the loader's own message says enough
            unsafe = "objects that are not plain data"
        raise TrainerStateError(
            f"{path}: refusing to resume from it: it holds {unsafe}, and unpickling that could run code; "
            "a trainer state holds only tensors and plain data (older ones also held numpy RNG arrays). "
            "Start the run again without --resume (or remove its last/ folder)."
        ) from error


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if metric in LOWER_IS_BETTER else value > best


def replace_dir(write, path: Path) -> None:
    """Write into a temporary sibling and swap it in, so an interrupted save never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
