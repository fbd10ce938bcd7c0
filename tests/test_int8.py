"""The int8 CPU path: agreement with the fake-quantized model, checkpoint → int8, and its error cases."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertForSequenceClassification

from qlib import QuantGrid, calibrate, convert_bert, dynamic_config, q8bert_config, qbert_config
from qlib.checkpoint import load_quantized, save_quantized
from qlib.int8 import (
    UINT8_ZERO_POINT,
    Int8Embedding,
    Int8Intermediate,
    Int8Linear,
    Int8ResidualOutput,
    Int8SelfAttention,
    cpu_has_vnni,
    quantize_input,
    to_int8,
)

needs_vnni = pytest.mark.skipif(not cpu_has_vnni(), reason="this CPU has no AVX-512 VNNI/AVX-VNNI: int8 GEMMs "
                                "saturate with 8-bit weights, so to_int8 refuses (tested below)")


def trained(model):
    """Set the EMA input ranges with a few training-mode forwards, as QAT would."""
    model.train()
    for seed in range(3):
        model(input_ids=torch.randint(5, 64, (8, 16), generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@needs_vnni
@pytest.mark.parametrize("attention, activation, fused_ffn", [("sdpa", "gelu", True), ("eager", "gelu_new", True),
                                                             ("sdpa", "relu", False)])
def test_int8_model_agrees_with_the_fake_quantized_model(attention, activation, fused_ffn):
    torch.manual_seed(0)
    config = tiny_config(hidden_act=activation)
    config._attn_implementation = attention
    fake = trained(convert_bert(BertForSequenceClassification(config).eval(), q8bert_config()))
    real = to_int8(fake)

    def count(kind):
        return sum(isinstance(m, kind) for m in real.modules())

    # per layer: one fused Q/K/V GEMM, two GEMMs with their residual add, the FFN's first GEMM (with its GELU when
    # oneDNN has that post-op); and the pooler
    assert (count(Int8SelfAttention), count(Int8Intermediate), count(Int8ResidualOutput)) == (2, 2 * fused_ffn, 4)
    assert count(Int8Linear) == 2 * 4 + 1 and count(Int8Embedding) == 3
    ids = torch.randint(5, 64, (6, 12), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids)
    mask[:2, 8:] = 0  # padded rows go through the attention mask
    with torch.no_grad():
        expected = fake(input_ids=ids, attention_mask=mask).logits
        got = real(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@needs_vnni
def test_input_quantization_is_its_own_profiler_range(tiny_bert):
    real = to_int8(trained(convert_bert(tiny_bert, q8bert_config())))
    with torch.no_grad(), torch.profiler.profile() as prof:
        real(input_ids=torch.randint(5, 64, (2, 8), generator=torch.Generator().manual_seed(1)))
    ranges = [e for e in prof.key_averages() if e.key == "qlib::quantize_input"]
    # once per layer for Q/K/V, the attention output and the FFN; the FFN's second GEMM reads uint8 codes
    assert len(ranges) == 1 and ranges[0].count == 2 * 3 + 1


@needs_vnni
def test_per_channel_weights_export_too(tiny_bert):
    config = q8bert_config()
    from dataclasses import replace

    channel = replace(config.default, weight=replace(config.default.weight, granularity="channel"))
    fake = trained(convert_bert(tiny_bert, replace(config, default=channel)))
    ids = torch.randint(5, 64, (2, 8))
    with torch.no_grad():
        assert torch.allclose(to_int8(fake)(input_ids=ids).logits, fake(input_ids=ids).logits, atol=1e-4)


@needs_vnni
def test_int8_from_a_saved_checkpoint(tiny_bert, tmp_path):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    path = save_quantized(fake, tmp_path / "q8.safetensors")
    restored = load_quantized(convert_bert(copy.deepcopy(tiny_bert), q8bert_config()), path)
    ids = torch.randint(5, 64, (2, 8))
    with torch.no_grad():
        assert torch.allclose(to_int8(restored)(input_ids=ids).logits, to_int8(fake)(input_ids=ids).logits)


def test_export_refuses_uncalibrated_dynamic_or_low_bit_models(tiny_bert):
    with pytest.raises(RuntimeError, match="never observed a batch"):
        to_int8(convert_bert(copy.deepcopy(tiny_bert), q8bert_config()).eval())
    with pytest.raises(ValueError, match="static input scales"):
        to_int8(convert_bert(copy.deepcopy(tiny_bert), dynamic_config()))
    with pytest.raises(ValueError, match="8-bit symmetric weights and inputs"):
        to_int8(trained(convert_bert(copy.deepcopy(tiny_bert), qbert_config(4))))
    with pytest.raises(ValueError, match="has no quantized layer"):
        to_int8(tiny_bert)


@needs_vnni
def test_calibrated_minmax_model_exports(tiny_bert):
    from qlib import BertQuantConfig, LayerQuant

    model = convert_bert(tiny_bert, BertQuantConfig(default=LayerQuant(observer="minmax")))
    calibrate(model, [{"input_ids": torch.randint(5, 64, (4, 8))} for _ in range(2)])
    ids = torch.randint(5, 64, (2, 8))
    with torch.no_grad():
        assert torch.allclose(to_int8(model)(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


@pytest.mark.skipif(cpu_has_vnni(), reason="this CPU has VNNI; the refusal is for CPUs without it")
def test_export_is_refused_on_cpus_without_vnni(tiny_bert):
    with pytest.raises(RuntimeError, match="no AVX-512 VNNI or AVX-VNNI"):
        to_int8(trained(convert_bert(tiny_bert, q8bert_config())))


def test_the_vnni_check_matches_what_the_kernel_does():
    from qlib.int8 import int8_gemm_error

    assert int8_gemm_error(7) == 0.0  # 7-bit weights never saturate
    if cpu_has_vnni():
        assert int8_gemm_error(8) == 0.0
    else:
        assert int8_gemm_error(8) > 1.0  # the saturation that makes to_int8 refuse here


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 70), spread=st.sampled_from([1e-3, 1.0, 300.0]),
       narrow=st.sampled_from([0.3, 1.0]), seed=st.integers(0, 2**16), ties=st.booleans())
def test_quantize_input_is_bit_identical_to_the_grid(rows, cols, spread, narrow, seed, ties):
    """The fast kernel gives qlib's own codes (+128) for every value, rounding ties and clipped values included."""
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * spread
    grid = QuantGrid.from_range(-x.abs().max() * narrow, x.abs().max() * narrow, 8, symmetric=True)
    if ties:  # values exactly between two grid points, where rounding rules differ
        x = (torch.round(x / grid.scale) + 0.5) * grid.scale
    codes = quantize_input(x, float(grid.scale))
    assert codes.dtype == torch.uint8
    assert torch.equal(codes.to(torch.int16) - UINT8_ZERO_POINT, grid.quantize(x).to(torch.int16))
