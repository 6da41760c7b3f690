"""oneDNN-packed linear layers: the same products as `nn.Linear` (fp32, another summation order), any leading
dimensions and strides, and the torch runner packs every product of the step it serves on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captioning.runtime import packing

pytestmark = pytest.mark.skipif(not packing.available(), reason="this PyTorch build has no oneDNN linear ops")


@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_linear_computes_the_linear_product(bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias)
    packed = packing.PackedLinear(linear.weight, linear.bias)
    with torch.inference_mode():
        for x in (torch.randn(5, 64), torch.randn(3, 7, 64), torch.randn(4, 9, 64)[:, -1, :]):
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
            assert packed(x).shape == linear(x).shape


def test_the_torch_runner_packs_every_product_of_its_step_on_a_cpu(fixture_checkpoints):
    from captioning.modules.steps import OutputLayer
    from captioning.runtime.torch_runner import TorchOptions, load_checkpoint, step_decoder

    decoder = step_decoder("mbart", load_checkpoint("mbart", fixture_checkpoints.mbart), TorchOptions(), 32)
    kinds = {type(m) for m in (*decoder.step.modules(), *decoder.cross.modules())}
    assert packing.PackedLinear in kinds and nn.Linear not in kinds and OutputLayer not in kinds
    plain = step_decoder(
        "mbart", load_checkpoint("mbart", fixture_checkpoints.mbart), TorchOptions(packed=False), 32
    )
    assert not any(isinstance(m, packing.PackedLinear) for m in plain.step.modules())
