"""Tiny random BLIP and mBART models and the HF-equality checks the decoding tests run on them."""

from __future__ import annotations

import numpy as np
import torch

from captioning.decoding import GenerationSettings, generate

from torch_decoders import BlipTorchDecoder, MBartTorchDecoder, blip_encode, mbart_encode

BLIP_BOS, BLIP_SEP, BLIP_PAD, BLIP_VOCAB = 298, 102, 0, 300
MB_START, MB_EOS, MB_PAD, MB_LANG, MB_VOCAB = 2, 2, 1, 150, 200


def tiny_blip(vocab: int = BLIP_VOCAB):
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(0)
    config = BlipConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=16, initializer_range=0.2,
        ),
        text_config=dict(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=80,
            bos_token_id=BLIP_BOS, sep_token_id=BLIP_SEP, pad_token_id=BLIP_PAD, eos_token_id=2,
            initializer_range=0.2,
        ),
    )  # fmt: skip
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # a SEP bias makes captions stop at different lengths
        model.text_decoder.cls.predictions.bias[BLIP_SEP] += 3.0
    return model


def tiny_mbart(vocab: int = MB_VOCAB, eos_bias: float = 0.6):
    from transformers import MBartConfig, MBartForConditionalGeneration

    torch.manual_seed(0)
    config = MBartConfig(
        vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=80,
        pad_token_id=MB_PAD, bos_token_id=0, eos_token_id=MB_EOS, decoder_start_token_id=MB_START,
        forced_eos_token_id=MB_EOS, scale_embedding=True, init_std=0.1, tie_word_embeddings=False,
    )  # fmt: skip
    model = MBartForConditionalGeneration(config).eval()
    with torch.no_grad():  # an EOS bias makes translations stop at different lengths
        model.final_logits_bias[0, MB_EOS] += eos_bias
    return model


def pixels(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def source(batch: int, seed: int, vocab: int = MB_VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Source sentences of unequal length, right-padded like a tokenizer would."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=batch)
    ids = np.full((batch, lengths.max()), MB_PAD, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = rng.integers(4, vocab, size=n - 1)
        ids[i, n - 1] = MB_EOS
        mask[i, :n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def assert_same(ours: list[list[int]], hf: torch.Tensor, fill: int) -> None:
    """Each of our rows is HF's row up to where HF only pads (HF pads a batch to its longest row)."""
    hf_rows = hf.tolist()
    assert len(ours) == len(hf_rows)
    for mine, theirs in zip(ours, hf_rows, strict=True):
        assert mine == theirs[: len(mine)], (mine, theirs)
        assert all(t == fill for t in theirs[len(mine) :]), (mine, theirs)
    assert max(len(r) for r in ours) == hf.shape[1]


def blip_case(model, batch: int, seed: int, **kwargs) -> list[list[int]]:
    images = pixels(batch, seed)
    with torch.no_grad():
        hf = model.generate(images, **kwargs)
    settings = GenerationSettings.from_hf(
        model.text_decoder.generation_config,
        prompt_ids=(BLIP_BOS,),
        eos_token_ids=(BLIP_SEP,),
        pad_token_id=BLIP_PAD,
        **kwargs,
    )
    states, mask = blip_encode(model, images)
    ours = generate(BlipTorchDecoder(model.text_decoder), states, mask, settings)
    # greedy pads finished rows with pad; beam search fills with `pad or eos` (pad 0 is falsy in HF)
    fill = BLIP_PAD if settings.num_beams == 1 else BLIP_SEP
    assert_same(ours, hf, fill)
    return ours


def mbart_case(model, batch: int, seed: int, **kwargs) -> list[list[int]]:
    ids, attn = source(batch, seed, model.config.vocab_size)
    with torch.no_grad():
        hf = model.generate(input_ids=ids, attention_mask=attn, **kwargs)
    settings = GenerationSettings.from_hf(model.generation_config, prompt_ids=(MB_START,), **kwargs)
    assert settings.eos_token_ids == (MB_EOS,) and settings.forced_eos_token_id == MB_EOS
    states, mask = mbart_encode(model, ids, attn)
    ours = generate(MBartTorchDecoder(model), states, mask, settings)
    assert_same(ours, hf, MB_PAD)
    return ours
