"""LoRA adapter directories as export sources: `captioning export --captioner/--translator` take a directory with
`adapter_config.json` (what `train-captioner`/`train-translator --lora-rank` write in best/adapter and
last/adapter) and merge it onto the base model its config names, so every later step reads a plain checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"


def import_peft() -> Any:
    """`peft`, without its FutureWarning about transformers < 5.6 (the serving stack pins 4.57.6)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Support for Transformers < 5\.6", category=FutureWarning)
        import peft
    return peft


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def merge_adapter(adapter: Path, load: Callable[[str, str | None], Any], output: Path) -> Path:
    """The adapter merged onto its base (`load(base, revision)`), saved to `output` with the adapter's own
    processor/tokenizer files (else the base's)."""
    from transformers import AutoProcessor

    from captioning.runtime.tokenization import spm_protobuf_compat

    peft = import_peft()
    config = peft.PeftConfig.from_pretrained(str(adapter))
    base = config.base_model_name_or_path
    if not base:
        raise ValueError(f"{adapter}/{ADAPTER_CONFIG} names no base_model_name_or_path")
    merged = peft.PeftModel.from_pretrained(load(base, config.revision), str(adapter)).merge_and_unload()
    merged.save_pretrained(output)
    own = (Path(adapter) / "tokenizer_config.json").is_file()
    with spm_protobuf_compat():
        files = AutoProcessor.from_pretrained(
            str(adapter) if own else base, revision=None if own else config.revision
        )
    files.save_pretrained(output)
    LOG.info("%s is a LoRA adapter: merged onto %s into %s", adapter, base, output)
    return output


def merged_sources(captioner: str | Path, translator: str | Path, work: Path, options: Any):
    """(captioner, translator, options) with each adapter directory replaced by its merged checkpoint (whose
    revision is then none: the base's recorded revision was used)."""
    from captioning.export.graphs import load_captioner, load_translator

    if is_adapter(captioner):
        captioner = merge_adapter(Path(captioner), load_captioner, work / "captioner_merged")
        options = dataclasses.replace(options, captioner_revision=None)
    if is_adapter(translator):
        translator = merge_adapter(Path(translator), load_translator, work / "translator_merged")
        options = dataclasses.replace(options, translator_revision=None)
    return captioner, translator, options
