"""The offline fixtures must behave like the real BLIP / mBART-50 checkpoints, only tiny."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from captioning.testing.fixtures import (
    BLIP_IMAGE_SIZE,
    CLIP_MEAN,
    CLIP_STD,
    FixturePaths,
    cached_fixtures,
    default_data_dir,
    fixture_key,
    tatoeba_pairs,
)

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(
    not (DATA / "flickr8k").is_dir(),
    reason=f"shared data not found at {DATA} (set CAPTIONING_DATA_DIR or check out ../shared/data)",
)


@pytest.fixture(scope="module")
def fx() -> FixturePaths:
    import torch

    torch.set_num_threads(1)
    return cached_fixtures()


@pytest.fixture(scope="module")
def images() -> list:
    from PIL import Image

    names = sorted(p.name for p in (DATA / "flickr8k" / "Images").iterdir())[:6]
    return [Image.open(DATA / "flickr8k" / "Images" / n).convert("RGB") for n in names]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return [en for en, _ in tatoeba_pairs(DATA)][::500][:16]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------- cache


def test_cache_is_keyed_and_reused(fx: FixturePaths) -> None:
    assert fx.blip.parent.name.endswith(fixture_key(0))
    assert fixture_key(0) != fixture_key(1)
    stamp = (fx.blip / "model.safetensors").stat().st_mtime_ns
    again = cached_fixtures()
    assert again == fx
    assert (again.blip / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_rebuild_is_byte_identical(fx: FixturePaths, tmp_path: Path) -> None:
    fresh = cached_fixtures(tmp_path, seed=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".build-")], "temp build left behind"
    for ours, theirs in ((fresh.blip, fx.blip), (fresh.mbart, fx.mbart)):
        names = _files(ours)
        assert names == _files(theirs)
        _, mismatch, errors = filecmp.cmpfiles(ours, theirs, names, shallow=False)
        assert not mismatch and not errors, mismatch + errors


# -------------------------------------------------------------------------------------------- BLIP


def test_blip_tokenizer_matches_real_layout(fx: FixturePaths) -> None:
    from transformers import AutoProcessor, BertTokenizerFast, BlipProcessor

    processor = AutoProcessor.from_pretrained(fx.blip)
    assert isinstance(processor, BlipProcessor)
    tok = processor.tokenizer
    assert isinstance(tok, BertTokenizerFast)
    assert len(tok) == 30524 and tok.model_max_length == 512
    assert (tok.bos_token, tok.bos_token_id) == ("[DEC]", 30522)
    assert tok.convert_tokens_to_ids("[ENC]") == 30523
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 101, 102)
    assert tok("A Dog.")["input_ids"] == [101, 1037, 3899, 1012, 102]
    assert (fx.blip / "vocab.txt").read_bytes() == (DATA / "bert-base-uncased" / "vocab.txt").read_bytes()


def test_blip_config_mirrors_real_checkpoint(fx: FixturePaths) -> None:
    from transformers import BlipConfig, GenerationConfig

    cfg = BlipConfig.from_pretrained(fx.blip)
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.vocab_size, text.bos_token_id, text.sep_token_id) == (30524, 30522, 102)
    assert (text.pad_token_id, text.eos_token_id) == (0, 2)
    assert text.max_position_embeddings >= 64
    assert (vision.image_size, vision.patch_size) == (BLIP_IMAGE_SIZE, 16)
    assert text.encoder_hidden_size == vision.hidden_size
    gen = GenerationConfig.from_pretrained(fx.blip)
    assert (gen.bos_token_id, gen.pad_token_id) == (30522, 0)


def test_blip_processor_normalises_like_clip(fx: FixturePaths, images: list) -> None:
    from PIL import Image
    from transformers import BlipProcessor

    processor = BlipProcessor.from_pretrained(fx.blip)
    pixels = processor(images=images[:2], return_tensors="np")["pixel_values"]
    assert pixels.shape == (2, 3, BLIP_IMAGE_SIZE, BLIP_IMAGE_SIZE) and pixels.dtype == np.float32
    resized = images[0].resize((BLIP_IMAGE_SIZE, BLIP_IMAGE_SIZE), Image.BICUBIC)
    expected = (np.asarray(resized, np.float32) / 255 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(pixels[0], expected.transpose(2, 0, 1), atol=1e-5)


def test_blip_generates_varied_captions(fx: FixturePaths, images: list) -> None:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(fx.blip)
    model = BlipForConditionalGeneration.from_pretrained(fx.blip).eval()
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_length=64, output_scores=True, return_dict_in_generate=True)
    seqs = out.sequences.tolist()
    assert all(s[0] == 30522 for s in seqs)
    captions = processor.batch_decode(out.sequences, skip_special_tokens=True)
    assert len(set(captions)) >= len(images) - 1, captions
    lengths = {sum(t != 0 for t in s) for s in seqs}
    assert len(lengths) > 1, "every caption has the same length"
    assert any(102 in s for s in seqs), "no caption ever ends with [SEP]"
    _assert_peaked(out.scores)


def _assert_peaked(scores: tuple) -> None:
    import torch

    logits = torch.cat([s for s in scores])
    top = logits.topk(2, dim=-1).values
    gaps = top[:, 0] - top[:, 1]
    gaps = gaps[torch.isfinite(gaps)]
    assert gaps.median() > 5, gaps.median()
    assert (gaps > 1).float().mean() > 0.8


# ------------------------------------------------------------------------------------------- mBART


def test_mbart_tokenizer_layout_and_fast_equals_slow(fx: FixturePaths, sentences: list[str]) -> None:
    from transformers import AutoTokenizer, MBart50Tokenizer, MBart50TokenizerFast

    fast = AutoTokenizer.from_pretrained(fx.mbart)
    slow = MBart50Tokenizer.from_pretrained(fx.mbart)
    assert isinstance(fast, MBart50TokenizerFast)
    assert len(fast) == len(slow)
    spm_size = len(slow.sp_model)
    # fairseq layout: <s> <pad> </s> <unk>, spm pieces shifted by one, 52 language codes, then <mask>
    assert [fast.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert fast.convert_tokens_to_ids("ar_AR") == spm_size + 1
    assert fast.convert_tokens_to_ids("en_XX") == spm_size + 4
    assert fast.mask_token_id == len(fast) - 1 == spm_size + 53
    assert (fast.src_lang, fast.tgt_lang) == ("en_XX", "ar_AR")
    arabic = [ar for _, ar in tatoeba_pairs(DATA)][::500][:16]
    for text in [*sentences, *arabic, "A dog runs through the grass ."]:
        ids = fast(text)["input_ids"]
        assert ids == slow(text)["input_ids"], text
        assert ids[0] == fast.convert_tokens_to_ids("en_XX") and ids[-1] == 2
        assert fast.decode(ids, skip_special_tokens=True) == slow.decode(ids, skip_special_tokens=True)
    labels = fast(text_target="مرحبًا.")["input_ids"]
    assert labels[0] == fast.convert_tokens_to_ids("ar_AR") and labels[-1] == 2


def test_mbart_config_mirrors_real_checkpoint(fx: FixturePaths) -> None:
    from transformers import AutoTokenizer, GenerationConfig, MBartConfig

    cfg = MBartConfig.from_pretrained(fx.mbart)
    assert cfg.vocab_size == len(AutoTokenizer.from_pretrained(fx.mbart))
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (1, 0, 2)
    assert (cfg.decoder_start_token_id, cfg.forced_eos_token_id, cfg.scale_embedding) == (2, 2, True)
    gen = GenerationConfig.from_pretrained(fx.mbart)
    assert (gen.num_beams, gen.early_stopping, gen.max_length) == (5, True, 200)
    assert (gen.decoder_start_token_id, gen.forced_eos_token_id) == (2, 2)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (0, 2, 1)


@pytest.mark.parametrize("num_beams", [1, 5])
def test_mbart_translates_varied_arabic(fx: FixturePaths, sentences: list[str], num_beams: int) -> None:
    import torch
    from transformers import AutoTokenizer, MBartForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(fx.mbart)
    model = MBartForConditionalGeneration.from_pretrained(fx.mbart).eval()
    ar = tok.convert_tokens_to_ids("ar_AR")
    enc = tok(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc,
            forced_bos_token_id=ar,
            max_length=64,
            num_beams=num_beams,
            output_scores=True,
            return_dict_in_generate=True,
        )
    seqs = out.sequences.tolist()
    assert all(s[:2] == [2, ar] for s in seqs)
    texts = tok.batch_decode(out.sequences, skip_special_tokens=True)
    assert len(set(texts)) >= len(sentences) // 2, texts
    written = [t for t in texts if t.strip()]
    assert len(written) >= len(texts) // 2, texts
    assert all(any("\u0600" <= ch <= "\u06ff" for ch in t) for t in written), written
    lengths = [sum(t != 1 for t in s) for s in seqs]
    assert min(lengths) < 64 and len(set(lengths)) > 1, lengths
    if num_beams == 1:
        _assert_peaked(out.scores[1:])  # step 0 is the forced language code
