"""The weight-quantizer seam: a new quantizer is one class. A binary-weight quantizer written here (Ŵ = α·sign(W),
α = mean|W|, as XNOR-Net and BinaryBERT's starting point) goes through conversion, training, checkpoints and the
int8 export's refusal without a change to any of them; the uniform grid meets the same contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlib import BertQuantConfig, LayerQuant, QuantSpec, convert_bert, q8bert_config
from qlib.bert.convert import quantized_modules
from qlib.core.weight_quantizer import WeightQuantizer
from qlib.deploy.checkpoint import load_quantized, save_quantized


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight):  # type: ignore[override]
        return weight.abs().mean() * torch.where(weight >= 0, 1.0, -1.0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad  # straight through


@dataclass(frozen=True)
class SignQuantizer:
    """Binary weights: Ŵ = α·sign(W) with α = mean|W| per tensor; stored as one byte a sign and α."""

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return _SignSTE.apply(weight)

    def fake_quantize_rows(self, weight: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return weight.abs().mean().detach() * torch.where(rows >= 0, 1.0, -1.0) + (rows - rows.detach())

    def encode(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"signs": (weight.detach() >= 0).to(torch.uint8).reshape(-1),
                "alpha": weight.detach().abs().mean()[None]}

    def decode(self, encoded: Mapping[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        if encoded["signs"].numel() != torch.Size(shape).numel():
            raise ValueError(f"{encoded['signs'].numel()} signs for a weight of shape {list(shape)}")
        return encoded["alpha"] * (encoded["signs"].to(torch.float32) * 2 - 1).reshape(tuple(shape))

    def describe(self, weight: torch.Tensor) -> dict[str, Any]:
        return {"quantizer": "sign"}


def sign_config() -> BertQuantConfig:
    return BertQuantConfig(default=LayerQuant(weight=SignQuantizer(), activation=QuantSpec(8)), embeddings=QuantSpec(8))


def test_both_quantizers_meet_the_contract():
    assert isinstance(QuantSpec(3, "asymmetric"), WeightQuantizer) and isinstance(SignQuantizer(), WeightQuantizer)
    with pytest.raises(TypeError, match="LayerQuant.weight must be a weight quantizer .* got str"):
        LayerQuant(weight="int4")
    with pytest.raises(TypeError, match="BertQuantConfig.embeddings must be a weight quantizer .* got int"):
        BertQuantConfig(embeddings=8)


@settings(max_examples=100, deadline=None)
@given(bits=st.integers(2, 8), scheme=st.sampled_from(["symmetric", "asymmetric"]),
       granularity=st.sampled_from(["tensor", "channel", "group"]), rows=st.sampled_from([4, 8]),
       cols=st.integers(1, 9), seed=st.integers(0, 2**16), percentile=st.sampled_from([None, 99.0]))
def test_a_uniform_grid_decodes_exactly_what_it_fake_quantizes(bits, scheme, granularity, rows, cols, seed,
                                                               percentile):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    spec = QuantSpec(bits, scheme, granularity, 2 if granularity == "group" else None, percentile)
    decoded = spec.decode(spec.encode(weight), weight.shape)
    assert torch.equal(decoded, spec.fake_quantize(weight).detach())
    ids = torch.tensor([[0, rows - 1], [1, 1]])
    assert torch.equal(spec.fake_quantize_rows(weight, weight[ids], ids), spec.fake_quantize(weight)[ids])
    assert spec.describe(weight)["groups"] == {"tensor": 1, "channel": rows, "group": 2}[granularity]


def test_a_new_quantizer_trains_saves_and_loads_through_the_unchanged_library(tiny_bert, tmp_path):
    model = convert_bert(tiny_bert, sign_config()).train()
    linear = next(m for _, m in quantized_modules(model) if hasattr(m, "quant"))
    ids = torch.randint(0, tiny_bert.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0  # the STE lets gradient through
    model.eval()
    path = save_quantized(model, tmp_path / "sign.safetensors")
    fresh = convert_bert(type(tiny_bert)(tiny_bert.config), sign_config())
    load_quantized(fresh, path)
    name = next(n for n, m in quantized_modules(model) if m is linear)
    restored = fresh.get_submodule(name).weight
    assert torch.equal(restored, SignQuantizer().fake_quantize(linear.weight).detach())
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    other = convert_bert(type(tiny_bert)(tiny_bert.config), q8bert_config())
    with pytest.raises(ValueError, match=r"layer bert\.encoder\.\S+: bits None in the file, 8 in the model.*"
                                         r"quantizer 'sign' in the file, None in the model"):
        load_quantized(other, path)


def test_the_int8_export_refuses_a_quantizer_without_an_int8_kernel(tiny_bert):
    from qlib.deploy.int8 import check_exportable

    model = convert_bert(tiny_bert, sign_config())
    linear = next(m for _, m in quantized_modules(model) if hasattr(m, "quant"))
    with pytest.raises(ValueError, match="weight quantizer is SignQuantizer, which has no int8 kernel"):
        check_exportable(linear)
