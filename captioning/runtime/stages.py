"""The two generation stages as plain, batched functions: no Triton import, so they are unit-tested directly.

Each stage takes the work of every request in one `execute` call, groups requests that share generation
settings, runs each group as one batch (beams included), and returns a result or an exception per request, so
one bad request never fails its neighbours.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from captioning.decoding import (
    Decoder,
    GenerationCancelled,
    GenerationSettings,
    Overrides,
    VocabMap,
    drain,
    generate_calls,
    map_steps,
)
from captioning.runtime.graphs import GraphRunner
from captioning.runtime.tokenization import TextCodec

LOG = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = str | Exception


@dataclasses.dataclass(frozen=True)
class Source:
    """Text to translate. User text is held to the user-text rules (not empty, at most the user-text limit);
    a caption the pipeline wrote itself (`generated`) only to the encoder's positions, so an image never fails
    because of its own caption (docs/reliability.md), and an empty caption is translated as `generate()` would."""

    text: str
    max_tokens: int | None = None  # None: the codec's user-text limit
    generated: bool = False


def load_settings(path: str | Path) -> GenerationSettings:
    return GenerationSettings.from_dict(json.loads(Path(path).read_text()))


Cancelled = Callable[[], bool]
CANCEL_CHECK_S = 0.25  # asking Triton whether a request was cancelled is a round trip: at most this often


class _GroupCancelled:
    """True once every request of a group was cancelled; asks at most every CANCEL_CHECK_S."""

    def __init__(self, checks: list[Cancelled]) -> None:
        self.checks, self.next_check, self.answer = checks, 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.answer and now >= self.next_check:
            self.next_check = now + CANCEL_CHECK_S
            self.answer = all(check() for check in self.checks)
        return self.answer


def run_grouped(
    items: Sequence[Item | Exception],
    settings: Sequence[GenerationSettings | Exception],
    run_group: Callable[[list[Item], GenerationSettings, Cancelled | None], list[str]],
    what: str,
    cancelled: Sequence[Cancelled] | None = None,
) -> list[Result]:
    """Run every group of items that share settings as one batch; an item or settings that is already an
    exception stays that request's result, and a group that fails fails only its own requests. A group whose
    requests were all cancelled (`cancelled[i]()` true for each) stops decoding between steps."""
    results: list[Result] = [
        item if isinstance(item, Exception) else s if isinstance(s, Exception) else RuntimeError("not run")
        for item, s in zip(items, settings, strict=True)
    ]
    groups: dict[GenerationSettings, list[int]] = defaultdict(list)
    for index, (item, s) in enumerate(zip(items, settings, strict=True)):
        if not isinstance(item, Exception) and not isinstance(s, Exception):
            groups[s].append(index)
    for group_settings, indices in groups.items():
        stop = _GroupCancelled([cancelled[i] for i in indices]) if cancelled is not None else None
        try:
            outputs = run_group([items[i] for i in indices], group_settings, stop)  # type: ignore[misc]
            for i, text in zip(indices, outputs, strict=True):
                results[i] = text
        except GenerationCancelled as exc:
            LOG.info("%s of %d requests stopped: every one was cancelled", what, len(indices))
            for i in indices:
                results[i] = exc
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

    def run(
        self, embeds: Sequence, options: Sequence[Overrides], cancelled: Sequence[Cancelled] | None = None
    ) -> list[Result]:
        per_request = _per_request(self.settings, options)
        return run_grouped(list(embeds), per_request, self._caption, "caption generation", cancelled)

    def prepared(self, embeds: Sequence, options: Overrides) -> tuple[list, GenerationSettings]:
        """One request checked for in-flight admission (ValueError names the problem)."""
        return list(embeds), self.settings.with_overrides(options)

    def steps(self, embeds: list, settings: GenerationSettings, stop: Cancelled | None = None):
        """The captions of `embeds`, decoded a step per `send()`, yielding each forward step (`StepCall`)
        for the caller to answer (`captioning.decoding.drain` answers them at once)."""
        if isinstance(embeds[0], np.ndarray):
            states = np.stack(embeds).astype(np.float32, copy=False)
        else:  # torch tensors on the decoder's device (GPU repositories, through DLPack): they stay there
            import torch

            states = torch.stack(embeds)
        mask = np.ones(tuple(states.shape[:2]), dtype=np.int64)
        steps = generate_calls(self.decoder, states, mask, settings, should_stop=stop)
        return map_steps(steps, self.codec.decode)

    def _caption(
        self, embeds: list, settings: GenerationSettings, stop: Cancelled | None = None
    ) -> list[str]:
        return drain(self.steps(embeds, settings, stop))


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

    def _encode_text(self, item: str | Source) -> list[int]:
        source = item if isinstance(item, Source) else Source(item)
        return self.codec.encode(source.text, source.max_tokens, allow_empty=source.generated)

    def run(
        self,
        texts: Sequence[str | Source],
        options: Sequence[Overrides],
        cancelled: Sequence[Cancelled] | None = None,
    ) -> list[Result]:
        token_ids: list[list[int] | Exception] = []
        for item in texts:
            try:
                token_ids.append(self._encode_text(item))
            except Exception as exc:  # too long, or a tokenizer error: this request only
                token_ids.append(exc)
        per_request = _per_request(self.settings, options)
        return run_grouped(token_ids, per_request, self._translate, "translation", cancelled)

    def prepared(
        self, texts: Sequence[str | Source], options: Overrides
    ) -> tuple[list[list[int]], GenerationSettings]:
        """One request tokenised and checked for in-flight admission (ValueError names the problem)."""
        settings = self.settings.with_overrides(options)
        return [self._encode_text(item) for item in texts], settings

    def steps(self, token_ids: list[list[int]], settings: GenerationSettings, stop: Cancelled | None = None):
        """The translations of `token_ids`, decoded as `CaptionStage.steps` decodes (the encoder runs at once)."""
        ids, mask = self.codec.pad(token_ids)
        states = self.encode(ids, mask)
        steps = generate_calls(self.decoder, states, mask, settings, self.vocab, should_stop=stop)
        return map_steps(steps, self.codec.decode)

    def _translate(
        self, token_ids: list[list[int]], settings: GenerationSettings, stop: Cancelled | None = None
    ) -> list[str]:
        return drain(self.steps(token_ids, settings, stop))
