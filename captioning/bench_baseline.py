"""The baseline of `captioning bench`: the original app's pipeline, in-process eager PyTorch, one request
at a time (decode the JPEG, BLIP processor, `blip.generate`, decode, tokenise, `mbart.generate` with the
Arabic language code forced, decode), using every core as torch does by default."""

from __future__ import annotations

import io
import logging
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captioning.bench import BenchOptions

LOG = logging.getLogger(__name__)


def run_baseline(options: BenchOptions, captioner: Path, translator: Path, images: list) -> dict:
    """The original app: per request, processor -> blip.generate -> decode -> tokenizer -> mbart.generate."""
    import torch
    from PIL import Image
    from tqdm import tqdm
    from transformers import (
        AutoTokenizer,
        BlipForConditionalGeneration,
        BlipProcessor,
        MBartForConditionalGeneration,
    )

    from captioning.bench_report import percentile, summary
    from captioning.tokenization import spm_protobuf_compat

    threads = options.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    processor = BlipProcessor.from_pretrained(captioner)
    blip = BlipForConditionalGeneration.from_pretrained(captioner).eval()
    with spm_protobuf_compat():
        tokenizer = AutoTokenizer.from_pretrained(translator, src_lang="en_XX")
    mbart = MBartForConditionalGeneration.from_pretrained(translator).eval()
    ar_id = tokenizer.convert_tokens_to_ids("ar_AR")
    caption_kw = {"num_beams": options.caption_beams, "min_new_tokens": options.caption_tokens}
    caption_kw["max_new_tokens"] = options.caption_tokens
    translate_kw = {"num_beams": options.translation_beams, "min_new_tokens": options.translation_tokens}
    translate_kw.update(max_new_tokens=options.translation_tokens, forced_bos_token_id=ar_id)

    def one(data: bytes) -> tuple[float, dict]:
        started = time.perf_counter()
        with torch.inference_mode():
            pixels = processor(images=Image.open(io.BytesIO(data)), return_tensors="pt").pixel_values
            caption_ids = blip.generate(pixel_values=pixels, **caption_kw)
            english = processor.decode(caption_ids[0], skip_special_tokens=True)
            translated = mbart.generate(**tokenizer(english, return_tensors="pt"), **translate_kw)
            arabic = tokenizer.decode(translated[0], skip_special_tokens=True)
        elapsed = time.perf_counter() - started
        tokens = {"caption": caption_ids.shape[1] - 1, "translation": translated.shape[1] - 1}
        return elapsed, {"english": english, "arabic": arabic, "new_tokens": tokens}

    one(images[0][1])  # warm-up: first-call allocations and kernel selection
    latencies, rates, outputs = [], [], []
    for repeat in range(options.repeats):
        started = time.perf_counter()
        for name, data in tqdm(images, desc=f"baseline {repeat + 1}/{options.repeats}", unit="img"):
            elapsed, output = one(data)
            latencies.append(elapsed)
            if repeat == 0:
                outputs.append({"image": name, **output})
        rates.append(len(images) / (time.perf_counter() - started))
    LOG.info("baseline: %.3f images/s, p50 %.2f s", statistics.median(rates), statistics.median(latencies))
    return {
        "threads": threads,
        "latencies_s": latencies,
        "images_per_s": summary(rates),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "outputs": outputs,
    }
