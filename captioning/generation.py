"""Greedy and beam-search decoding in pure numpy, token-for-token equal to `transformers` 4.57.6.

The serving models run their decoder graphs through ONNX Runtime, so the decoding loop cannot use
`model.generate()`. This module re-implements the parts of it the deployment uses (greedy search, beam
search, and the logits processors the checkpoints' generation configs switch on) over a `Decoder`
callable. It imports neither torch nor Triton.

Exactness notes: every score is kept in float32 and combined in the same order as `transformers`; the
only known sources of divergence are (a) `log_softmax`, whose last bit can differ from torch's kernel,
and (b) exact ties in top-k, which torch resolves in an unspecified order and we resolve by lower index.
Both only matter for near-ties between candidates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["Decoder", "GenerationSettings", "generate", "process_scores"]

# GenerationConfig fields whose non-default values change HF's output in ways we do not reproduce.
# Each entry: field name -> predicate saying the value is harmless.
_UNSUPPORTED_HF_FIELDS: dict[str, Any] = {
    "do_sample": lambda v: not v,
    "num_beam_groups": lambda v: v in (None, 1),
    "diversity_penalty": lambda v: v in (None, 0, 0.0),
    "num_return_sequences": lambda v: v in (None, 1),
    "constraints": lambda v: not v,
    "force_words_ids": lambda v: not v,
    "bad_words_ids": lambda v: not v,
    "sequence_bias": lambda v: not v,
    "guidance_scale": lambda v: v in (None, 1, 1.0),
    "encoder_repetition_penalty": lambda v: v in (None, 1, 1.0),
    "encoder_no_repeat_ngram_size": lambda v: not v,
    "min_new_tokens": lambda v: not v,
    "suppress_tokens": lambda v: not v,
    "begin_suppress_tokens": lambda v: not v,
    "exponential_decay_length_penalty": lambda v: v is None,
    "penalty_alpha": lambda v: not v,
    "stop_strings": lambda v: not v,
    "max_time": lambda v: v is None,
    "watermarking_config": lambda v: v is None,
    "renormalize_logits": lambda v: not v,
    "remove_invalid_values": lambda v: not v,
    "prompt_lookup_num_tokens": lambda v: v is None,
    "assistant_early_exit": lambda v: v is None,
    "dola_layers": lambda v: v is None,
    "low_memory": lambda v: not v,
    "forced_decoder_ids": lambda v: not v,
}

# Keyword arguments of `generate()` that do not affect greedy or beam-search outputs.
_IGNORED_HF_FIELDS = frozenset(
    {
        "use_cache", "cache_implementation", "return_dict_in_generate", "output_scores", "output_logits",
        "output_attentions", "output_hidden_states", "temperature", "top_k", "top_p", "min_p", "typical_p",
        "epsilon_cutoff", "eta_cutoff", "bos_token_id", "decoder_start_token_id",
    }
)  # fmt: skip


def _as_id_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int | np.integer):
        return (int(value),)
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class GenerationSettings:
    """Effective decoding settings of one stage; JSON-serialisable, HF semantics for every field."""

    prompt_ids: tuple[int, ...]
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    max_length: int  # total length including the prompt
    min_length: int = 0  # total length including the prompt
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never"
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0

    def validate(self) -> None:
        """Raise ValueError naming the first bad field; generate() calls this before decoding."""

        def is_id(v: Any) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0

        def is_int(v: Any) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool)

        if not isinstance(self.prompt_ids, tuple) or not self.prompt_ids:
            raise ValueError(f"prompt_ids must be a non-empty tuple of token ids, got {self.prompt_ids!r}")
        if not all(is_id(t) for t in self.prompt_ids):
            raise ValueError(f"prompt_ids must hold non-negative ints, got {self.prompt_ids!r}")
        if not isinstance(self.eos_token_ids, tuple) or not all(is_id(t) for t in self.eos_token_ids):
            raise ValueError(
                f"eos_token_ids must be a tuple of non-negative ints, got {self.eos_token_ids!r}"
            )
        if not is_id(self.pad_token_id):
            raise ValueError(f"pad_token_id must be a non-negative int, got {self.pad_token_id!r}")
        if not is_int(self.max_length) or self.max_length <= len(self.prompt_ids):
            raise ValueError(
                f"max_length must be an int greater than the prompt length {len(self.prompt_ids)}, "
                f"got {self.max_length!r}"
            )
        if not is_int(self.min_length) or self.min_length < 0:
            raise ValueError(f"min_length must be a non-negative int, got {self.min_length!r}")
        if not is_int(self.num_beams) or self.num_beams < 1:
            raise ValueError(f"num_beams must be an int >= 1, got {self.num_beams!r}")
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, int | float) or not math.isfinite(lp):
            raise ValueError(f"length_penalty must be a finite number, got {lp!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            value = getattr(self, name)
            if value is not None and not is_id(value):
                raise ValueError(f"{name} must be None or a non-negative int, got {value!r}")
        if not is_int(self.no_repeat_ngram_size) or self.no_repeat_ngram_size < 0:
            raise ValueError(
                f"no_repeat_ngram_size must be a non-negative int, got {self.no_repeat_ngram_size!r}"
            )
        rp = self.repetition_penalty
        if isinstance(rp, bool) or not isinstance(rp, int | float) or not (math.isfinite(rp) and rp > 0):
            raise ValueError(f"repetition_penalty must be a positive finite number, got {rp!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["prompt_ids"] = list(self.prompt_ids)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GenerationSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown generation setting(s): {', '.join(unknown)}")
        kwargs = dict(d)
        for name in ("prompt_ids", "eos_token_ids"):
            if name in kwargs:
                kwargs[name] = _as_id_tuple(kwargs[name])
        settings = cls(**kwargs)
        settings.validate()
        return settings

    @classmethod
    def from_hf(
        cls,
        generation_config: Any,
        *,
        prompt_ids: tuple[int, ...] | list[int],
        eos_token_ids: int | tuple[int, ...] | list[int] | None = None,
        pad_token_id: int | None = None,
        max_length: int | None = None,
        **overrides: Any,
    ) -> GenerationSettings:
        """Settings equal to what `generate(**overrides)` would use with this `GenerationConfig`.

        Model-specific ids that `generate()` overrides (BLIP passes sep as EOS) are given explicitly;
        missing ones fall back to the config like HF does (pad defaults to the first EOS).
        Raises ValueError for any config field whose effect we do not reproduce.
        """
        for name, harmless in _UNSUPPORTED_HF_FIELDS.items():
            value = overrides.get(name, getattr(generation_config, name, None))
            if not harmless(value):
                raise ValueError(f"unsupported generation setting {name}={value!r}")
        for name in _UNSUPPORTED_HF_FIELDS:
            overrides.pop(name, None)

        def pick(name: str, default: Any = None) -> Any:
            value = overrides.pop(name, getattr(generation_config, name, None))
            return default if value is None else value

        prompt = _as_id_tuple(prompt_ids)
        hf_eos = overrides.pop("eos_token_id", generation_config.eos_token_id)
        eos = _as_id_tuple(eos_token_ids if eos_token_ids is not None else hf_eos)
        if pad_token_id is None:
            pad_token_id = generation_config.pad_token_id
        if pad_token_id is None:
            if not eos:
                raise ValueError("pad_token_id is required when there is no eos_token_id")
            pad_token_id = eos[0]
        max_new_tokens = pick("max_new_tokens")
        if max_length is None:
            max_length = pick("max_length", 20)
            if max_new_tokens is not None:
                max_length = len(prompt) + int(max_new_tokens)
        else:
            overrides.pop("max_length", None)
        forced_eos = _as_id_tuple(pick("forced_eos_token_id"))
        if len(forced_eos) > 1:
            raise ValueError(
                f"unsupported generation setting forced_eos_token_id={forced_eos!r} (several ids)"
            )
        settings = cls(
            prompt_ids=prompt,
            eos_token_ids=eos,
            pad_token_id=int(pad_token_id),
            max_length=int(max_length),
            min_length=int(pick("min_length", 0)),
            num_beams=int(pick("num_beams", 1)),
            length_penalty=float(pick("length_penalty", 1.0)),
            early_stopping=pick("early_stopping", False),
            forced_bos_token_id=pick("forced_bos_token_id"),
            forced_eos_token_id=forced_eos[0] if forced_eos else None,
            no_repeat_ngram_size=int(pick("no_repeat_ngram_size", 0)),
            repetition_penalty=float(pick("repetition_penalty", 1.0)),
        )
        # Anything left must be a knob that cannot change greedy/beam outputs; refuse the rest loudly.
        unknown = sorted(set(overrides) - _IGNORED_HF_FIELDS)
        if unknown:
            raise ValueError(f"unsupported generation setting(s): {', '.join(unknown)}")
        settings.validate()
        return settings

    def with_max_new_tokens(self, max_new_tokens: int) -> GenerationSettings:
        """Copy whose max_length allows exactly `max_new_tokens` tokens after the prompt (HF semantics)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        return dataclasses.replace(self, max_length=len(self.prompt_ids) + max_new_tokens)

    def with_num_beams(self, num_beams: int) -> GenerationSettings:
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
        return dataclasses.replace(self, num_beams=num_beams)


