"""Bad input raises a clear error that names the bad value and what is allowed."""

from __future__ import annotations

import pytest
import torch

from qlib import BertQuantConfig, LayerQuant, QuantGrid, QuantSpec, convert_bert, fake_quantize, qbert_config


@pytest.mark.parametrize("bits", [1, 9, 0, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=rf"integer in 2\.\.8, got {bits}"):
        fake_quantize(torch.randn(4), bits)


@pytest.mark.parametrize("bits", [4.0, "8", True, None])
def test_bits_not_an_integer(bits):
    with pytest.raises(ValueError, match="must be an integer in 2..8"):
        QuantSpec(bits)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("grid", [{}, {"granularity": "channel"}, {"granularity": "group", "groups": 3},
                                  {"percentile": 99.0}, {"scheme": "asymmetric"}])
@pytest.mark.parametrize("row, col", [(0, 0), (1, 2), (2, 3)])
def test_nan_or_inf_in_tensor(value, grid, row, col):
    """Found wherever it sits, on every range path (the min/max paths find it in the range they compute)."""
    x = torch.randn(3, 4)
    x[row, col] = value
    with pytest.raises(ValueError, match=r"1 NaN/Inf value\(s\) of 12"):
        fake_quantize(x, 8, **grid)


def test_empty_tensor():
    with pytest.raises(ValueError, match=r"empty tensor \(shape \(0, 4\)\)"):
        fake_quantize(torch.empty(0, 4), 8)


def test_groups_that_do_not_divide_the_rows():
    with pytest.raises(ValueError,
                       match=r"groups=5 does not divide the 12 rows .* allowed: a divisor of 12 \(1, 2, 3, 4, 6, 12\)"):
        fake_quantize(torch.randn(12, 3), 4, granularity="group", groups=5)


def test_bad_scheme_granularity_and_percentile():
    with pytest.raises(ValueError, match="scheme must be one of .* got 'signed'"):
        QuantSpec(8, "signed")
    with pytest.raises(ValueError, match="granularity must be one of .* got 'row'"):
        QuantSpec(8, granularity="row")
    with pytest.raises(ValueError, match="needs groups"):
        QuantSpec(8, granularity="group")
    with pytest.raises(ValueError, match="percentile must be in"):
        QuantSpec(8, percentile=40)
    with pytest.raises(ValueError, match="activations are quantized per tensor"):
        LayerQuant(activation=QuantSpec(8, granularity="channel"))


def test_bad_range():
    with pytest.raises(ValueError, match="lo <= hi"):
        QuantGrid.from_range(torch.tensor([1.0]), torch.tensor([0.0]), 8, False)


def test_unknown_layer_name_in_config(tiny_bert):
    config = BertQuantConfig(layers={"encoder.layer.7": LayerQuant()})
    with pytest.raises(ValueError, match=r"unknown layer 'encoder.layer.7'.*encoder.layer.0, encoder.layer.1, pooler"):
        convert_bert(tiny_bert, config)
    with pytest.raises(ValueError, match="unknown layer 'encoder.layer.0.attn'"):
        convert_bert(tiny_bert, qbert_config(4, layer_bits={"encoder.layer.0.attn": 2}))


def test_non_bert_model_is_refused():
    with pytest.raises(TypeError, match="expected a transformers BertModel .* got Linear"):
        convert_bert(torch.nn.Linear(2, 2), BertQuantConfig())
