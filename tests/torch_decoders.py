"""Torch reference `Decoder`s (captioning.decoding.generate protocol) over real HF modules, for tests.

They mirror the exported ONNX decoders: self-attention cache in and out as a flat numpy list, the
cross-attention recomputed from the encoder states every step.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _self_cache(past: list[np.ndarray] | None):
    from transformers import DynamicCache

    if not past:
        return DynamicCache()
    pairs = [(torch.from_numpy(past[i]), torch.from_numpy(past[i + 1])) for i in range(0, len(past), 2)]
    return DynamicCache(ddp_cache_data=pairs)


def _flatten(cache) -> list[np.ndarray]:
    return [t.numpy().copy() for layer in cache.layers for t in (layer.keys, layer.values)]


class BlipTorchDecoder:
    """`BlipTextLMHeadModel` as a Decoder."""

    def __init__(self, text_decoder: torch.nn.Module) -> None:
        self.model = text_decoder.eval()
        self.calls = 0

    def __call__(self, input_ids, past, encoder_hidden_states, encoder_attention_mask):
        from transformers import DynamicCache, EncoderDecoderCache

        self.calls += 1
        cache = EncoderDecoderCache(_self_cache(past), DynamicCache())
        with torch.no_grad():
            out = self.model(
                input_ids=torch.from_numpy(input_ids),
                past_key_values=cache,
                encoder_hidden_states=torch.from_numpy(encoder_hidden_states),
                encoder_attention_mask=torch.from_numpy(encoder_attention_mask),
                use_cache=True,
                return_dict=True,
                is_decoder=True,
            )
        logits = out.logits[:, -1, :].to(torch.float32).numpy().copy()
        return logits, _flatten(out.past_key_values.self_attention_cache)


class MBartTorchDecoder:
    """`MBartForConditionalGeneration`'s decoder + lm_head + final_logits_bias as a Decoder."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.calls = 0

    def __call__(self, input_ids, past, encoder_hidden_states, encoder_attention_mask):
        from transformers import DynamicCache, EncoderDecoderCache

        self.calls += 1
        cache = EncoderDecoderCache(_self_cache(past), DynamicCache())
        with torch.no_grad():
            out = self.model.model.decoder(
                input_ids=torch.from_numpy(input_ids),
                encoder_hidden_states=torch.from_numpy(encoder_hidden_states),
                encoder_attention_mask=torch.from_numpy(encoder_attention_mask),
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
            logits = self.model.lm_head(out.last_hidden_state) + self.model.final_logits_bias
        logits = logits[:, -1, :].to(torch.float32).numpy().copy()
        return logits, _flatten(out.past_key_values.self_attention_cache)


def mbart_encode(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Encoder states and mask as the numpy pair `generate` takes."""
    with torch.no_grad():
        states = model.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return states.numpy().copy(), attention_mask.numpy().astype(np.int64)


def blip_encode(model: torch.nn.Module, pixel_values: torch.Tensor):
    with torch.no_grad():
        states = model.vision_model(pixel_values=pixel_values)[0]
    return states.numpy().copy(), np.ones(states.shape[:2], dtype=np.int64)


def toy_logits(item: int, prefix: list[int], vocab: int, eos_bias: float, eos: int) -> np.ndarray:
    """Toy LM: logits are a seeded hash of (batch item, token prefix), with an EOS bias."""
    rng = np.random.default_rng(zlib.crc32(np.asarray([item, *prefix], dtype=np.int64).tobytes()))
    logits = (rng.standard_normal(vocab) * 2.0).astype(np.float32)
    logits[eos] += np.float32(eos_bias)
    return logits


class ToyDecoder:
    """Keeps the token prefix in its 'KV cache', so a wrong cache reorder changes the logits."""

    def __init__(self, vocab: int, eos_bias: float, eos: int) -> None:
        self.vocab, self.eos_bias, self.eos, self.widths = vocab, eos_bias, eos, []

    def __call__(self, input_ids, past, encoder_hidden_states, encoder_attention_mask):
        self.widths.append(input_ids.shape[1])
        prefix = (
            input_ids
            if past is None
            else np.concatenate([past[0][:, 0, :, 0].astype(np.int64), input_ids], 1)
        )
        items = encoder_hidden_states[:, 0, 0].astype(np.int64)
        logits = np.stack(
            [
                toy_logits(int(i), p.tolist(), self.vocab, self.eos_bias, self.eos)
                for i, p in zip(items, prefix, strict=True)
            ]
        )
        cache = prefix.astype(np.float32)[:, None, :, None]
        return logits, [cache, cache.copy()]


def toy_hf_model(vocab: int, eos_bias: float, eos: int):
    """The toy as an HF causal LM (no cache), so `GenerationMixin.generate` is the reference;
    `model.calls` counts forward passes."""
    from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput

    class ToyLM(PreTrainedModel, GenerationMixin):
        config_class = PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, item=None, attention_mask=None, **kwargs):
            self.calls = getattr(self, "calls", 0) + 1
            rows = [
                toy_logits(int(i), r, self.config.vocab_size, self.config.eos_bias, self.config.toy_eos)
                for i, r in zip(item.tolist(), input_ids.tolist(), strict=True)
            ]
            logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
            logits[:, -1] = torch.from_numpy(np.stack(rows))
            return CausalLMOutput(logits=logits)

    return ToyLM(PretrainedConfig(vocab_size=vocab, eos_bias=eos_bias, toy_eos=eos)).eval()
