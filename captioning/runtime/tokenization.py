"""Tokenisation for the served stages: the checkpoints' own tokenizers, batched and padded like `generate()` inputs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from captioning.contract import MAX_SOURCE_TOKENS


@contextlib.contextmanager
def spm_protobuf_compat() -> Iterator[None]:
    """Let the slow->fast conversion parse the spm model when sentencepiece's bundled protobuf code is
    newer than the installed protobuf runtime (sentencepiece 0.2.1+ with protobuf 6 raises VersionError);
    transformers ships an equivalent parser that works with the installed runtime."""
    import importlib
    from unittest import mock

    # Not ``import transformers.convert_slow_tokenizer``: the package re-exports a function of that name.
    convert = importlib.import_module("transformers.convert_slow_tokenizer")

    try:
        convert.import_protobuf()
    except Exception:  # any import or protobuf version failure: use the fallback
        from transformers.utils import sentencepiece_model_pb2_new

        with mock.patch.object(convert, "import_protobuf", lambda *_a, **_k: sentencepiece_model_pb2_new):
            yield
        return
    yield


class TextTooLongError(ValueError):
    """The text needs more tokens than the limit allows (user text) or the encoder's positions (captions)."""


class EmptyTextError(ValueError):
    """Nothing to translate: refused by rule, so an empty request never costs a decode."""


MAX_CHARS_PER_TOKEN = 32  # SentencePiece pieces are at most 16 characters; twice that leaves room


@dataclasses.dataclass
class TextCodec:
    """Encode source text and decode generated ids with a Hugging Face tokenizer loaded from disk."""

    tokenizer: object
    max_source_tokens: int = MAX_SOURCE_TOKENS

    @classmethod
    def load(
        cls, path: str | Path, *, src_lang: str | None = None, max_source_tokens: int = MAX_SOURCE_TOKENS
    ) -> TextCodec:
        from transformers import AutoTokenizer

        # The tokenizer files an export (or a checkpoint) saved in `path`: local only, never the hub.
        directory = str(path)
        with spm_protobuf_compat():
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)  # nosec B615 # an exported repository's tokenizer dir, local_files_only
        if src_lang is not None:
            tokenizer.src_lang = src_lang
        return cls(tokenizer=tokenizer, max_source_tokens=max_source_tokens)

    def token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no token {token!r}")
        return int(token_id)

    def encode(self, text: str, max_tokens: int | None = None, allow_empty: bool = False) -> list[int]:
        """Token ids of `text`; refuses empty text and text over `max_tokens` (default: the user-text limit).

        A SentencePiece piece covers at most `MAX_CHARS_PER_TOKEN` characters, so text longer than that many
        characters per allowed token is refused before it is tokenised (a 1 MB text costs nothing)."""
        limit = self.max_source_tokens if max_tokens is None else max_tokens
        if not allow_empty and not text.strip():
            raise EmptyTextError("text is empty")
        if len(text) > MAX_CHARS_PER_TOKEN * limit:
            raise TextTooLongError(f"text is {len(text)} characters long; the limit is {limit} tokens")
        ids = self.tokenizer(text)["input_ids"]
        if len(ids) > limit:
            raise TextTooLongError(f"text is {len(ids)} tokens long; the limit is {limit}")
        return list(ids)

    def pad(self, sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad to a batch, as `tokenizer(texts, padding=True)` does."""
        width = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id
        ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), width), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]