class DecoderSession(Protocol):
    """The decoder state of one `generate()` call."""

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """`input_ids` [N,T] (the prompt first, then the newest token) -> last-position logits [N,V] float32.
        N is a multiple of the sources B, rows source-major; it may change between steps (after `reorder`)."""
        ...

    def reorder(self, rows: np.ndarray) -> None:
        """Keep cache row `rows[i]` as row i (beam search; also shrinks to one row per source and back)."""
        ...


class Decoder(Protocol):
    """Starts a session for B sources decoded with `num_beams` rows each (N = B x num_beams, source-major)."""

    def start(
        self, encoder_hidden_states: np.ndarray, encoder_attention_mask: np.ndarray, num_beams: int
    ) -> DecoderSession: ...


StepFunction = Callable[
    [np.ndarray, "list[np.ndarray] | None", np.ndarray, np.ndarray], tuple[np.ndarray, list[np.ndarray]]
]


class CallableDecoder:
    """A `Decoder` over a plain step function `(input_ids, past, states, mask) -> (logits, present)` whose
    encoder inputs are per row (as `generate()` expands them); used for PyTorch references in tests."""

    def __init__(self, function: StepFunction) -> None:
        self.function = function

    def start(self, encoder_hidden_states, encoder_attention_mask, num_beams):
        return _CallableSession(self.function, encoder_hidden_states, encoder_attention_mask)


