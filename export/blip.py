"""BLIP (BlipForConditionalGeneration) -> blip_vision, blip_cross_kv and blip_text_decoder export jobs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from captioning import contract
from captioning.contract import BLIP_CROSS_KV, BLIP_TEXT_DECODER
from captioning.modules.graphs import BlipVisionGraph
from captioning.modules.steps import BlipCrossKV, BlipTextStep

from .specs import vision_spec
from .step_jobs import DecoderDims, decoder_jobs
from .validate import ExportJob, ValidationCase


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


def vision_job(model: nn.Module, seed: int = 0) -> ExportJob:
    size = model.config.vision_config.image_size
    rng = np.random.default_rng(seed)
    wrapper = BlipVisionGraph(model).eval()

    def case(batch: int) -> ValidationCase:
        pixels = rng.standard_normal((batch, 3, size, size), dtype=np.float32)

        def reference() -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = model.vision_model(pixel_values=torch.from_numpy(pixels)).last_hidden_state
            return {contract.IMAGE_EMBEDS: out.numpy()}

        return ValidationCase(f"batch={batch}", {contract.PIXEL_VALUES: pixels}, reference)

    example = (torch.from_numpy(rng.standard_normal((2, 3, size, size), dtype=np.float32)),)
    return ExportJob(vision_spec(), wrapper, example, [case(1), case(3)])


def _text_reference(model: nn.Module):
    def run(input_ids, states, mask, cache):
        return model.text_decoder(
            input_ids=input_ids,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )

    return run


def text_decoder_jobs(model: nn.Module, seed: int = 0) -> list[ExportJob]:
    dims = DecoderDims(**_text_dims(model), fixed_encoder_len=_num_patches(model))
    return decoder_jobs(
        (BLIP_CROSS_KV, BLIP_TEXT_DECODER),
        BlipCrossKV(model),
        BlipTextStep(model),
        _text_reference(model),
        dims,
        seed,
    )


def blip_jobs(model: nn.Module, seed: int = 0) -> list[ExportJob]:
    return [vision_job(model, seed), *text_decoder_jobs(model, seed + 1)]
