"""Ternary weights (TWN, TernaryBERT's quantizer): the levels, threshold and scale the paper defines, the weight
quantizer contract (exact decode, embedding rows, the straight-through gradient), a whole model through training and
its checkpoint, and bad input refused by name."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlib import BertQuantConfig, LayerQuant, QuantSpec, TernarySpec, convert_bert
from qlib.bert.convert import quantized_modules
from qlib.core.packing import packed_nbytes
from qlib.core.weight_quantizer import WeightQuantizer
from qlib.deploy.checkpoint import load_quantized, save_quantized


@settings(max_examples=150, deadline=None)
@given(groups=st.sampled_from([1, 2, 4]), cols=st.integers(1, 12), seed=st.integers(0, 2**16),
       threshold=st.sampled_from([0.5, 0.7, 0.9]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       clip=st.sampled_from([None, 2.5]))
def test_each_group_becomes_alpha_times_twns_levels(groups, cols, seed, threshold, scale, clip):
    """Ŵ_g = α_g · sign(W_g) · 1[|W_g| > Δ_g], Δ_g = t · mean|W_g|, α_g = mean of |W_g| above Δ_g (Li & Liu 2016),
    on W clipped to [-c, c] first (TernaryBERT)."""
    weight = torch.randn(4, cols, generator=torch.Generator().manual_seed(seed)) * scale
    spec = TernarySpec(groups, threshold, clip)
    fake = spec.fake_quantize(weight)
    clipped = weight if clip is None else weight.clamp(-clip, clip)
    for group, (w, q) in enumerate(zip(clipped.reshape(groups, -1), fake.reshape(groups, -1))):
        delta = threshold * w.abs().mean()
        kept = w.abs() > delta
        alpha = w.abs()[kept].mean() if kept.any() else torch.tensor(0.0)
        assert torch.allclose(q, alpha * torch.sign(w) * kept, rtol=1e-6, atol=0), f"group {group}"
        assert len(set(q.tolist()) - {0.0}) <= 2  # three levels at most: -α, 0, α
    assert torch.equal(spec.decode(spec.encode(weight), weight.shape), fake)
    ids = torch.tensor([[0, 3], [2, 2]])
    assert torch.equal(spec.fake_quantize_rows(weight, weight[ids], ids), fake[ids])


def test_the_codes_take_two_bits_each_and_the_contract_holds():
    weight = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    spec = TernarySpec(groups=2)
    encoded = spec.encode(weight)
    assert isinstance(spec, WeightQuantizer) and spec.bits == 2
    assert encoded["codes"].numel() == packed_nbytes(80, 2) and encoded["alpha"].shape == (2,)
    assert spec.describe(weight) == {"quantizer": "ternary", "bits": 2, "groups": 2, "threshold": 0.7, "clip": 2.5}


def test_the_gradient_passes_straight_through_inside_the_clip_range_only():
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(1)).clamp(-2, 2)
    weight[0, :2] = torch.tensor([3.0, -4.0])  # outside TernaryBERT's clip at 2.5
    weight.requires_grad_()
    upstream = torch.randn(6, 5, generator=torch.Generator().manual_seed(2))
    (TernarySpec().fake_quantize(weight) * upstream).sum().backward()
    inside = torch.ones(6, 5, dtype=torch.bool)
    inside[0, :2] = False
    assert torch.equal(weight.grad, torch.where(inside, upstream, 0.0))  # ∂Ŵ/∂W = 1 inside, 0 outside
    unclipped = weight.detach().clone().requires_grad_()
    (TernarySpec(clip=None).fake_quantize(unclipped) * upstream).sum().backward()
    assert torch.equal(unclipped.grad, upstream)
    rows = weight.detach()[torch.tensor([0, 4])].requires_grad_()
    TernarySpec().fake_quantize_rows(weight.detach(), rows, torch.tensor([0, 4])).sum().backward()
    assert torch.equal(rows.grad, inside[[0, 4]].float())


def ternary_config() -> BertQuantConfig:
    return BertQuantConfig(default=LayerQuant(weight=TernarySpec(), activation=QuantSpec(8, "asymmetric")),
                           embeddings=QuantSpec(8, "asymmetric"))


def test_a_ternary_bert_trains_saves_and_loads_exactly(tiny_bert, tmp_path):
    model = convert_bert(tiny_bert, ternary_config()).train()
    ids = torch.randint(0, tiny_bert.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    name, linear = next((n, m) for n, m in quantized_modules(model) if hasattr(m, "quant"))
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0
    model.eval()
    path = save_quantized(model, tmp_path / "ternary.safetensors")
    fresh = convert_bert(type(tiny_bert)(tiny_bert.config), ternary_config())
    load_quantized(fresh, path)
    assert torch.equal(fresh.get_submodule(name).weight, TernarySpec().fake_quantize(linear.weight).detach())
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    grid = BertQuantConfig(default=LayerQuant(weight=QuantSpec(2, "asymmetric"), activation=QuantSpec(8, "asymmetric")),
                           embeddings=QuantSpec(8, "asymmetric"))
    with pytest.raises(ValueError, match=r"quantizer 'ternary' in the file, None in the model"):
        load_quantized(convert_bert(type(tiny_bert)(tiny_bert.config), grid), path)


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": 0}, "groups must be a positive integer, got 0"),
    ({"groups": True}, "groups must be a positive integer, got True"),
    ({"threshold": 1.0}, r"threshold must be a number in \(0, 1\) \(TWN's t = 0.7\), got 1.0"),
    ({"threshold": "0.7"}, r"threshold must be a number in \(0, 1\)"),
    ({"clip": 0}, r"clip must be a positive number or None \(TernaryBERT's c = 2.5\), got 0"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TernarySpec(**kwargs)


def test_bad_weights_and_encodings_are_refused_by_name():
    spec = TernarySpec(groups=3)
    with pytest.raises(ValueError, match="groups=3 does not divide the 4 rows"):
        spec.fake_quantize(torch.randn(4, 2))
    with pytest.raises(ValueError, match="weight holds 1 NaN/Inf value"):
        TernarySpec().fake_quantize(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        TernarySpec().encode(torch.ones(2, 2, dtype=torch.int8))
    encoded = TernarySpec().encode(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"missing \['alpha'\]"):
        TernarySpec().decode({"codes": encoded["codes"]}, (4, 4))
    with pytest.raises(ValueError, match="alpha holds 1 scales, this quantizer has groups=2"):
        TernarySpec(groups=2).decode(encoded, (4, 4))
    with pytest.raises(ValueError, match="ternary codes lie in 0..2, got 3"):
        TernarySpec().decode({"codes": torch.full((4,), 255, dtype=torch.uint8), "alpha": encoded["alpha"]}, (4, 4))
