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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioning.generation import Decoder, GenerationSettings, generate
from captioning.graphs import GraphRunner
from captioning.options import StageOptions
from captioning.tokenization import TextCodec
from captioning.vocab import VocabMap

LOG = logging.getLogger(__name__)


def apply_options(settings: GenerationSettings, options: StageOptions) -> GenerationSettings:
    changes: dict[str, object] = {}
    if options.num_beams is not None:
        changes["num_beams"] = options.num_beams
    if options.max_new_tokens is not None:
        changes["max_length"] = len(settings.prompt_ids) + options.max_new_tokens
    if not changes:
        return settings
    updated = dataclasses.replace(settings, **changes)
    updated.validate()
    return updated


def load_settings(path: str | Path) -> GenerationSettings:
    return GenerationSettings.from_dict(json.loads(Path(path).read_text()))


def _grouped(settings: Sequence[GenerationSettings]) -> dict[GenerationSettings, list[int]]:
    groups: dict[GenerationSettings, list[int]] = defaultdict(list)
    for index, item in enumerate(settings):
        groups[item].append(index)
    return groups


@dataclasses.dataclass
class CaptionStage:
    """Image embeddings -> English captions."""

    decoder: Decoder
    settings: GenerationSettings
    codec: TextCodec

    @property
    def max_new_tokens_limit(self) -> int:
        return self.settings.max_length - len(self.settings.prompt_ids)

    def run(self, embeds: Sequence[np.ndarray], options: Sequence[StageOptions]) -> list[str | Exception]:
        results: list[str | Exception] = [RuntimeError("not run")] * len(embeds)
        per_request = [apply_options(self.settings, opt) for opt in options]
        for settings, indices in _grouped(per_request).items():
            try:
                states = np.stack([embeds[i] for i in indices]).astype(np.float32, copy=False)
                mask = np.ones(states.shape[:2], dtype=np.int64)
                ids = generate(self.decoder, states, mask, settings)
                for i, seq in zip(indices, ids, strict=True):
                    results[i] = self.codec.decode(seq)
            except Exception as exc:  # a failed group must not take down the others
                LOG.exception("caption generation failed for %d requests", len(indices))
                for i in indices:
                    results[i] = exc
        return results


@dataclasses.dataclass
class TranslationStage:
    """English text -> target-language text (mBART-50: `en_XX` -> forced `ar_AR`).

    With a trimmed vocabulary the decoder scores kept positions, not tokenizer ids: `settings` (given in
    tokenizer ids, as generation.json stores them) are moved into that space and outputs moved back.
    """

    encoder: GraphRunner
    decoder: Decoder
    settings: GenerationSettings
    codec: TextCodec
    vocab: VocabMap | None = None

    def __post_init__(self) -> None:
        if self.vocab is not None:
            self.settings = self.vocab.remap(self.settings)

    @property
    def max_new_tokens_limit(self) -> int:
        return self.settings.max_length - len(self.settings.prompt_ids)

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self.encoder.run({"input_ids": input_ids, "attention_mask": attention_mask})
        return out["last_hidden_state"]

    def run(self, texts: Sequence[str], options: Sequence[StageOptions]) -> list[str | Exception]:
        results: list[str | Exception] = [RuntimeError("not run")] * len(texts)
        per_request: list[GenerationSettings | None] = []
        token_ids: list[list[int] | None] = []
        for index, (text, opt) in enumerate(zip(texts, options, strict=True)):
            try:
                token_ids.append(self.codec.encode(text))
                per_request.append(apply_options(self.settings, opt))
            except Exception as exc:
                results[index] = exc
                token_ids.append(None)
                per_request.append(None)
        valid = [s for s in per_request if s is not None]
        groups = _grouped(valid)
        positions = [i for i, s in enumerate(per_request) if s is not None]
        for settings, local in groups.items():
            indices = [positions[j] for j in local]
            try:
                ids, mask = self.codec.pad([token_ids[i] for i in indices])
                states = self.encode(ids, mask)
                outputs = generate(self.decoder, states, mask, settings)
                for i, seq in zip(indices, outputs, strict=True):
                    results[i] = self.codec.decode(self.vocab.to_full(seq) if self.vocab else seq)
            except Exception as exc:
                LOG.exception("translation failed for %d requests", len(indices))
                for i in indices:
                    results[i] = exc
        return results
