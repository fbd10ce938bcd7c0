"""Quant-Noise: a fraction p of blocks quantized, parameters never overwritten, an explicit STE gradient."""

from __future__ import annotations

import pytest
import torch

from qlib import LayerQuant, QuantLinear, QuantSpec
from qlib.core.quant_noise import quant_noise


def test_rate_zero_keeps_float_and_rate_one_quantizes_everything():
    w, q = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(quant_noise(w, q, 0.0, 4), w) and torch.equal(quant_noise(w, q, 1.0, 4), q)


def test_whole_blocks_are_quantized_at_about_rate_p():
    w, q = torch.zeros(200, 64), torch.ones(200, 64)
    noisy = quant_noise(w, q, 0.3, 8, generator=torch.Generator().manual_seed(0))
    blocks = noisy.reshape(200, 8, 8)
    assert torch.all((blocks == 0).all(-1) | (blocks == 1).all(-1))  # each block all float or all quantized
    assert noisy.mean().item() == pytest.approx(0.3, abs=0.03)


def test_training_never_overwrites_the_parameter_and_eval_quantizes_fully():
    torch.manual_seed(0)
    layer = QuantLinear.from_float(torch.nn.Linear(16, 4), LayerQuant(QuantSpec(2), None, noise_rate=0.5,
                                                                       noise_block=4)).train()
    before = layer.weight.detach().clone()
    for _ in range(3):
        layer(torch.randn(2, 16))
    assert torch.equal(layer.weight, before)
    layer.eval()
    x = torch.randn(2, 16)
    full = torch.nn.functional.linear(x, layer.weight_grid().fake_quantize(layer.weight), layer.bias)
    assert torch.allclose(layer(x), full)


def test_gradient_is_one_on_float_blocks_and_the_ste_mask_on_quantized_ones():
    from qlib import QuantGrid

    grid = QuantGrid.from_range(torch.tensor([-1.0]), torch.tensor([1.0]), 4, symmetric=True)
    for p, expected in ((1.0, [[1.0, 1.0, 0.0, 1.0]]), (0.0, [[1.0, 1.0, 1.0, 1.0]])):
        w = torch.tensor([[0.5, -0.2, 3.0, 0.1]], requires_grad=True)  # 3.0 lies outside the clip range
        quant_noise(w, grid.fake_quantize(w), p, 2).sum().backward()
        assert w.grad.tolist() == expected


def test_bad_rate_or_block_size():
    with pytest.raises(ValueError, match="noise rate p must be in"):
        quant_noise(torch.zeros(2, 4), torch.zeros(2, 4), 1.5, 2)
    with pytest.raises(ValueError, match="block_size=3 must be a positive divisor of the 4"):
        quant_noise(torch.zeros(2, 4), torch.zeros(2, 4), 0.5, 3)
    with pytest.raises(ValueError, match="noise_rate must be in"):
        LayerQuant(noise_rate=-0.1)
