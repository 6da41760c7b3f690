"""The two encoders as graph functions: BLIP's vision model and mBART's encoder, as `generate()` runs them."""

from __future__ import annotations

import torch
from torch import nn


class BlipVisionGraph(nn.Module):
    """pixel_values -> image_embeds (the vision model's last_hidden_state, as `generate` uses it), from a
    `BlipForConditionalGeneration` or from its `BlipVisionModel` alone (bf16 CPU repositories carry only that)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision = getattr(model, "vision_model", model)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values, return_dict=True).last_hidden_state


class MBartEncoderGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True
        ).last_hidden_state
