"""Full-size BLIP-base and mBART-large-50 checkpoints with random weights, built offline for benchmarks.

Speed depends on the architecture, not the weights, as long as the output length is fixed (the bench sets
min = max new tokens). So these have the real dimensions: BLIP-base at 384 px (ViT-B/16, BERT-base text
decoder, 30,524 tokens) and mBART-large-50 (d_model 1024, 12+12 layers, 16 heads, FFN 4096, 250,054 tokens,
611M parameters) with the many-to-many checkpoint's generation config.

The tokenizers are the offline fixtures' (captioning/testing/fixtures.py): BLIP's is the real bert-base-uncased
vocabulary; mBART's SentencePiece model has only ~4k pieces. So that every generated id decodes, the
translator's `final_logits_bias` is set to -1e4 for ids >= len(tokenizer): the output layer still computes
all 250,054 logits (and costs what the real one does), but never picks a token the tokenizer cannot write.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from captioning.datasets import PROJECT_ROOT, default_data_dir
from captioning.testing import fixtures
from captioning.testing.fixtures import FixturePaths

LOG = logging.getLogger(__name__)

CACHE_ROOT = PROJECT_ROOT / ".cache" / "bench-checkpoints"
BLIP_IMAGE_SIZE = 384
MBART_VOCAB_SIZE = 250_054
UNWRITABLE_BIAS = -1e4  # final_logits_bias of ids the small tokenizer has no piece for

# Salesforce/blip-image-captioning-base: BlipConfig's defaults, except the text decoder's 12 heads.
BLIP_TEXT = {"num_attention_heads": 12}
BLIP_VISION = {"image_size": BLIP_IMAGE_SIZE, "patch_size": 16, "layer_norm_eps": 1e-5}

# facebook/mbart-large-50-many-to-many-mmt.
MBART_DIMS = {
    "vocab_size": MBART_VOCAB_SIZE,
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "max_position_embeddings": 1024,
    "scale_embedding": True,
    "activation_function": "relu",
    "normalize_before": True,
    "add_final_layer_norm": True,
}
MBART_GENERATION = {"num_beams": 5, "max_length": 200, "early_stopping": True}


def blip_config():
    """BLIP-base's configuration (text decoder special tokens as BLIP's tokenizer lays them out)."""
    from transformers import BlipConfig

    return BlipConfig(text_config=dict(BLIP_TEXT), vision_config=dict(BLIP_VISION), projection_dim=512)


def mbart_config(pad_token_id: int = 1, bos_token_id: int = 0, eos_token_id: int = 2):
    """mBART-large-50's configuration; the ids default to mBART-50's (and the fixture tokenizer's)."""
    from transformers import MBartConfig

    return MBartConfig(
        **MBART_DIMS,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=eos_token_id,
        forced_eos_token_id=eos_token_id,
        tokenizer_class="MBart50Tokenizer",
    )


def mbart_generation_config(config):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_eos_token_id=config.forced_eos_token_id,
        **MBART_GENERATION,
    )


def make_blip(output: Path, data_dir: Path) -> Path:
    from transformers import BlipForConditionalGeneration

    from captioning.testing.fixtures import _blip_processor

    processor = _blip_processor(data_dir)
    processor.image_processor.size = {"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE}
    config = blip_config()
    if len(processor.tokenizer) != config.text_config.vocab_size:
        raise ValueError(f"BLIP tokenizer has {len(processor.tokenizer)} tokens, the config expects 30524")
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(output, safe_serialization=True)
    processor.save_pretrained(output)
    return output


def make_mbart(output: Path, data_dir: Path) -> Path:
    import torch
    from transformers import MBartForConditionalGeneration

    from captioning.testing.fixtures import _mbart_tokenizer

    with tempfile.TemporaryDirectory() as work:
        tokenizer = _mbart_tokenizer(Path(work), data_dir)
        config = mbart_config(tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
        model = MBartForConditionalGeneration(config).eval()
        model.generation_config = mbart_generation_config(config)
        with torch.no_grad():
            model.final_logits_bias[0, len(tokenizer) :] = UNWRITABLE_BIAS
        model.save_pretrained(output, safe_serialization=True)
        tokenizer.save_pretrained(output)
    return output


def make_bench_checkpoints(output: Path, seed: int = 0, data_dir: Path | None = None) -> FixturePaths:
    """Build both into ``output/blip`` and ``output/mbart`` (about 1 GB and 2.4 GB of safetensors)."""
    import torch

    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for name, make, offset in (("blip", make_blip, 0), ("mbart", make_mbart, 1)):
        started = time.perf_counter()
        torch.manual_seed(seed + offset)
        make(output / name, data_dir)
        LOG.info("built full-size %s in %.1f s", name, time.perf_counter() - started)
    return FixturePaths(blip=output / "blip", mbart=output / "mbart")


def bench_key(seed: int) -> str:
    """Changes with this module, the fixtures module (tokenizers) and the seed."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(fixtures.__file__).read_bytes())
    digest.update(f"seed={seed}".encode())
    return digest.hexdigest()[:16]


def cached_bench_checkpoints(cache_root: Path = CACHE_ROOT, seed: int = 0) -> FixturePaths:
    """Build once per module version and seed, into a temp folder renamed into place when complete."""
    cache_root = Path(cache_root)
    final = cache_root / f"seed{seed}-{bench_key(seed)}"
    if not final.is_dir():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=cache_root))
        try:
            make_bench_checkpoints(tmp, seed=seed)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return FixturePaths(blip=final / "blip", mbart=final / "mbart")