class _CallableSession:
    def __init__(self, function: StepFunction, states: np.ndarray, mask: np.ndarray) -> None:
        self.function, self.states, self.mask = function, states, mask
        self.past: list[np.ndarray] | None = None

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        rows_per_source = input_ids.shape[0] // self.states.shape[0]
        states = np.repeat(self.states, rows_per_source, axis=0)
        mask = np.repeat(self.mask, rows_per_source, axis=0)
        logits, self.past = self.function(input_ids, self.past, states, mask)
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        if self.past is not None:
            self.past = [np.take(p, rows, axis=0) for p in self.past]


def as_decoder(decoder: Decoder | StepFunction) -> Decoder:
    return decoder if hasattr(decoder, "start") else CallableDecoder(decoder)


def _banned_ngram_tokens(row: np.ndarray, n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `row` (fairseq / HF NoRepeatNGram)."""
    cur_len = row.shape[0]
    if cur_len + 1 < n:
        return []
    tokens = row.tolist()
    prefix = tokens[cur_len + 1 - n :]
    return [tokens[i + n - 1] for i in range(cur_len - n + 1) if tokens[i : i + n - 1] == prefix]


def process_scores(settings: GenerationSettings, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Apply the logits processors HF builds for these settings, in HF's order, to float32 `scores`."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    cur_len = input_ids.shape[-1]
    if settings.repetition_penalty != 1.0:
        penalty = np.float32(settings.repetition_penalty)
        picked = np.take_along_axis(scores, input_ids, axis=1)
        picked = np.where(picked < 0, picked * penalty, picked / penalty).astype(np.float32)
        np.put_along_axis(scores, input_ids, picked, axis=1)
    if settings.no_repeat_ngram_size > 0:
        for i in range(scores.shape[0]):
            banned = _banned_ngram_tokens(input_ids[i], settings.no_repeat_ngram_size)
            if banned:
                scores[i, banned] = -np.inf
    if settings.min_length > 0 and settings.eos_token_ids and cur_len < settings.min_length:
        scores[:, list(settings.eos_token_ids)] = -np.inf
    if settings.forced_bos_token_id is not None and cur_len == 1:
        scores[:] = -np.inf
        scores[:, settings.forced_bos_token_id] = 0.0
    if settings.forced_eos_token_id is not None and cur_len == settings.max_length - 1:
        scores[:] = -np.inf
        scores[:, settings.forced_eos_token_id] = 0.0
    return scores


def _greedy(
    decoder: Decoder,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    s: GenerationSettings,
) -> list[list[int]]:
    batch = encoder_hidden_states.shape[0]
    ids = np.tile(np.asarray(s.prompt_ids, dtype=np.int64), (batch, 1))
    eos = np.asarray(s.eos_token_ids, dtype=np.int64)
    unfinished = np.ones(batch, dtype=bool)
    lengths = np.full(batch, s.max_length, dtype=np.int64)
    session = decoder.start(encoder_hidden_states, encoder_attention_mask, 1)
    step_ids = ids
    while True:
        logits = session.step(step_ids)
        scores = process_scores(s, ids, logits)
        next_tokens = np.where(unfinished, scores.argmax(axis=-1), s.pad_token_id).astype(np.int64)
        ids = np.concatenate([ids, next_tokens[:, None]], axis=1)
        hit = np.isin(next_tokens, eos) | (ids.shape[1] >= s.max_length)
        lengths[unfinished & hit] = ids.shape[1]
        unfinished &= ~hit
        if not unfinished.any():
            break
        step_ids = next_tokens[:, None]
    return [ids[b, : lengths[b]].tolist() for b in range(batch)]


def generate(
    decoder: Decoder,
    encoder_hidden_states: np.ndarray,
    encoder_attention_mask: np.ndarray,
    settings: GenerationSettings,
) -> list[list[int]]:
    """Decode every batch item; returns, per item, the ids HF `generate()` returns for it alone
    (prompt included, nothing after EOS / the end of the best hypothesis)."""
    settings.validate()
    if encoder_hidden_states.shape[0] != encoder_attention_mask.shape[0]:
        raise ValueError("encoder_hidden_states and encoder_attention_mask disagree on the batch size")
    if encoder_hidden_states.shape[0] == 0:
        return []
    decoder = as_decoder(decoder)
    if settings.num_beams == 1:
        return _greedy(decoder, encoder_hidden_states, encoder_attention_mask, settings)
    from captioning.beam_search import beam_search

    return beam_search(decoder, encoder_hidden_states, encoder_attention_mask, settings, process_scores)
