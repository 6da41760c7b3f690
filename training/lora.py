"""LoRA fine-tuning through PEFT (`--lora-rank R`; 0 or absent is full fine-tuning), shared by both trainers.

Target modules, by their names in transformers 4.57.6 (`LORA_TARGETS`, the one place they are declared):

- BLIP (`BlipForConditionalGeneration`): the text decoder's self- and cross-attention `query` and `value`
  (`text_decoder.bert.encoder.layer.N.{attention,crossattention}.self.{query,value}`), as in the LoRA paper's
  W_q/W_v choice, plus the vision encoder's fused `qkv` (`vision_model.encoder.layers.N.self_attn.qkv`): the
  user's own images are usually what differs from the pre-training data, and the vision tower has no separate
  query/value projections to pick from.
- mBART-50 (`MBartForConditionalGeneration`): `q_proj` and `v_proj` of the encoder self-attention and of the
  decoder's self- and cross-attention (`encoder_attn`).

A run saves, in best/ and last/, the merged weights as a plain `save_pretrained` checkpoint (computed beside the
training weights, which stay untouched) so `captioning export` takes it unchanged, and the adapter in `adapter/`
(`PeftModel.save_pretrained` plus the processor/tokenizer files; its `adapter_config.json` records the base
source and revision). `--resume` reloads last/adapter as trainable on top of that base.

Every rank of a launch builds the same adapter; only the main process (rank 0) logs about it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioning.export.adapters import import_peft
from captioning.training.distributed import is_main_process

LOG = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"

LORA_TARGETS: dict[str, str | list[str]] = {
    "blip": r".*(text_decoder\.bert\.encoder\.layer\.\d+\.(attention|crossattention)\.self\.(query|value)"
    r"|vision_model\.encoder\.layers\.\d+\.self_attn\.qkv)",
    "mbart": ["q_proj", "v_proj"],
}


@dataclasses.dataclass(frozen=True)
class LoraOptions:
    rank: int = 0  # 0: full fine-tuning
    alpha: float | None = None  # None: 2 x rank
    dropout: float = 0.05

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scaled_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    def validate(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora rank must be 0 (off) or positive, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"lora alpha must be positive, got {self.alpha}")


FULL_FINE_TUNING = LoraOptions()


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA (docs/training.md, 'LoRA')")
    group.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="train rank-R LoRA adapters instead of every weight; 0: full fine-tuning (default)",
    )
    group.add_argument("--lora-alpha", type=float, help="LoRA scaling numerator; default: 2 x rank")
    group.add_argument("--lora-dropout", type=float, default=0.05, help="default: %(default)s")


def lora_options_from_args(args: argparse.Namespace) -> LoraOptions:
    options = LoraOptions(rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout)
    options.validate()
    return options


def base_name(source: str | Path) -> str:
    """How the adapter names its base: a local folder absolutely (export may run elsewhere), else the hub id."""
    return str(Path(source).resolve()) if Path(source).is_dir() else str(source)


def wrap(model: Any, family: str, options: LoraOptions, source: str | Path, revision: str | None) -> Any:
    """A fresh trainable adapter around `model` (the base weights frozen), recording where the base came from."""
    peft = import_peft()
    config = peft.LoraConfig(
        r=options.rank,
        lora_alpha=options.scaled_alpha,
        lora_dropout=options.dropout,
        target_modules=LORA_TARGETS[family],
        revision=revision,
    )
    wrapped = peft.get_peft_model(model, config)
    wrapped.peft_config["default"].base_model_name_or_path = base_name(source)
    _log_trainable(wrapped)
    return wrapped


def resume_adapter(checkpoint: Path) -> Path | None:
    """`checkpoint/adapter` when the checkpoint holds one (a LoRA run's last/)."""
    adapter = Path(checkpoint) / ADAPTER_DIR
    return adapter if (adapter / "adapter_config.json").is_file() else None


def load_trainable(adapter: Path, load_base: Callable[[str, str | None], Any], options: LoraOptions) -> Any:
    """The saved adapter, trainable again, on the base its config records (`load_base(source, revision)`)."""
    peft = import_peft()
    config = peft.PeftConfig.from_pretrained(str(adapter))
    main = is_main_process()
    if main and (config.r, config.lora_alpha) != (options.rank, options.scaled_alpha):
        LOG.warning(
            "--resume: the saved adapter has rank %s, alpha %s; it is kept (not rank %s, alpha %s)",
            config.r,
            config.lora_alpha,
            options.rank,
            options.scaled_alpha,
        )
    base = load_base(config.base_model_name_or_path, config.revision)
    model = peft.PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    if main:
        LOG.info("resuming the LoRA adapter %s on %s", adapter, config.base_model_name_or_path)
    _log_trainable(model)
    return model


def _log_trainable(model: Any) -> None:
    """The trainable share, logged once per launch (by the main process), not once per rank."""
    if not is_main_process():
        return
    trainable, total = model.get_nb_trainable_parameters()
    LOG.info("LoRA: %d of %d parameters trainable (%.3f %%)", trainable, total, 100 * trainable / total)


def save(model: Any, path: Path, save_files: Callable[[Path], None]) -> None:
    """The merged checkpoint in `path`, the adapter in `path/adapter`; `save_files` writes the processor or
    tokenizer files into each."""
    base = model.get_base_model()
    base.save_pretrained(path, state_dict=merged_state_dict(model))
    save_files(path)
    model.save_pretrained(path / ADAPTER_DIR)
    save_files(path / ADAPTER_DIR)


def merged_state_dict(model: Any) -> dict[str, Any]:
    """The base model's weights with every LoRA delta added (what `merge_and_unload` gives), computed beside
    the model: the training weights are not touched, so no merge/unmerge rounding creeps into them."""
    import torch

    LoraLayer = import_peft().tuners.lora.LoraLayer  # noqa: N806 - the class
    base = model.get_base_model()
    deltas: dict[str, Any] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                (adapter,) = module.active_adapters
                deltas[f"{name}.base_layer.weight"] = module.get_delta_weight(adapter)
        merged = {}
        for key, tensor in base.state_dict().items():
            if ".lora_" in key:
                continue
            if key in deltas:
                tensor = tensor + deltas[key].to(tensor.dtype)
            merged[key.replace(".base_layer.", ".")] = tensor
    return merged
