"""Quant-Noise for product quantization: a fraction p of blocks takes its nearest centroid, the rest stays float,
the gradient is the identity, parameters are never written, and the parametrizations come off before iPQ."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import parametrize
from transformers import BertForSequenceClassification

from qlib import convert_bert, q8bert_config
from qlib.bert.convert import find_bert
from qlib.bert.modules import QuantLinear
from qlib.bert.pq_modules import STAGE_BLOCK_SIZES, product_quantize, stage_of
from qlib.bert.pq_noise import PQNoise, add_pq_noise, remove_pq_noise
from qlib.core.product_quantization import ProductQuantizer, assign, blocks_of
from qlib.core.quant_noise import pq_noise


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 12), blocks=st.integers(1, 6), d=st.sampled_from([1, 2, 4]), k=st.integers(1, 8),
       p=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 99))
def test_each_block_is_kept_or_replaced_by_its_nearest_centroid(rows, blocks, d, k, p, seed):
    torch.manual_seed(seed)
    weight, codebook = torch.randn(rows, blocks * d), torch.randn(k, d)
    noisy = pq_noise(weight, codebook, p, torch.Generator().manual_seed(seed))
    nearest = codebook[assign(blocks_of(weight, d), codebook)]
    kept = (blocks_of(noisy, d) == blocks_of(weight, d)).all(1)
    replaced = (blocks_of(noisy, d) == nearest).all(1)
    assert bool((kept | replaced).all())
    if p == 0.0:
        assert torch.equal(noisy, weight)
    if p == 1.0:
        assert bool(replaced.all())


def test_about_a_fraction_p_of_the_blocks_is_replaced():
    weight, codebook = torch.zeros(400, 64), torch.ones(1, 8)
    noisy = pq_noise(weight, codebook, 0.2, torch.Generator().manual_seed(0))
    assert noisy.mean().item() == pytest.approx(0.2, abs=0.02)


def test_the_gradient_is_the_identity_and_the_weight_is_never_written():
    weight = torch.randn(6, 8, requires_grad=True)
    before = weight.detach().clone()
    (pq_noise(weight, torch.randn(4, 4), 1.0) * torch.arange(48.0).reshape(6, 8)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(48.0).reshape(6, 8)) and torch.equal(weight.detach(), before)


def test_bad_rate_or_block_width_is_refused():
    with pytest.raises(ValueError, match="noise rate p must be in"):
        pq_noise(torch.zeros(2, 4), torch.zeros(2, 2), 1.2)
    with pytest.raises(ValueError, match="block_size=3 must be a positive divisor of the 4 input features"):
        pq_noise(torch.zeros(2, 4), torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="refit_every must be a positive integer, got 0"):
        PQNoise(0.1, ProductQuantizer(4, 2), refit_every=0)


def test_the_codebook_is_refitted_on_schedule_and_evaluation_sees_the_float_weight():
    layer = torch.nn.Linear(8, 16)
    noise = PQNoise(1.0, ProductQuantizer(4, 4, iterations=3), refit_every=3, fit_sample=20)
    parametrize.register_parametrization(layer, "weight", noise, unsafe=True)
    codebooks = []
    for _ in range(4):
        layer(torch.zeros(1, 8))
        codebooks.append(noise.codebook.clone())
    assert noise.steps == 4 and tuple(noise.codebook.shape) == (4, 4)
    assert torch.equal(codebooks[0], codebooks[2])  # fitted at the 1st call, refitted at the 4th
    with torch.no_grad():
        layer.parametrizations.weight.original.add_(5.0)
        layer(torch.zeros(1, 8))
        layer(torch.zeros(1, 8))
        assert torch.equal(noise.codebook, codebooks[3])  # calls 5 and 6 keep the 4th call's codebook
        layer(torch.zeros(1, 8))  # the 7th refits, to the moved weight
    assert noise.steps == 7 and noise.codebook.mean().item() > 4
    layer.eval()
    assert torch.equal(layer.weight, layer.parametrizations.weight.original)


def test_bert_gets_noise_on_ipqs_layers_with_their_block_sizes_and_loses_it_before_ipq():
    torch.manual_seed(0)
    model = convert_bert(BertForSequenceClassification(tiny_config()), q8bert_config())
    bert = find_bert(model)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    done = add_pq_noise(bert, 0.5, centroids=16, centroid_bits=8, iterations=2)
    assert set(done) == {n for n, m in bert.named_modules() if stage_of(n) and isinstance(
        m, (torch.nn.Linear, torch.nn.Embedding))}
    for name in done:
        noise = bert.get_submodule(name).parametrizations.weight[0]
        assert noise.quantizer.block_size == STAGE_BLOCK_SIZES[stage_of(name)] and noise.centroid_spec.bits == 8
    assert not parametrize.is_parametrized(model.classifier) and not parametrize.is_parametrized(bert.pooler.dense)
    ids = torch.randint(0, 64, (2, 8))
    model.train()
    noisy = model(input_ids=ids).logits
    noisy.sum().backward()
    assert bert.encoder.layer[0].intermediate.dense.parametrizations.weight.original.grad is not None
    model.eval()
    with torch.no_grad():
        with_noise_off = model(input_ids=ids).logits
    assert remove_pq_noise(bert) == done
    assert isinstance(bert.encoder.layer[0].intermediate.dense, QuantLinear)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())  # nothing was written
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, with_noise_off)
    assert product_quantize(bert, "ffn", 16, iterations=1)  # iPQ takes the layers as before
