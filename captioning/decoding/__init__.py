"""Decoding in numpy: settings, logits processors, greedy and beam search, trimmed vocabularies.

No torch, no Triton, no ONNX Runtime: a `Decoder` supplies logits, and `tokens.py` is the one place where
the next token is chosen from them.
"""

from captioning.decoding.decoder import (
    CallableDecoder,
    Decoder,
    DecoderSession,
    Progress,
    StepCall,
    Steps,
    drain,
    map_steps,
    served,
)
from captioning.decoding.generate import GenerationCancelled, generate, generate_calls, generate_steps
from captioning.decoding.settings import GenerationSettings, Overrides
from captioning.decoding.vocab import VocabMap

__all__ = [
    "CallableDecoder",
    "Decoder",
    "GenerationCancelled",
    "DecoderSession",
    "GenerationSettings",
    "Overrides",
    "Progress",
    "StepCall",
    "Steps",
    "VocabMap",
    "drain",
    "map_steps",
    "generate",
    "generate_calls",
    "generate_steps",
    "served",
]
