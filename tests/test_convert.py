"""Conversion of a tiny random BERT: which layers change, shared parameters, and outputs close to FP32."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from torch import nn
from transformers import BertForMaskedLM, BertForQuestionAnswering

from qlib import (
    BertQuantConfig,
    LayerQuant,
    QuantEmbedding,
    QuantLinear,
    QuantSpec,
    calibrate,
    convert_bert,
    dynamic_config,
    layer_names,
    q8bert_config,
    qbert_config,
    quantized_modules,
)


def logits_error(model: nn.Module, config: BertQuantConfig, ids: torch.Tensor) -> float:
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        quantized = convert_bert(copy.deepcopy(model), config).eval()
        return (quantized(input_ids=ids).logits - reference).abs().max().item()


def test_error_shrinks_as_bits_grow(tiny_bert):
    ids = torch.randint(5, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    errors = [logits_error(tiny_bert, dynamic_config(b), ids) for b in (2, 4, 6, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.01


def test_every_encoder_linear_and_embedding_is_converted_and_the_head_stays_float(tiny_bert):
    convert_bert(tiny_bert, q8bert_config())
    names = dict(quantized_modules(tiny_bert))
    assert sum(isinstance(m, QuantLinear) for m in names.values()) == 2 * 6 + 1  # 6 Linears a layer + pooler
    assert sum(isinstance(m, QuantEmbedding) for m in names.values()) == 3
    assert type(tiny_bert.classifier) is nn.Linear
    assert not any(isinstance(m, (nn.Softmax, nn.LayerNorm)) and "Quant" in type(m).__name__
                   for m in tiny_bert.modules())


def test_parameters_are_shared_not_copied(tiny_bert):
    query = tiny_bert.bert.encoder.layer[0].attention.self.query
    weight = query.weight
    convert_bert(tiny_bert, q8bert_config())
    assert tiny_bert.bert.encoder.layer[0].attention.self.query.weight is weight


def test_per_layer_overrides_and_head(tiny_bert):
    config = qbert_config(4, embedding_bits=8, groups=4, layer_bits={"encoder.layer.1": 2,
                                                                      "encoder.layer.1.output.dense": 3})
    config = BertQuantConfig(config.default, config.embeddings, config.layers, head=LayerQuant())
    convert_bert(tiny_bert, config)
    layers = tiny_bert.bert.encoder.layer
    assert layers[0].attention.self.query.quant.weight.bits == 4
    assert layers[1].attention.self.query.quant.weight.bits == 2
    assert layers[1].output.dense.quant.weight.bits == 3  # the longest matching path wins
    assert layers[0].attention.self.query.quant.weight.groups == 4
    assert isinstance(tiny_bert.classifier, QuantLinear)
    assert "encoder.layer.1.attention.self.query" in layer_names(tiny_bert)


@pytest.mark.parametrize("head", [BertForQuestionAnswering, BertForMaskedLM])
def test_any_bert_head_converts_and_tied_weights_stay_tied(head):
    torch.manual_seed(0)
    model = head(tiny_config()).eval()
    convert_bert(model, q8bert_config())
    model.train()
    out = model(input_ids=torch.randint(5, 64, (2, 8)))
    assert torch.isfinite(out[0]).all()
    if head is BertForMaskedLM:
        assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_qat_trains_through_the_ste(tiny_bert):
    convert_bert(tiny_bert, q8bert_config()).train()
    ids = torch.randint(5, 64, (4, 8))
    loss = tiny_bert(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    grad = tiny_bert.bert.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert tiny_bert.bert.embeddings.word_embeddings.weight.grad[ids.unique()].abs().sum() > 0
    observer = tiny_bert.bert.encoder.layer[0].attention.self.query.input_observer
    assert int(observer.observed) == 1 and observer.hi.item() > 0


def test_embedding_lookup_equals_quantizing_the_whole_table():
    table = nn.Embedding(12, 5)
    spec = QuantSpec(3, "asymmetric", "group", groups=4)
    quantized = QuantEmbedding.from_float(table, spec)
    ids = torch.tensor([[0, 3, 11], [5, 5, 7]])
    expected = spec.grid_for(table.weight).fake_quantize(table.weight)[ids]
    assert torch.allclose(quantized(ids), expected, atol=1e-6)


def test_calibrate_sets_static_ranges(tiny_bert):
    config = BertQuantConfig(default=LayerQuant(observer="minmax"))
    convert_bert(tiny_bert, config)
    with pytest.raises(RuntimeError, match="never observed"):
        tiny_bert(input_ids=torch.randint(5, 64, (2, 8)))
    calibrate(tiny_bert, [{"input_ids": torch.randint(5, 64, (2, 8))} for _ in range(3)])
    assert not tiny_bert.training
    assert all(int(m.input_observer.observed) == 3 for _, m in quantized_modules(tiny_bert)
               if isinstance(m, QuantLinear))
