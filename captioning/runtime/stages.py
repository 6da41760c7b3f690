"""The two generation stages as plain, batched functions: no Triton import, so they are unit-tested directly.

Each stage takes the work of every request in one `execute` call, groups requests that share generation
settings, runs each group as one batch (beams included), and returns a result or an exception per request, so
one bad request never fails its neighbours.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from captioning.decoding import Decoder, GenerationSettings, Overrides, VocabMap, generate
from captioning.runtime.graphs import GraphRunner
from captioning.runtime.tokenization import TextCodec

LOG = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = str | Exception


def load_settings(path: str | Path) -> GenerationSettings:
    return GenerationSettings.from_dict(json.loads(Path(path).read_text()))


def run_grouped(
    items: Sequence[Item | Exception],
    settings: Sequence[GenerationSettings | Exception],
    run_group: Callable[[list[Item], GenerationSettings], list[str]],
    what: str,
) -> list[Result]:
    """Run every group of items that share settings as one batch; an item or settings that is already an
    exception stays that request's result, and a group that fails fails only its own requests."""
    results: list[Result] = [
        item if isinstance(item, Exception) else s if isinstance(s, Exception) else RuntimeError("not run")
        for item, s in zip(items, settings, strict=True)
    ]
    groups: dict[GenerationSettings, list[int]] = defaultdict(list)
    for index, (item, s) in enumerate(zip(items, settings, strict=True)):
        if not isinstance(item, Exception) and not isinstance(s, Exception):
            groups[s].append(index)
    for group_settings, indices in groups.items():
        try:
            outputs = run_group([items[i] for i in indices], group_settings)  # type: ignore[misc]
            for i, text in zip(indices, outputs, strict=True):
                results[i] = text
        except Exception as exc:  # a failed group must not take down the others
            LOG.exception("%s failed for %d requests", what, len(indices))
            for i in indices:
                results[i] = exc
    return results


def _per_request(
    settings: GenerationSettings, options: Sequence[Overrides]
) -> list[GenerationSettings | Exception]:
    out: list[GenerationSettings | Exception] = []
    for opt in options:
        try:
            out.append(settings.with_overrides(opt))
        except ValueError as exc:
            out.append(exc)
    return out


@dataclasses.dataclass
class CaptionStage:
    """Image embeddings -> English captions."""

    decoder: Decoder
    settings: GenerationSettings
    codec: TextCodec

    @property
    def max_new_tokens_limit(self) -> int:
        return self.settings.max_new_tokens

    def run(self, embeds: Sequence[np.ndarray], options: Sequence[Overrides]) -> list[Result]:
        return run_grouped(
            list(embeds), _per_request(self.settings, options), self._caption, "caption generation"
        )

    def _caption(self, embeds: list, settings: GenerationSettings) -> list[str]:
        if isinstance(embeds[0], np.ndarray):
            states = np.stack(embeds).astype(np.float32, copy=False)
        else:  # torch tensors on the decoder's device (GPU repositories, through DLPack): they stay there
            import torch

            states = torch.stack(embeds)
        mask = np.ones(tuple(states.shape[:2]), dtype=np.int64)
        return [self.codec.decode(seq) for seq in generate(self.decoder, states, mask, settings)]


@dataclasses.dataclass
class TranslationStage:
    """English text -> target-language text (mBART-50: `en_XX` -> forced `ar_AR`).

    With a trimmed vocabulary (`vocab`) the decoder scores kept positions, not tokenizer ids; `generate()`
    moves the settings into that space and its outputs back.
    """

    encoder: GraphRunner
    decoder: Decoder
    settings: GenerationSettings
    codec: TextCodec
    vocab: VocabMap | None = None

    def __post_init__(self) -> None:
        if self.vocab is not None:
            self.vocab.remap(self.settings)  # fails at load time, naming an id the trimmed vocabulary lacks

    @property
    def max_new_tokens_limit(self) -> int:
        return self.settings.max_new_tokens

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self.encoder.run({"input_ids": input_ids, "attention_mask": attention_mask})
        return out["last_hidden_state"]

    def run(self, texts: Sequence[str], options: Sequence[Overrides]) -> list[Result]:
        token_ids: list[list[int] | Exception] = []
        for text in texts:
            try:
                token_ids.append(self.codec.encode(text))
            except Exception as exc:  # too long, or a tokenizer error: this request only
                token_ids.append(exc)
        return run_grouped(token_ids, _per_request(self.settings, options), self._translate, "translation")

    def _translate(self, token_ids: list[list[int]], settings: GenerationSettings) -> list[str]:
        ids, mask = self.codec.pad(token_ids)
        states = self.encode(ids, mask)
        return [self.codec.decode(seq) for seq in generate(self.decoder, states, mask, settings, self.vocab)]
