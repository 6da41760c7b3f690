"""Declared interface of every exported graph (names, dynamic axes, tolerance), as in optimum's OnnxConfig.

The names here are the "ONNX graph contract" of docs/design.md; the exporters and the validator both read
them, so a graph cannot drift from the contract without failing validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from captioning import contract
from captioning.contract import MBART_ENCODER, VISION_MODEL

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5  # np.allclose's default, as optimum's validator uses
# Logits come out of a vocabulary-wide projection and reach magnitudes in the tens (hundreds for the sharply
# peaked fixtures), so fp32 reassociation alone moves them by ~1e-4; what decoding needs is their ranking,
# which the token-exact tests check end to end.
DECODER_ATOL = 1e-3
DECODER_RTOL = 1e-4


@dataclass(frozen=True)
class GraphSpec:
    """One graph's contract. `dynamic_axes` maps tensor name -> {axis: symbolic dim name}."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


def past_names(num_layers: int) -> tuple[str, ...]:
    return tuple(f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))


def present_names(num_layers: int) -> tuple[str, ...]:
    return tuple(f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))


def vision_spec(atol: float = DEFAULT_ATOL) -> GraphSpec:
    # The image side stays static: BLIP's position embeddings fix it to the checkpoint's image_size.
    return GraphSpec(
        name=VISION_MODEL,
        input_names=(contract.PIXEL_VALUES,),
        output_names=(contract.IMAGE_EMBEDS,),
        dynamic_axes={contract.PIXEL_VALUES: {0: "batch"}, contract.IMAGE_EMBEDS: {0: "batch"}},
        atol=atol,
    )


def encoder_spec(atol: float = DEFAULT_ATOL) -> GraphSpec:
    axes = {0: "batch", 1: "source_len"}
    return GraphSpec(
        name=MBART_ENCODER,
        input_names=("input_ids", "attention_mask"),
        output_names=("last_hidden_state",),
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
        atol=atol,
    )


def cross_names(num_layers: int) -> tuple[str, ...]:
    return tuple(f"cross.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value"))


def _cross_axes(num_layers: int) -> dict[str, dict[int, str]]:
    # Keys [B,H,S,Dh], values transposed [B,H,Dh,S] (captioning/modules/steps.py says why).
    return {
        name: {0: "batch", 2 if name.endswith(".key") else 3: "encoder_len"}
        for name in cross_names(num_layers)
    }


def cross_kv_spec(name: str, num_layers: int, atol: float = DEFAULT_ATOL) -> GraphSpec:
    """Encoder states -> the cross-attention keys/values of every decoder layer, once per source."""
    axes: dict[str, dict[int, str]] = {"encoder_hidden_states": {0: "batch", 1: "encoder_len"}}
    axes.update(_cross_axes(num_layers))
    return GraphSpec(
        name=name,
        input_names=("encoder_hidden_states",),
        output_names=cross_names(num_layers),
        dynamic_axes=axes,
        atol=atol,
    )


def decoder_spec(name: str, num_layers: int, atol: float = DECODER_ATOL) -> GraphSpec:
    """The shared BLIP-text / mBART decoder step: rows N = batch x beams (source-major) attend to their
    source's cross keys/values; self-attention cache in, grown cache out, last-position logits out."""
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "rows", 1: "new_len"},
        "encoder_attention_mask": {0: "batch", 1: "encoder_len"},
        "logits": {0: "rows"},
    }
    axes.update(_cross_axes(num_layers))
    for past in past_names(num_layers):
        axes[past] = {0: "rows", 2: "past_len"}
    for present in present_names(num_layers):
        axes[present] = {0: "rows", 2: "total_len"}
    return GraphSpec(
        name=name,
        input_names=(
            "input_ids",
            "encoder_attention_mask",
            *cross_names(num_layers),
            *past_names(num_layers),
        ),
        output_names=("logits", *present_names(num_layers)),
        dynamic_axes=axes,
        atol=atol,
        rtol=DECODER_RTOL,
    )
