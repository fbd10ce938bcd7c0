"""The int8 CPU path: agreement with the fake-quantized model, checkpoint → int8, and its error cases."""

from __future__ import annotations

import copy

import pytest
import torch

from qlib import calibrate, convert_bert, dynamic_config, q8bert_config, qbert_config
from qlib.checkpoint import load_quantized, save_quantized
from qlib.int8 import Int8Embedding, Int8Linear, cpu_has_vnni, to_int8

needs_vnni = pytest.mark.skipif(not cpu_has_vnni(), reason="this CPU has no AVX-512 VNNI/AVX-VNNI: int8 GEMMs "
                                "saturate with 8-bit weights, so to_int8 refuses (tested below)")


def trained(model):
    """Set the EMA input ranges with a few training-mode forwards, as QAT would."""
    model.train()
    for seed in range(3):
        model(input_ids=torch.randint(5, 64, (8, 16), generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@needs_vnni
def test_int8_model_agrees_with_the_fake_quantized_model(tiny_bert):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    real = to_int8(fake)
    assert sum(isinstance(m, Int8Linear) for m in real.modules()) == 13
    assert sum(isinstance(m, Int8Embedding) for m in real.modules()) == 3
    ids = torch.randint(5, 64, (6, 12), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected, got = fake(input_ids=ids).logits, real(input_ids=ids).logits
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@needs_vnni
def test_input_quantization_is_its_own_profiler_range(tiny_bert):
    real = to_int8(trained(convert_bert(tiny_bert, q8bert_config())))
    with torch.no_grad(), torch.profiler.profile() as prof:
        real(input_ids=torch.randint(5, 64, (2, 8), generator=torch.Generator().manual_seed(1)))
    ranges = [e for e in prof.key_averages() if e.key == "qlib::quantize_input"]
    assert len(ranges) == 1 and ranges[0].count == 13  # once per Int8Linear


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
