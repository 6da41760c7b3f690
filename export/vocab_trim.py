"""The opt-in trimmed-vocabulary translator: which target tokens to keep, and the trimmed mBART decoder.

Recipe (docs/performance.md): tokenise the target side of the translation corpora with the translator's own
tokenizer, keep every id that occurs plus the special and language-code tokens, and export a decoder whose
embeddings and output layer hold only those rows. The encoder keeps the full vocabulary (English input).
Tokens outside the kept set can no longer be generated and log-probabilities are normalised over the kept
set only, so this mode is not token-exact: measure its agreement, and its quality with `captioning evaluate`.
The trimming itself (`trim_decoder_vocab`) lives in `captioning.modules.vocab`: the torch runner trims the
checkpoint it loads with it, the export the model it traces.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioning import contract
from captioning.decoding.vocab import VocabMap
from captioning.modules.vocab import trim_decoder_vocab

__all__ = ["TrimCorpus", "derive_vocab", "kept_token_ids", "trim_decoder_vocab"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrimCorpus:
    """Target-language text to derive the kept tokens from; each list holds files of one format."""

    arabic_captions: tuple[Path, ...] = ()  # Arabic Flickr8k: `image.jpg#n<TAB>caption`
    pairs: tuple[Path, ...] = ()  # Tatoeba/Anki: `source<TAB>target[<TAB>...]`, the target side is used
    text: tuple[Path, ...] = ()  # one target-language sentence per line

    def sentences(self) -> list[str]:
        from captioning.datasets import read_arabic_captions, read_pairs

        out: list[str] = []
        for path in self.arabic_captions:
            out += [c for captions in read_arabic_captions(path).values() for c in captions]
        for path in self.pairs:
            out += [pair.target for pair in read_pairs(path)]
        for path in self.text:
            out += [
                line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        if not out:
            raise ValueError("the trimming corpus is empty: pass --arabic-captions, --pairs or --text files")
        return out


def kept_token_ids(
    tokenizer: Any, sentences: Iterable[str], target_lang: str, pad_to: int = 0, vocab_size: int | None = None
) -> tuple[set[int], int]:
    """Ids the corpus uses plus every special token; `pad_to` fills up to that many ids with the lowest
    unused ones (benchmarks use it to model the kept-set size of a real tokenizer). Returns (ids, corpus ids)."""
    encoded = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    corpus = {int(t) for ids in encoded for t in ids}
    target = tokenizer.convert_tokens_to_ids(target_lang)
    if target is None or target == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no language code {target_lang!r}")
    kept = corpus | {int(target)} | {int(t) for t in tokenizer.all_special_ids}
    size = vocab_size or len(tokenizer)
    if pad_to > size:
        raise ValueError(f"pad_to {pad_to} is larger than the vocabulary ({size})")
    candidate = 0
    while len(kept) < pad_to:
        kept.add(candidate)
        candidate += 1
    return kept, len(corpus)


def derive_vocab(
    translator: str | Path,
    corpus: TrimCorpus,
    target_lang: str = contract.TARGET_LANG,
    pad_to: int = 0,
    *,
    revision: str | None = None,
) -> VocabMap:
    """The kept target ids of `corpus` under the translator's tokenizer; `revision` pins a hub id (branch,
    tag or commit; None: the default branch; local directories ignore it), as `captioning export` does."""
    from transformers import AutoConfig, AutoTokenizer

    from captioning.runtime.tokenization import spm_protobuf_compat

    with spm_protobuf_compat():
        tokenizer = AutoTokenizer.from_pretrained(str(translator), revision=revision)
    sentences = corpus.sentences()
    full_size = AutoConfig.from_pretrained(str(translator), revision=revision).vocab_size
    kept, used = kept_token_ids(tokenizer, sentences, target_lang, pad_to, full_size)
    vocab = VocabMap.of(kept, full_size)
    LOG.info(
        "trimmed vocabulary: %d of %d ids (%d used by %d corpus sentences)",
        len(vocab),
        full_size,
        used,
        len(sentences),
    )
    return vocab
