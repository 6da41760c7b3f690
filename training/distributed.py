"""How one training run spreads over processes (`torchrun`, `accelerate launch`), as plain functions.

Global batch = `--batch-size` (per process) x `--grad-accum-steps` x world size. An epoch's order (a function of
seed and epoch only) is cut into global batches, each global batch into micro-batches of `--batch-size`, and
rank r trains micro-batches r x accum ... (r + 1) x accum - 1 of it. The micro-batches are therefore the same
whatever the world size: one process accumulating two of them and two processes taking one each compute the
same gradient (up to float summation order), and a run's position is counted in global batches, which is what
lets `--resume` continue with another world size.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)
# numpy's legacy seeding takes 32 bits.
SEED_SPACE = 2**32
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # --precision -> accelerate's name
# The main process alone generates the dev sample and writes checkpoints while the others wait in a collective:
# longer than torch's default timeout (10 minutes for NCCL) allows for a large --dev-sample.
COLLECTIVE_TIMEOUT = timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """The train items of one forward pass and the weight its mean loss is multiplied by."""

    indices: tuple[int, ...]
    weight: float


def global_batch(batch_size: int, grad_accum_steps: int, world_size: int) -> int:
    return batch_size * grad_accum_steps * world_size


def cut(indices: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive pieces of `size` items (the last may be shorter)."""
    return [list(indices[start : start + size]) for start in range(0, len(indices), size)]


def rank_micro_batches(
    batch: Sequence[int], batch_size: int, accum: int, rank: int, world_size: int
) -> list[MicroBatch | None]:
    """This rank's `accum` slots of the optimizer step that trains the global `batch` (None: nothing to run).

    The weight is world x accum / (micro-batches in the global batch): accelerate divides every loss by accum
    and data parallelism averages the ranks' gradients, so the step's gradient is the mean over micro-batches
    of their mean-loss gradients, as one process accumulating them computes it, also for an epoch's short last
    global batch. Missing slots come first, so a rank's synchronising (last) slot is a real micro-batch when
    it has one; a rank with none still runs a zero-weight one there, since every rank's backward joins the
    gradient all-reduce."""
    chunks = cut(batch, batch_size)
    weight = world_size * accum / len(chunks)
    mine = [MicroBatch(tuple(c), weight) for c in chunks[rank * accum : (rank + 1) * accum]]
    slots: list[MicroBatch | None] = [None] * (accum - len(mine)) + mine
    if world_size > 1 and slots[-1] is None:
        slots[-1] = MicroBatch(tuple(chunks[0]), 0.0)
    return slots


def dev_batches(
    count: int, batch_size: int, rank: int, world_size: int, equal: bool = False
) -> list[tuple[int, list[int]]]:
    """(batch number, dev item indices) of this rank: the dev set's batches dealt round-robin. `equal`: as
    many on every rank (FSDP's forward is a collective), the extras numbered -1 to be dropped."""
    batches = list(enumerate(cut(range(count), batch_size)))
    mine = batches[rank::world_size]
    if equal and batches:
        mine += [(-1, batches[0][1])] * (len(batches[0::world_size]) - len(mine))
    return mine


