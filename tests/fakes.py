"""Fakes of the runtime's collaborators (decoder, tokenizer, encoder graph) for tests of stages and adapters."""

from __future__ import annotations

import numpy as np

from captioning.decoding import GenerationSettings

VOCAB, EOS, PAD = 12, 2, 1
SETTINGS = GenerationSettings(prompt_ids=(0,), eos_token_ids=(EOS,), pad_token_id=PAD, max_length=6)


class FakeDecoder:
    """Logits that depend on each source's states and the step, so rows differ; records every batch."""

    def __init__(self, fail_when_beams: int | None = None) -> None:
        self.batches: list[tuple[int, int]] = []  # (sources, beams) per generate() call
        self.fail_when_beams = fail_when_beams

    def start(self, states, mask, num_beams):
        if num_beams == self.fail_when_beams:
            raise RuntimeError("decoder broke")
        self.batches.append((states.shape[0], num_beams))
        return _Session(states.reshape(states.shape[0], -1).sum(axis=1))


class TrackedDecoder(FakeDecoder):
    """Keeps a weak reference to every session it starts: a session still alive after its batch is memory held."""

    def __init__(self, fail_when_beams: int | None = None) -> None:
        super().__init__(fail_when_beams)
        self.sessions: list = []

    def start(self, states, mask, num_beams):
        import weakref

        session = super().start(states, mask, num_beams)
        self.sessions.append(weakref.ref(session))
        return session


class _Session:
    def __init__(self, seeds: np.ndarray) -> None:
        self.seeds = seeds
        self.steps = 0

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        rows = input_ids.shape[0]
        per_source = rows // len(self.seeds)
        seeds = np.repeat(self.seeds, per_source)
        logits = np.zeros((rows, VOCAB), dtype=np.float32)
        tokens = (seeds.astype(np.int64) + self.steps) % (VOCAB - 3) + 3  # never EOS or PAD early
        logits[np.arange(rows), tokens] = 5.0
        logits[:, EOS] = 4.0 if self.steps >= 2 else -5.0
        self.steps += 1
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        pass


class FakeTokenizer:
    pad_token_id = PAD
    unk_token_id = 3

    def __call__(self, text: str) -> dict:
        return {"input_ids": [ord(c) % VOCAB for c in text] + [EOS]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i in (0, PAD, EOS)))


class FakeEncoder:
    input_names = ("input_ids", "attention_mask")
    output_names = ("last_hidden_state",)

    def run(self, feeds):
        ids = feeds["input_ids"].astype(np.float32)
        return {"last_hidden_state": np.repeat(ids[:, :, None], 4, axis=2)}
