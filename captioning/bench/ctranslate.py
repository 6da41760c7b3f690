"""CTranslate2 as a peer of the translator: the same mBART checkpoint converted, translated in batches.

CTranslate2 (`pip install '.[bench]'`) is the fastest public CPU engine for mBART-50, so `captioning bench`
measures it beside the served translator. Conversions are cached per checkpoint, quantization and
vocabulary treatment. A trimmed repository is compared with CTranslate2's own vocabulary reduction (a vmap
whose always-on candidates are the kept tokens), so trimmed is compared with trimmed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from captioning import contract

LOG = logging.getLogger(__name__)

INSTALL_HINT = "CTranslate2 is not installed: pip install 'bilingual-captioning[bench]'"
# mBART is pre-norm with a LayerNorm after the embeddings. Hub configs carry these legacy keys; configs
# written by recent transformers (the fixtures, fine-tuned copies) do not, and the converter needs them.
_MBART_LEGACY_KEYS = {"normalize_before": True, "normalize_embedding": True}


def available() -> str | None:
    """None when CTranslate2 can be used, else why not (the bench prints it as the row's reason)."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return INSTALL_HINT
    return None


def _patched_copy(checkpoint: Path, workdir: Path) -> Path:
    """The checkpoint's files linked into `workdir`, with the legacy config keys added where missing."""
    config = json.loads((checkpoint / "config.json").read_text())
    for key, value in _MBART_LEGACY_KEYS.items():
        config.setdefault(key, value)
    for item in checkpoint.iterdir():
        if item.name != "config.json":
            os.symlink(item.resolve(), workdir / item.name)
    (workdir / "config.json").write_text(json.dumps(config))
    return workdir


@contextlib.contextmanager
def _padded_vocabulary():
    """A tokenizer smaller than the model's embeddings (the bench checkpoints: the fixtures' small tokenizer
    on mBART-50's 250,054 rows) gets placeholder tokens for the rows it cannot write, so the converter
    accepts it; those rows are never produced from real text, as in the served model."""
    from ctranslate2.converters import transformers as ct2

    loader = ct2._MODEL_LOADERS["MBartConfig"]
    original = loader.get_vocabulary

    def padded(model, tokenizer):
        tokens = original(model, tokenizer)
        missing = model.config.vocab_size - len(tokens)
        return tokens + [f"<unwritten_{i}>" for i in range(max(missing, 0))]  # as kept_tokens() names them

    loader.get_vocabulary = padded
    try:
        yield
    finally:
        loader.get_vocabulary = original


def kept_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """The converted vocabulary's tokens for tokenizer ids, placeholders included (`_padded_vocabulary`)."""
    known = len(tokenizer.get_vocab())
    written = tokenizer.convert_ids_to_tokens([i for i in ids if i < known])
    return written + [f"<unwritten_{i - known}>" for i in ids if i >= known]


def convert(
    checkpoint: Path, output_root: Path, quantization: str, kept_tokens: Sequence[str] | None = None
) -> Path:
    """Convert once; later runs reuse `output_root/ct2-<key>`. `kept_tokens`: write a vmap of them."""
    from ctranslate2.converters import TransformersConverter

    checkpoint = Path(checkpoint).resolve()
    vmap_key = hashlib.sha256("\n".join(kept_tokens or ()).encode()).hexdigest()[:8]
    key = hashlib.sha256(f"{checkpoint}|{quantization}|{vmap_key}".encode()).hexdigest()[:12]
    output = Path(output_root) / f"ct2-{key}-{quantization}"
    if (output / "model.bin").is_file():
        return output
    LOG.info("converting %s to CTranslate2 (%s) in %s", checkpoint, quantization, output)
    with tempfile.TemporaryDirectory() as tmp:
        source = _patched_copy(checkpoint, Path(tmp))
        vmap = None
        if kept_tokens is not None:
            vmap = Path(tmp) / "vmap.txt"
            # The empty source n-gram: target tokens that are candidates for every input.
            vmap.write_text("\t" + " ".join(kept_tokens) + "\n")
        with _padded_vocabulary():
            TransformersConverter(str(source)).convert(
                str(output), vmap=None if vmap is None else str(vmap), quantization=quantization, force=True
            )
    return output


class CT2Translator:
    """English -> Arabic with a converted model, tokenised by the checkpoint's own tokenizer.

    Lengths: `generate()`'s new tokens count the forced language code and, at a fixed length, a forced final
    end token; CTranslate2's decoding length counts the prefix and never the end token. So `new_tokens - 1`
    here decodes the same tokens (the bench's fixed lengths), one decoder step fewer."""

    def __init__(self, model_dir: Path, tokenizer, threads: int, use_vmap: bool = False) -> None:
        import ctranslate2

        self.translator = ctranslate2.Translator(
            str(model_dir), device="cpu", inter_threads=1, intra_threads=threads
        )
        self.tokenizer = tokenizer
        self.use_vmap = use_vmap

    def translate(
        self, texts: Sequence[str], beams: int, new_tokens: int, batch_size: int, fixed: bool = True
    ) -> list[str]:
        tok = self.tokenizer
        hypotheses = self.translate_tokens(texts, beams, new_tokens, batch_size, fixed)
        return [tok.decode(tok.convert_tokens_to_ids(h), skip_special_tokens=True) for h in hypotheses]

    def translate_tokens(
        self, texts: Sequence[str], beams: int, new_tokens: int, batch_size: int, fixed: bool = True
    ) -> list[list[str]]:
        """The best hypothesis per text, as tokens (the language code first)."""
        tok = self.tokenizer
        sources = [tok.convert_ids_to_tokens(tok(text).input_ids) for text in texts]
        length = max(new_tokens - 1, 1)
        results = self.translator.translate_batch(
            sources,
            target_prefix=[[contract.TARGET_LANG]] * len(sources),
            beam_size=beams,
            max_batch_size=batch_size,
            max_decoding_length=length,
            min_decoding_length=length if fixed else 0,
            use_vmap=self.use_vmap,
        )
        return [r.hypotheses[0] for r in results]
