"""Decoding settings with `transformers` 4.57.6 semantics, read from a checkpoint's `GenerationConfig`.

Settings refuse every generation-config field whose effect the numpy decoder does not reproduce, so a
repository never silently decodes differently from `generate()`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GenerationSettings", "Overrides"]

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
        _refuse_unsupported(generation_config, overrides)

        def pick(name: str, default: Any = None) -> Any:
            value = overrides.pop(name, getattr(generation_config, name, None))
            return default if value is None else value

        prompt = _as_id_tuple(prompt_ids)
        hf_eos = overrides.pop("eos_token_id", generation_config.eos_token_id)
        eos = _as_id_tuple(eos_token_ids if eos_token_ids is not None else hf_eos)
        pad_token_id = _pad_id(pad_token_id, generation_config.pad_token_id, eos)
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

    @property
    def max_new_tokens(self) -> int:
        return self.max_length - len(self.prompt_ids)

    def with_overrides(self, overrides: Overrides) -> GenerationSettings:
        """The one way to change settings after loading them: repository defaults at export time and
        per-request options at serve time both arrive as `Overrides` (HF semantics for each field)."""
        changes: dict[str, Any] = {}
        if overrides.num_beams is not None:
            changes["num_beams"] = _positive("num_beams", overrides.num_beams)
        if overrides.max_new_tokens is not None:
            changes["max_length"] = len(self.prompt_ids) + _positive(
                "max_new_tokens", overrides.max_new_tokens
            )
        if overrides.min_new_tokens is not None:
            changes["min_length"] = len(self.prompt_ids) + _positive(
                "min_new_tokens", overrides.min_new_tokens
            )
        if not changes:
            return self
        updated = dataclasses.replace(self, **changes)
        updated.validate()
        return updated


@dataclass(frozen=True)
class Overrides:
    """Changes to one stage's settings; None keeps the value loaded from the checkpoint or repository."""

    num_beams: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int | None = None  # equal to max_new_tokens fixes output lengths (benchmarks)


def _refuse_unsupported(generation_config: Any, overrides: dict[str, Any]) -> None:
    """Raise for a config field whose effect we do not reproduce; drop the harmless ones from `overrides`."""
    for name, harmless in _UNSUPPORTED_HF_FIELDS.items():
        value = overrides.get(name, getattr(generation_config, name, None))
        if not harmless(value):
            raise ValueError(f"unsupported generation setting {name}={value!r}")
    for name in _UNSUPPORTED_HF_FIELDS:
        overrides.pop(name, None)


def _pad_id(given: int | None, configured: int | None, eos: tuple[int, ...]) -> int:
    """HF's fallback: the given pad id, else the config's, else the first EOS."""
    pad = given if given is not None else configured
    if pad is None:
        if not eos:
            raise ValueError("pad_token_id is required when there is no eos_token_id")
        pad = eos[0]
    return int(pad)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)
