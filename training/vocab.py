"""The word vocabulary of the from-scratch baselines, and GloVe vectors read from a local text file."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

LOG = logging.getLogger(__name__)

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers; punctuation is dropped (as the original study's cleaning did)."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass
class Vocab:
    words: list[str]

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 2) -> Vocab:
        """Words seen at least `min_count` times in the training captions, most frequent first."""
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        LOG.info("vocabulary: %d of %d distinct words occur >= %d times", len(kept), len(counts), min_count)
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    @property
    def pad(self) -> int:
        return 0

    @property
    def start(self) -> int:
        return 1

    @property
    def end(self) -> int:
        return 2

    @property
    def unk(self) -> int:
        return 3

    def encode(self, caption: str, max_len: int) -> list[int]:
        """<start> w1 .. wn <end>, with at most `max_len` words."""
        ids = [self.index.get(w, self.unk) for w in tokenize(caption)[:max_len]]
        return [self.start, *ids, self.end]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <end>; specials are dropped."""
        words = []
        for i in ids:
            if i == self.end:
                break
            if i >= len(SPECIALS):
                words.append(self.words[i])
        return words


def load_glove(path: Path, vocab: Vocab, seed: int = 0):
    """An embedding matrix [len(vocab), dim] from a GloVe text file ("word v1 v2 ..." per line).

    Words missing from the file get small random vectors, <pad> gets zeros. Returns (matrix, words found).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GloVe file not found")
    vectors: dict[str, list[float]] = {}
    dim = None
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 != dim:
                LOG.warning("%s:%d: %d values, expected %d; skipped", path, number, len(parts) - 1, dim)
                continue
            if parts[0] in vocab.index:
                try:
                    vectors[parts[0]] = [float(v) for v in parts[1:]]
                except ValueError:
                    LOG.warning("%s:%d: not a number; skipped", path, number)
    if dim is None:
        raise ValueError(f"{path}: no vectors found")
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), dim, generator=generator) * 0.1
    matrix[vocab.pad] = 0
    for word, vector in vectors.items():
        matrix[vocab.index[word]] = torch.tensor(vector)
    LOG.info("GloVe %s: %d-d vectors for %d of %d vocabulary words", path, dim, len(vectors), len(vocab))
    return matrix, len(vectors)
