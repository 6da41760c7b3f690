"""Trimmed target vocabularies: the map between a trimmed decoder's output positions and tokenizer ids.

An opt-in export (`captioning trim-vocab`, then `captioning export --translator-vocab`) keeps only the
target-language rows of mBART's decoder embeddings and output layer, which removes most of the 250k-wide
output projection. The trimmed step graph reads and scores *positions* in the kept list; this module moves
generation settings into that space and generated sequences back out of it. No torch, no Triton.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from captioning.decoding.settings import GenerationSettings

FORMAT = "captioning.trimmed-vocab/1"


@dataclasses.dataclass(frozen=True)
class VocabMap:
    """`kept_ids[i]` is the tokenizer id that trimmed position `i` stands for (sorted, unique)."""

    kept_ids: tuple[int, ...]
    full_size: int  # the untrimmed vocabulary size the ids index into

    def validate(self) -> None:
        ids = np.asarray(self.kept_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("kept_ids must be a non-empty list of token ids")
        if ids.min() < 0 or ids.max() >= self.full_size:
            raise ValueError(f"kept_ids must lie in 0..{self.full_size - 1}")
        if np.any(np.diff(ids) <= 0):
            raise ValueError("kept_ids must be sorted and unique")

    def __post_init__(self) -> None:
        self.validate()
        index = {token: position for position, token in enumerate(self.kept_ids)}
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_ids", np.asarray(self.kept_ids, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.kept_ids)

    def position(self, token_id: int, role: str) -> int:
        try:
            return self._index[int(token_id)]  # type: ignore[attr-defined]
        except KeyError:
            raise ValueError(f"{role} token id {token_id} is not in the trimmed vocabulary") from None

    def to_full(self, positions: Sequence[int]) -> list[int]:
        return self._ids[np.asarray(positions, dtype=np.int64)].tolist()  # type: ignore[attr-defined]

    def remap(self, settings: GenerationSettings) -> GenerationSettings:
        """The same settings with every token id replaced by its trimmed position."""

        def optional(value: int | None, role: str) -> int | None:
            return None if value is None else self.position(value, role)

        return dataclasses.replace(
            settings,
            prompt_ids=tuple(self.position(t, "prompt") for t in settings.prompt_ids),
            eos_token_ids=tuple(self.position(t, "eos") for t in settings.eos_token_ids),
            pad_token_id=self.position(settings.pad_token_id, "pad"),
            forced_bos_token_id=optional(settings.forced_bos_token_id, "forced_bos"),
            forced_eos_token_id=optional(settings.forced_eos_token_id, "forced_eos"),
        )

    def to_dict(self) -> dict:
        return {"format": FORMAT, "full_size": self.full_size, "kept_ids": list(self.kept_ids)}

    @classmethod
    def from_dict(cls, data: dict) -> VocabMap:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a trimmed-vocabulary file (format {data.get('format')!r}, expected {FORMAT!r})"
            )
        return cls(tuple(int(t) for t in data["kept_ids"]), int(data["full_size"]))

    @classmethod
    def of(cls, ids: Iterable[int], full_size: int) -> VocabMap:
        return cls(tuple(sorted({int(t) for t in ids})), full_size)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> VocabMap:
        return cls.from_dict(json.loads(Path(path).read_text()))
