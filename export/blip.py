"""BLIP (BlipForConditionalGeneration) -> blip_vision + blip_text_decoder export jobs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .cache import (
    cache_from_flat,
    causal_keep,
    feeds_to_torch,
    flat_present,
    linear_2d,
    new_positions,
    past_from_feeds,
    random_decoder_feeds,
)
from .specs import BLIP_TEXT_DECODER, decoder_spec, vision_spec
from .validate import ExportJob, ValidationCase


class BlipVisionGraph(nn.Module):
    """pixel_values -> image_embeds (the vision model's last_hidden_state, as `generate` uses it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values, return_dict=True).last_hidden_state


class BlipTextDecoderGraph(nn.Module):
    """One decoding step of BlipTextLMHeadModel over a flat self-attention cache.

    Passes explicit position ids and a 3-D causal mask so BlipTextModel never derives them from Python ints
    (which the tracer would freeze) and takes no `P == 0` special case.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.decoder = model.text_decoder

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        cache = cache_from_flat(past)
        # transformers 4.57's BLIP cross-attention ignores encoder_attention_mask (BlipTextAttention never
        # forwards it), and images are never padded. Touch the mask neutrally so the graph keeps the input
        # the shared decoder contract names, while computing exactly what transformers computes.
        gate = encoder_attention_mask.unsqueeze(-1).to(encoder_hidden_states.dtype)
        encoder_hidden_states = encoder_hidden_states + 0.0 * gate
        out = self.decoder.bert(
            input_ids=input_ids,
            attention_mask=causal_keep(input_ids, past[0]).to(encoder_hidden_states.dtype),
            position_ids=new_positions(input_ids, past[0]).unsqueeze(0),
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask.to(encoder_hidden_states.dtype),
            past_key_values=cache,
            use_cache=True,
            is_decoder=True,
            return_dict=True,
        )
        head = self.decoder.cls.predictions
        hidden = head.transform(out.last_hidden_state)
        logits = linear_2d(hidden, head.decoder.weight, head.decoder.bias)
        return (logits, *flat_present(cache))


def _text_dims(model: nn.Module) -> dict[str, int]:
    text = model.config.text_config
    return {
        "num_layers": text.num_hidden_layers,
        "num_heads": text.num_attention_heads,
        "head_dim": text.hidden_size // text.num_attention_heads,
        "vocab": text.vocab_size,
        "hidden": model.config.vision_config.hidden_size,
    }


def _num_patches(model: nn.Module) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 + 1


def _decoder_reference(model: nn.Module, feeds: dict[str, np.ndarray], num_layers: int):
    """PyTorch outputs through the public HF API (its own masks and positions), not through our wrapper."""

    def run() -> dict[str, np.ndarray]:
        t = feeds_to_torch(feeds)
        past = past_from_feeds(t, num_layers)
        cache = cache_from_flat(past) if past[0].shape[2] > 0 else None
        with torch.no_grad():
            out = model.text_decoder(
                input_ids=t["input_ids"],
                encoder_hidden_states=t["encoder_hidden_states"],
                encoder_attention_mask=t["encoder_attention_mask"],
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
        result = {"logits": out.logits.numpy()}
        for i, layer in enumerate(out.past_key_values.self_attention_cache.layers):
            result[f"present.{i}.key"] = layer.keys.numpy()
            result[f"present.{i}.value"] = layer.values.numpy()
        return result

    return run


def vision_job(model: nn.Module, seed: int = 0) -> ExportJob:
    size = model.config.vision_config.image_size
    rng = np.random.default_rng(seed)
    wrapper = BlipVisionGraph(model).eval()

    def case(batch: int) -> ValidationCase:
        pixels = rng.standard_normal((batch, 3, size, size), dtype=np.float32)

        def reference() -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = model.vision_model(pixel_values=torch.from_numpy(pixels)).last_hidden_state
            return {"image_embeds": out.numpy()}

        return ValidationCase(f"batch={batch}", {"pixel_values": pixels}, reference)

    example = (torch.from_numpy(rng.standard_normal((2, 3, size, size), dtype=np.float32)),)
    return ExportJob(vision_spec(), wrapper, example, [case(1), case(3)])


def text_decoder_job(model: nn.Module, seed: int = 0) -> ExportJob:
    dims = _text_dims(model)
    rng = np.random.default_rng(seed)
    spec = decoder_spec(BLIP_TEXT_DECODER, dims["num_layers"])
    wrapper = BlipTextDecoderGraph(model).eval()
    encoder_len = _num_patches(model)

    def feeds(batch: int, new_len: int, past_len: int, pad: bool = False) -> dict[str, np.ndarray]:
        return random_decoder_feeds(
            rng,
            batch=batch,
            new_len=new_len,
            past_len=past_len,
            encoder_len=encoder_len,
            pad_encoder=pad,
            **dims,
        )

    cases = []
    for batch, new_len, past_len in ((1, 1, 0), (1, 3, 0), (3, 1, 5), (2, 4, 3)):
        f = feeds(batch, new_len, past_len)
        label = f"batch={batch},new={new_len},past={past_len}"
        cases.append(ValidationCase(label, f, _decoder_reference(model, f, dims["num_layers"])))
    # Trace with P > 0, T > 1 and B > 1 so no dimension is specialised to 0 or 1.
    trace = feeds_to_torch(feeds(2, 2, 3))
    example = tuple(trace[name] for name in spec.input_names)
    return ExportJob(spec, wrapper, example, cases)


def blip_jobs(model: nn.Module, seed: int = 0) -> list[ExportJob]:
    return [vision_job(model, seed), text_decoder_job(model, seed + 1)]
