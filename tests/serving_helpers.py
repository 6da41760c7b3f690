"""Helpers for the integration tests: the `transformers` reference, server statistics, staggered clients."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Sequence

MAX_LENGTH = 64


def serve(repository, log_dir):
    """A TritonServer on free ports for `repository` (a context manager), logging into `log_dir`."""
    from captioning.server.launcher import ServerOptions, TritonServer

    return TritonServer(
        ServerOptions.on_free_ports(repository, log_file=log_dir / "tritonserver.log", ready_timeout_s=240)
    )


class Reference:
    """What the original app computed per request: `generate()` on the PyTorch checkpoints, one at a time."""

    def __init__(self, checkpoints):
        import torch
        from transformers import (
            AutoTokenizer,
            BlipForConditionalGeneration,
            BlipProcessor,
            MBartForConditionalGeneration,
        )

        # One thread: the server under test shares the cores, and oversubscribed torch threads crawl.
        torch.set_num_threads(1)
        self.torch = torch
        self.processor = BlipProcessor.from_pretrained(checkpoints.blip)
        self.blip = BlipForConditionalGeneration.from_pretrained(checkpoints.blip).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoints.mbart, src_lang="en_XX")
        self.mbart = MBartForConditionalGeneration.from_pretrained(checkpoints.mbart).eval()
        self.ar_id = self.tokenizer.convert_tokens_to_ids("ar_AR")
        self._cache: dict[tuple, str] = {}

    def caption(
        self, image_bytes: bytes, num_beams: int | None = None, max_new_tokens: int | None = None
    ) -> str:
        from PIL import Image

        key = ("caption", image_bytes, num_beams, max_new_tokens)
        if key not in self._cache:
            pixels = self.processor(
                images=Image.open(io.BytesIO(image_bytes)), return_tensors="pt"
            ).pixel_values
            kwargs: dict[str, int] = {"max_length": MAX_LENGTH}
            if max_new_tokens is not None:
                kwargs = {"max_new_tokens": max_new_tokens}
            if num_beams is not None:
                kwargs["num_beams"] = num_beams
            ids = self.blip.generate(pixels, **kwargs)
            self._cache[key] = self.processor.decode(ids[0], skip_special_tokens=True)
        return self._cache[key]

    def translate(self, text: str, num_beams: int | None = None) -> str:
        key = ("translate", text, num_beams)
        if key not in self._cache:
            inputs = self.tokenizer(text, return_tensors="pt")
            kwargs = {"max_length": MAX_LENGTH, "forced_bos_token_id": self.ar_id}
            if num_beams is not None:
                kwargs["num_beams"] = num_beams
            ids = self.mbart.generate(**inputs, **kwargs)
            self._cache[key] = self.tokenizer.decode(ids[0], skip_special_tokens=True)
        return self._cache[key]

    def both(self, image_bytes: bytes, caption_num_beams=None, translation_num_beams=None) -> tuple[str, str]:
        english = self.caption(image_bytes, caption_num_beams)
        return english, self.translate(english, translation_num_beams)


def batch_stats(server, model: str) -> dict[int, int]:
    """Executions per batch size, from the server's own statistics."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    out: dict[int, int] = {}
    for entry in stats["model_stats"][0].get("batch_stats", []):
        out[int(entry["batch_size"])] = int(entry["compute_infer"]["count"])
    return out


def assert_all_equal(pairs: Sequence[tuple[object, object]], what: str) -> None:
    mismatches = [(i, a, b) for i, (a, b) in enumerate(pairs) if a != b]
    assert not mismatches, f"{len(mismatches)}/{len(pairs)} {what} differ; first: {mismatches[:3]}"


def staggered(jobs, spread_s: float) -> list:
    """Run each job on its own thread, starting at random offsets within `spread_s`."""
    results: list = [None] * len(jobs)
    rng = random.Random(0)

    def run(i: int, delay: float) -> None:
        time.sleep(delay)
        try:
            results[i] = jobs[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, rng.uniform(0, spread_s))) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def cold_start_retry():
    """What staggered clients against a cold server retry with: the door admits one batch until answers are
    timed, and refuses the rest (retryable), as SDK users see it."""
    from captioning.client import RetryPolicy

    return RetryPolicy(retries=10, backoff_s=0.5)


def staggered_options(i: int):
    """The options of the i-th staggered caption: 3 beams and the default alternate, so cohorts differ."""
    from captioning.client import GenerationOptions

    return GenerationOptions(caption_num_beams=3) if i % 2 == 0 else GenerationOptions()


def staggered_captions(url: str, images: Sequence[bytes], extra=()) -> list:
    """Caption each image from its own client thread, started at random within 2 s, with `staggered_options`;
    `extra` are more jobs, each given the client. Results (or exceptions) in order, images first."""
    from captioning.client import CaptionClient

    with CaptionClient(url, timeout_s=300, retry=cold_start_retry()) as client:
        options = [staggered_options(i) for i in range(len(images))]
        jobs = [
            (lambda data=data, o=o: client.caption(data, options=o))
            for data, o in zip(images, options, strict=True)
        ]
        jobs += [(lambda job=job: job(client)) for job in extra]
        return staggered(jobs, spread_s=2.0)
