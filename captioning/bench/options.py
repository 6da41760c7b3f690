"""What one `captioning bench` run measures, and with which settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from captioning.datasets import default_data_dir


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    captioner: Path | None = None  # None: the full-size bench checkpoints (built and cached offline)
    translator: Path | None = None
    images_dir: Path = default_data_dir() / "flickr8k" / "Images"
    num_images: int = 8
    num_texts: int = 16  # translation-stage inputs: a full batch of the batched peers
    caption_num_beams: int = 3
    caption_tokens: int = 20  # min = max new tokens
    translation_num_beams: int = 5
    translation_tokens: int = 24
    concurrency: tuple[int, ...] = (1, 4, 16)
    component_concurrency: int | None = None  # english_caption and translator; None: the largest above
    requests: int = 16  # per perf_analyzer window (at least 2x the concurrency)
    repeats: int = 3
    steady: bool = True  # steady-state windows under continuous load; False: one burst per window
    repositories: tuple[tuple[str, Path], ...] = ()  # (label, dir); none: build one from the checkpoints
    output_dir: Path = Path("build/bench")
    baseline: bool = True
    peers: bool = True  # batched generate() and CTranslate2 (captioning.bench.peers)
    bf16_peers: bool = True  # the batched generate() peers again in bf16 (slow where the CPU emulates bf16)
    peer_batch_size: int = 16
    triton: bool = True  # False: the baseline alone
    threads: int = 0  # torch threads for the baseline; 0: all cores
    timeout_s: float = 1800.0  # per perf_analyzer run

    def validate(self) -> None:
        if (self.captioner is None) != (self.translator is None):
            raise ValueError("give both --captioner and --translator, or neither")
        if not (self.in_process or self.triton):
            raise ValueError("nothing to measure: the baseline, the peers and Triton are all switched off")
        if min(self.num_images, self.num_texts, self.repeats, self.requests) < 1:
            raise ValueError("--num-images, --num-texts, --repeats and --requests must be positive")
        if self.peer_batch_size < 1:
            raise ValueError("--peer-batch-size must be positive")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be positive, got {self.concurrency}")

    @property
    def in_process(self) -> bool:
        """Whether anything runs the checkpoints in this process (the baseline or the peers)."""
        return self.baseline or self.peers

    @property
    def side_concurrency(self) -> int:
        return self.component_concurrency or max(self.concurrency)

    def requests_for(self, concurrency: int) -> int:
        return max(self.requests, 2 * concurrency)

    def settings(self) -> dict:
        return {
            "caption_num_beams": self.caption_num_beams,
            "caption_new_tokens": self.caption_tokens,
            "translation_num_beams": self.translation_num_beams,
            "translation_new_tokens": self.translation_tokens,
        }
