"""The checked-in `model_repository/`: its configs regenerated from the typed specs, and read back by export.

`model_repository/` holds each model's `config.pbtxt` as `captioning export` writes it by default for the
default checkpoints, and each Python-backend model's `1/model.py`. Exporting the real checkpoints to compare
would download 3 GB, so the graphs' tensor metadata is declared here from their architecture's dimensions
(`GraphDims`); a test checks the declared metadata against exported graphs, and another regenerates the tree.

    python -m captioning.export.source_tree model_repository   # rewrite the configs after changing a spec
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from captioning import contract
from captioning.export import specs
from captioning.export.build import BuildOptions, served_options
from captioning.export.repository import model_specs
from captioning.export.repository_options import RepositoryOptions

# The decoder graphs are Triton models of their own with `--decoder-runner bls` only; the tree holds that config.
BLS_GRAPH_MODELS = tuple(name for name in contract.GRAPH_MODELS if name != contract.VISION_MODEL)


@dataclasses.dataclass(frozen=True)
class GraphDims:
    """The dimensions of the two checkpoints that the graphs' tensor shapes depend on."""

    image_size: int
    vision_hidden: int
    text_layers: int
    text_heads: int
    text_hidden: int
    text_vocab: int
    mbart_hidden: int
    mbart_layers: int
    mbart_heads: int
    mbart_vocab: int
    mbart_positions: int

    @classmethod
    def from_configs(cls, blip, mbart) -> GraphDims:
        """From a `BlipConfig` and an `MBartConfig` (the checkpoints' `config.json`)."""
        vision, text = blip.vision_config, blip.text_config
        return cls(
            image_size=vision.image_size,
            vision_hidden=vision.hidden_size,
            text_layers=text.num_hidden_layers,
            text_heads=text.num_attention_heads,
            text_hidden=text.hidden_size,
            text_vocab=text.vocab_size,
            mbart_hidden=mbart.d_model,
            mbart_layers=mbart.decoder_layers,
            mbart_heads=mbart.decoder_attention_heads,
            mbart_vocab=mbart.vocab_size,
            mbart_positions=mbart.max_position_embeddings,
        )


# Salesforce/blip-image-captioning-base and facebook/mbart-large-50-many-to-many-mmt, from their config.json.
DEFAULT_DIMS = GraphDims(
    image_size=384,
    vision_hidden=768,
    text_layers=12,
    text_heads=12,
    text_hidden=768,
    text_vocab=30524,
    mbart_hidden=1024,
    mbart_layers=12,
    mbart_heads=16,
    mbart_vocab=250054,
    mbart_positions=1024,
)


def _meta(spec: specs.GraphSpec, shapes: dict[str, list]) -> dict:
    """A graph's metadata as `repository.graph_metadata` reads it from the ONNX file."""
    dynamic = spec.dynamic_axes
    names = (*spec.input_names, *spec.output_names)
    return {
        "input_names": list(spec.input_names),
        "output_names": list(spec.output_names),
        "dtypes": {
            n: "INT64" if n in ("input_ids", "attention_mask", "encoder_attention_mask") else "FP32"
            for n in names
        },
        "shapes": {
            n: [dynamic.get(n, {}).get(axis, size) for axis, size in enumerate(shapes[n])] for n in names
        },
    }


def _cache_shapes(names, heads: int, head_dim: int, transposed_values: bool = False) -> dict[str, list]:
    return {
        n: [0, heads, head_dim, 0] if transposed_values and n.endswith(".value") else [0, heads, 0, head_dim]
        for n in names
    }


def declared_metadata(dims: GraphDims) -> dict[str, dict]:
    """Every graph's metadata, from the specs' names and dynamic axes and the checkpoints' dimensions."""
    blip_dh, mbart_dh = dims.text_hidden // dims.text_heads, dims.mbart_hidden // dims.mbart_heads
    out = {}
    for name, layers, heads, head_dim, vocab, source_hidden in (
        (
            contract.BLIP_TEXT_DECODER,
            dims.text_layers,
            dims.text_heads,
            blip_dh,
            dims.text_vocab,
            dims.vision_hidden,
        ),
        (
            contract.MBART_DECODER,
            dims.mbart_layers,
            dims.mbart_heads,
            mbart_dh,
            dims.mbart_vocab,
            dims.mbart_hidden,
        ),
    ):
        cross = _cache_shapes(specs.cross_names(layers), heads, head_dim, transposed_values=True)
        cache = _cache_shapes((*specs.past_names(layers), *specs.present_names(layers)), heads, head_dim)
        step = {"input_ids": [0, 0], "encoder_attention_mask": [0, 0], "logits": [0, vocab], **cross, **cache}
        out[name] = _meta(specs.decoder_spec(name, layers), step)
        kv_name = contract.BLIP_CROSS_KV if name == contract.BLIP_TEXT_DECODER else contract.MBART_CROSS_KV
        out[kv_name] = _meta(
            specs.cross_kv_spec(kv_name, layers), {"encoder_hidden_states": [0, 0, source_hidden], **cross}
        )
    out[contract.MBART_ENCODER] = _meta(
        specs.encoder_spec(),
        {"input_ids": [0, 0], "attention_mask": [0, 0], "last_hidden_state": [0, 0, dims.mbart_hidden]},
    )
    size = dims.image_size
    out[contract.VISION_MODEL] = _meta(
        specs.vision_spec(), {contract.PIXEL_VALUES: [0, 3, size, size], contract.IMAGE_EMBEDS: [0, 0, 0]}
    )
    return out


def source_configs(dims: GraphDims = DEFAULT_DIMS) -> dict[str, str]:
    """Model name -> `config.pbtxt`: the default CPU export's, and the BLS export's for the decoder graphs."""
    meta = declared_metadata(dims)
    image_size = (dims.image_size, dims.image_size)
    configs = {}
    for runner in (contract.INPROCESS_RUNNER, contract.BLS_RUNNER):
        build = BuildOptions(repository=RepositoryOptions(decoder_runner=runner))
        for spec in model_specs(meta, image_size, served_options(build, dims.mbart_positions)):
            # the decoder graphs from the BLS export, every other model from the default one
            if (spec.name in BLS_GRAPH_MODELS) == (runner == contract.BLS_RUNNER):
                configs[spec.name] = spec.to_pbtxt()
    return configs


def write_configs(tree: Path) -> list[Path]:
    written = []
    for name, text in source_configs().items():
        path = tree / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_configs(Path(sys.argv[1] if len(sys.argv) > 1 else "model_repository")):
        print(path)