def token_weighted_mean(sums: Sequence[tuple[int, float, int]]) -> float:
    """The mean of gathered (batch number, loss x tokens, tokens), added in batch order as one process adds
    them (so the result does not depend on the world size); batches numbered -1 are padding."""
    total, tokens = 0.0, 0
    for number, weighted, count in sorted(sums):
        if number >= 0:
            total, tokens = total + weighted, tokens + count
    return total / max(tokens, 1)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed every RNG gets before optimizer step `step` on `rank`: dropout then depends on (seed, step,
    rank) only, so a resumed run draws what an uninterrupted one draws without any saved RNG state, at any
    world size, and no two ranks draw the same masks."""
    return ((seed * 1_000_003 + step) * 4099 + rank) % SEED_SPACE


def nodes(world_size: int) -> int:
    """Nodes in the run, from the processes per node the launcher reports (torchrun and accelerate set it)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or world_size)
    return max(world_size // max(local, 1), 1)


def describe(world_size: int, batch_size: int, grad_accum_steps: int, kind: Any) -> str:
    """The log line that says how the run is spread (`kind`: accelerate's distributed type)."""
    total = global_batch(batch_size, grad_accum_steps, world_size)
    return (
        f"world size {world_size} ({nodes(world_size)} node(s), {getattr(kind, 'value', kind)}), global batch {total} = "
        f"batch {batch_size} x accumulation {grad_accum_steps} x {world_size} process(es); "
        "the main process (rank 0) alone writes checkpoints, metrics, plots and tracker events"
    )


def check_resume_batch(saved: dict[str, Any], saved_world: int, config: Any, world_size: int) -> None:
    """A resumed run must keep the global batch: the position and schedule are counted in global batches.

    The world size may change; `--grad-accum-steps` (or `--batch-size`) then has to make up for it."""
    before = global_batch(saved["batch_size"], saved["grad_accum_steps"], saved_world)
    now = global_batch(config.batch_size, config.grad_accum_steps, world_size)
    if before == now:
        return
    per_step = config.batch_size * world_size
    hint = (
        f"; with {world_size} process(es) of batch {config.batch_size}, --grad-accum-steps {before // per_step} "
        "keeps it"
        if before % per_step == 0
        else ""
    )
    raise ValueError(
        f"--resume: the saved run's global batch is {before} (batch {saved['batch_size']} x accumulation "
        f"{saved['grad_accum_steps']} x {saved_world} process(es)) but this run's is {now} (batch "
        f"{config.batch_size} x accumulation {config.grad_accum_steps} x {world_size}): the data position and the "
        f"schedule are counted in global batches, so they must match{hint}"
    )


def optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, whole (not one rank's shard) and on the CPU: what a run of
    any world size loads back. Every rank calls it (sharded engines gather); only the main one gets the data."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: Any, optimizer: Any, saved: dict[str, Any]) -> None:
    """Load `optimizer_state`'s output (or an older single-process state keyed by parameter number)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if any(isinstance(key, int) for key in saved.get("state", {})):
        optimizer.load_state_dict(saved)
        return
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, saved, options=options)


def wants_cpu(device: str | None) -> bool:
    """`--device cpu`, or no CUDA: accelerate then runs gloo on the CPU (torchrun's env alone would not)."""
    import torch

    return device == "cpu" or (device is None and not torch.cuda.is_available())


def select_gpu(device: str | None) -> None:
    """`--device cuda:N` for one process; launched ranks take the GPU of their LOCAL_RANK instead."""
    import torch

    if device and device.startswith("cuda:"):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"--device {device}: launched processes each take the GPU of their LOCAL_RANK")
        torch.cuda.set_device(device)


def resolve_precision(precision: str, cpu: bool) -> str:
    """`auto`: bf16 autocast on CUDA (fp16 with loss scaling where bf16 is missing), fp32 on the CPU."""
    import torch

    if precision != "auto":
        return precision
    if cpu:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(config: Any, tracker: str | None) -> tuple[Any, str]:
    """The run's `Accelerator` and its precision. Launched by torchrun or `accelerate launch`, it reads their
    environment (and accelerate's FSDP config); started plainly, it is one process on one device."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    # accelerate keeps one state per process; a second run in the same process (tests, notebooks) may want
    # another precision. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    select_gpu(config.device)
    cpu = wants_cpu(config.device)
    precision = resolve_precision(config.precision, cpu)
    output = Path(config.output)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=MIXED_PRECISION[precision],
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=tracker,
        project_config=ProjectConfiguration(
            project_dir=str(output), logging_dir=str(output / tracker) if tracker else None
        ),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)],
    )
    if precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate enables fp16 on accelerators only; torch's CPU autocast and GradScaler do fp16 too, and
        # this is how the CPU tests exercise loss scaling. Its own AMP path then runs them.
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    refuse_unsupported(accelerator)
    warn_ignored_fsdp(accelerator)
    return accelerator, precision


def refuse_unsupported(accelerator: Any) -> None:
    """DeepSpeed keeps ZeRO optimizer states in its own checkpoints, which the exact, world-size independent
    resume cannot read; FSDP (accelerate's `--use_fsdp`) shards the same way and is supported."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            "DeepSpeed is not supported by the trainer's resumable state; shard with FSDP instead "
            "(accelerate launch --use_fsdp, or `accelerate config`: docs/training.md, 'Distributed training')"
        )


def warn_ignored_fsdp(accelerator: Any) -> None:
    """accelerate turns FSDP on for accelerator types only (`AcceleratorState.__init__` in accelerate/state.py
    takes its FSDP branch for MULTI_GPU, MULTI_XPU, ..., not MULTI_CPU): asked for on the CPU, the run is
    data-parallel instead, with a whole model per process, and accelerate says nothing. The main process does."""
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in {"1", "true"}
    if asked and accelerator.distributed_type != DistributedType.FSDP and accelerator.is_main_process:
        LOG.warning(
            "FSDP was asked for (ACCELERATE_USE_FSDP: `accelerate launch --use_fsdp` or its config), but "
            "accelerate enables it on GPUs and other accelerators only: this run on %s is %s, and every process "
            "holds the whole model (docs/training.md, 'Distributed training')",
            accelerator.device,
            getattr(accelerator.distributed_type, "value", accelerator.distributed_type),
        )


def is_sharded(accelerator: Any) -> bool:
    """Whether ranks hold only shards of the weights (FSDP): evaluation and saving then gather them."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def is_main_process() -> bool:
    """Rank 0 of the launch (torchrun and accelerate set RANK), or a plain single process: only it prints."""
    import os

    return os.environ.get("RANK", "0") == "0"
