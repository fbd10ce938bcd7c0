"""Product quantization and iPQ: k-means with empty-cluster splitting, the PQ weight quantizer (Quant-Noise for
PQ), iPQ's frozen-code layers and stages, their checkpoints, and the errors on bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertForSequenceClassification

from qlib import convert_bert, q8bert_config
from qlib.bert.config import LayerQuant
from qlib.bert.convert import find_bert
from qlib.bert.modules import QuantLinear
from qlib.bert.pq_modules import PQEmbedding, PQLinear, product_quantize, product_quantize_all, stage_of
from qlib.core.product_quantization import ProductQuantizer, assign, blocks_of, decode, kmeans
from qlib.core.weight_quantizer import WeightQuantizer
from qlib.deploy.checkpoint import load_quantized, save_quantized
from qlib.deploy.int8 import to_int8
from qlib.deploy.onnx_export import to_qdq


def test_kmeans_finds_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = centers.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=generator)
    centroids, assignments = kmeans(points, 4, iterations=10)
    found = centroids[assignments]
    assert (found - centers.repeat_interleave(50, 0)).abs().max() < 0.1
    assert len(set(assignments.tolist())) == 4


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), blocks=st.integers(1, 6), d=st.sampled_from([1, 2, 4]), k=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_every_block_takes_its_nearest_centroid_and_k_distinct_blocks_are_exact(rows, blocks, d, k, seed):
    weight = torch.randn(rows, blocks * d, generator=torch.Generator().manual_seed(seed))
    b = blocks_of(weight, d)
    k = min(k, b.shape[0])
    centroids, assignments = kmeans(b, k, iterations=5, seed=seed)
    assert torch.equal(assignments, assign(b, centroids))
    if k == b.shape[0]:  # one centroid per (distinct, random) block: no error
        torch.testing.assert_close(centroids[assignments], b)


def test_an_empty_cluster_takes_half_of_the_largest():
    # 3 distinct values, one of them repeated: with k = 3 the initial draw can pick the repeated value twice,
    # which leaves a cluster empty until it is split off the largest one
    blocks = torch.tensor([[0.0], [0.0], [0.0], [0.0], [1.0], [5.0]])
    for seed in range(10):
        centroids, assignments = kmeans(blocks, 3, iterations=5, seed=seed)
        assert torch.bincount(assignments, minlength=3).min() >= 1
        assert torch.equal(centroids[assignments], blocks)


def test_k_beyond_the_distinct_blocks_cannot_be_split():
    with pytest.raises(ValueError, match="fewer than k distinct values"):
        kmeans(torch.zeros(6, 2), 3, iterations=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"centroids": 300}, "centroids must be an integer k in 2..256"),
    ({"centroids": 1}, "2..256"),
    ({"block_size": 0}, "block_size must be a positive integer"),
    ({"iterations": 0}, "iterations must be a positive integer"),
])
def test_bad_quantizer_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProductQuantizer(**kwargs)


def test_a_block_size_must_divide_the_inputs():
    with pytest.raises(ValueError, match="block_size=3 must be a positive divisor of the 8 input features"):
        ProductQuantizer(4, 3).fit(torch.randn(4, 8))


def test_the_pq_quantizer_keeps_the_weight_quantizer_contract():
    pq = ProductQuantizer(centroids=8, block_size=4, iterations=5)
    assert isinstance(pq, WeightQuantizer)
    weight = torch.randn(16, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    fake = pq.fake_quantize(weight)
    encoded = pq.encode(weight)
    assert encoded["codes"].dtype == torch.uint8 and tuple(encoded["codebook"].shape) == (8, 4)
    torch.testing.assert_close(pq.decode(encoded, (16, 8)), fake.detach())
    fake.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))  # the straight-through estimator
    with pytest.raises(ValueError, match=r"codebook of shape \(4, 4\), expected \(8, 4\)"):
        pq.decode({"codebook": torch.zeros(4, 4), "codes": encoded["codes"]}, (16, 8))


def test_quant_noise_with_pq_mixes_blocks_in_training_and_quantizes_all_at_inference():
    torch.manual_seed(0)
    pq = ProductQuantizer(centroids=4, block_size=4, iterations=5)
    layer = QuantLinear.from_float(torch.nn.Linear(8, 16), LayerQuant(weight=pq, activation=None, noise_rate=0.5,
                                                                    noise_block=4))
    x = torch.eye(8)
    quantized = pq.fake_quantize(layer.weight).detach()
    with torch.no_grad():
        layer.eval()
        torch.testing.assert_close(layer(x) - layer.bias, (x @ quantized.T))
        layer.train()
        noisy = (layer(x) - layer.bias).T  # [out, in]: the weight each block was taken from
    from_float = (noisy - layer.weight).abs().reshape(16, 2, 4).amax(-1) < 1e-6
    from_pq = (noisy - quantized).abs().reshape(16, 2, 4).amax(-1) < 1e-6
    assert bool((from_float | from_pq).all()) and from_float.any() and from_pq.any()


def test_stages_name_the_layers_of_bert():
    assert stage_of("encoder.layer.0.intermediate.dense") == "ffn"
    assert stage_of("encoder.layer.0.output.dense") == "ffn"
    assert stage_of("encoder.layer.0.attention.output.dense") == "attention"
    assert stage_of("encoder.layer.0.attention.self.key") == "attention"
    assert stage_of("embeddings.word_embeddings") == "embeddings"
    assert stage_of("pooler.dense") is None


@pytest.fixture
def ipq_model():
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config()).eval()
    bert = find_bert(model)
    done = {stage: product_quantize(bert, stage, centroids=16, iterations=5) for stage in
            ("ffn", "embeddings", "attention")}
    return model, done


def test_ipq_stages_replace_their_layers_and_the_model_runs(ipq_model):
    model, done = ipq_model
    assert len(done["ffn"]) == 2 * 2 and len(done["attention"]) == 2 * 4 and len(done["embeddings"]) == 3
    assert sum(isinstance(m, PQLinear) for m in model.modules()) == 12
    assert sum(isinstance(m, PQEmbedding) for m in model.modules()) == 3
    ids = torch.randint(5, 64, (3, 10))
    assert model(input_ids=ids).logits.shape == (3, 2)
    with pytest.raises(ValueError, match="stage must be one of"):
        product_quantize(find_bert(model), "pooler")


def test_a_centroid_gets_the_summed_gradient_of_its_blocks_and_codes_stay(ipq_model):
    model, _ = ipq_model
    layer = find_bert(model).encoder.layer[0].intermediate.dense
    codes = layer.codes.clone()
    weight = layer.weight
    weight.retain_grad()
    (weight * torch.arange(weight.numel()).reshape(weight.shape)).sum().backward()
    block_grads = blocks_of(weight.grad, layer.quantizer.block_size)
    expected = torch.zeros_like(layer.codebook).index_add_(0, codes.reshape(-1).long(), block_grads)
    torch.testing.assert_close(layer.codebook.grad, expected)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.equal(layer.codes, codes)


def test_a_pq_embedding_decodes_only_the_rows_it_looks_up(ipq_model):
    model, _ = ipq_model
    table = find_bert(model).embeddings.word_embeddings
    ids = torch.tensor([[3, 7], [7, 60]])
    torch.testing.assert_close(table(ids), table.weight[ids])
    assert torch.equal(decode(table.codebook, table.codes), table.weight)


def test_ipq_with_int8_activations_and_centroids_keeps_the_input_grid():
    torch.manual_seed(0)
    model = convert_bert(BertForSequenceClassification(tiny_config()).eval(), q8bert_config())
    model.train()
    model(input_ids=torch.randint(5, 64, (4, 8)))
    product_quantize(find_bert(model), "ffn", centroids=16, iterations=3, centroid_bits=8)
    layer = find_bert(model).encoder.layer[1].output.dense
    assert isinstance(layer, PQLinear) and layer.input_observer is not None and layer.quant.activation.bits == 8
    assert len(torch.unique(layer.centroids().detach())) <= 255  # the codebook sits on an 8-bit grid
    model.eval()
    assert torch.isfinite(model(input_ids=torch.randint(5, 64, (2, 8))).logits).all()


def test_a_pq_checkpoint_round_trips_and_refuses_another_configuration(ipq_model, tmp_path):
    model, _ = ipq_model
    path = save_quantized(model, tmp_path / "ipq.safetensors", float_dtype=torch.float16)
    torch.manual_seed(1)
    other = BertForSequenceClassification(tiny_config()).eval()
    replaced = product_quantize_all(find_bert(other), centroids=16, iterations=1)  # the layout, fitted once
    assert [stage_of(name) for name in replaced] == ["ffn"] * 4 + ["embeddings"] * 3 + ["attention"] * 8
    load_quantized(other, path)
    ids = torch.randint(5, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(other(input_ids=ids).logits, model(input_ids=ids).logits, atol=2e-3, rtol=0)
    for name, module in model.named_modules():
        if isinstance(module, (PQLinear, PQEmbedding)):
            assert torch.equal(other.get_submodule(name).codes, module.codes)
    wrong = BertForSequenceClassification(tiny_config()).eval()
    for stage in ("ffn", "embeddings", "attention"):
        product_quantize(find_bert(wrong), stage, centroids=8, iterations=1)
    with pytest.raises(ValueError, match="centroids 16 in the file, 8 in the model"):
        load_quantized(wrong, path)


def test_pq_layers_have_no_int8_kernel_or_onnx_form(ipq_model):
    model, _ = ipq_model
    with pytest.raises(ValueError, match="product-quantized"):
        to_int8(model)
    with pytest.raises(ValueError, match="product-quantized"):
        to_qdq(model)


def test_an_ipq_file_is_a_small_share_of_fp32_and_measured_without_training(tmp_path):
    from qlib.deploy.checkpoint import size_mb

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(hidden_size=64, intermediate_size=256, vocab_size=512)).eval()
    fp32 = size_mb(model, None, tmp_path)["file_mb"]
    ipq = size_mb(model, q8bert_config(), tmp_path, torch.float16, ipq_centroids=16, ipq_centroid_bits=8)
    plain = size_mb(model, q8bert_config(), tmp_path)["file_mb"]
    assert ipq["file_mb"] < plain < fp32
    assert not list(tmp_path.iterdir())  # measured files are removed
