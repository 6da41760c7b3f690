"""Opt-in int8 graphs: ONNX Runtime dynamic quantisation of every MatMul/Gemm weight, output layers included.

Weights are stored as int8 (per output channel) and activations are quantised on the fly, which CPUs run
two to several times faster than fp32. Outputs are no longer token-identical to `generate()`: how often they
agree is measured (docs/performance.md) and real quality must be checked with `captioning evaluate` on real
checkpoints.

Weights use 7 bits (`reduce_range`). On CPUs without VNNI (AVX2 only) ONNX Runtime multiplies u8 activations
by s8 weights with VPMADDUBSW, whose int16 pair sums saturate on full 8-bit weights: on the AVX2 development
machine that cut the English captions identical to the exact mode's from 11/50 to 1/50. A repository may be
served on another CPU than the one that exported it, so the 7-bit range is always used.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

LOG = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")


def quantize_graphs(graphs: dict[str, Path], output_dir: Path, progress: bool = True) -> dict[str, Path]:
    """int8 copies of `graphs` in `output_dir`, same names."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tqdm.auto import tqdm

    output_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, path in tqdm(graphs.items(), desc="int8", leave=False, disable=not progress):
        target = output_dir / path.name
        large = path.with_name(f"{path.name}.data").exists()
        with _quiet_root_logger():
            quantize_dynamic(
                _untied(path),
                target,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                reduce_range=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=large,
            )
        LOG.info("quantised %s to int8 (%.0f MB -> %.0f MB)", name, _size(path) / 1e6, _size(target) / 1e6)
        out[name] = target
    return out


@contextlib.contextmanager
def _quiet_root_logger():
    """The quantiser logs hundreds of INFO lines (one per activation) and a pre-processing hint on the root
    logger; they say nothing about this export, so only errors pass while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _untied(path: Path):
    """The graph with every matrix weight a MatMul/Gemm reads made its own initializer, so the quantiser can
    quantise it.

    Two ways a weight escapes it otherwise: an embedding lookup (Gather) shares it with a tied output layer,
    and the quantiser would rewrite it for the matrix product and break the lookup; or torch's exporter
    hands the tied parameter to the product through an Identity node, so the quantiser finds no initializer
    and leaves the product (mBART-50's output layer, the largest matrix of the translator) in fp32.
    """
    import onnx

    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    aliases = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "Identity" and n.input[0] in initializers
    }
    gathered = {aliases.get(n.input[0], n.input[0]) for n in model.graph.node if n.op_type == "Gather"}
    gathered &= initializers.keys()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        for index, name in enumerate(node.input):
            if name not in aliases and name not in gathered:
                continue
            source = aliases.get(name, name)
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[source])
            copy.name = f"{source}_untied_{node.name or index}"
            model.graph.initializer.append(copy)
            node.input[index] = copy.name
    return model


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(f"{path.name}.data")) if p.exists())
