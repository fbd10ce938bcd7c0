"""Bit-packing round trips, packed checkpoints (exact unpacking, sizes, ties) and their error cases."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from transformers import BertForMaskedLM

from qlib import convert_bert, q8bert_config, qbert_config
from qlib.core.packing import pack, packed_nbytes, unpack
from qlib.deploy.checkpoint import checkpoint_sizes, load_quantized, payload_sha256, save_float, save_quantized


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(2, 8), data=st.data())
def test_pack_round_trips_for_every_width_and_odd_sizes(bits, data):
    codes = torch.tensor(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=67)), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(codes.numel(), bits)
    assert torch.equal(unpack(packed, bits, codes.numel()), codes)


def test_three_bit_codes_cross_byte_boundaries():
    assert packed_nbytes(8, 3) == 3 and packed_nbytes(7, 3) == 3 and packed_nbytes(1, 3) == 1
    assert pack(torch.tensor([7, 0, 7], dtype=torch.uint8), 3).tolist() == [0b11000111, 0b00000001]


def test_pack_rejects_out_of_range_codes_and_wrong_lengths():
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\] for 2-bit packing, got \[0, 4\]"):
        pack(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match="10 codes of 3 bits need 4 bytes, got 3"):
        unpack(torch.zeros(3, dtype=torch.uint8), 3, 10)


@pytest.mark.parametrize("config", [q8bert_config(8), qbert_config(3, embedding_bits=4, groups=4),
                                    qbert_config(2, layer_bits={"encoder.layer.1": 4})])
def test_checkpoint_round_trip_gives_the_same_outputs(tiny_bert, tmp_path, config):
    model = convert_bert(tiny_bert, config)
    model.train()(input_ids=torch.randint(5, 64, (2, 8)))  # observe activation ranges
    model.eval()
    path = save_quantized(model, tmp_path / "model.safetensors")
    fresh = convert_bert(copy.deepcopy(tiny_bert), config)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # make sure loading overwrites everything
    load_quantized(fresh, path).eval()
    ids = torch.randint(5, 64, (3, 10))
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    query = "bert.encoder.layer.0.attention.self.query"
    codes = dict(model.named_modules())[query].weight_grid()
    assert torch.equal(dict(fresh.named_modules())[query].weight_grid().quantize(fresh.get_submodule(query).weight),
                       codes.quantize(model.get_submodule(query).weight))


def test_packed_file_is_smaller_in_proportion_to_bits(tiny_bert, tmp_path):
    float_size = save_float(tiny_bert, tmp_path / "fp32.safetensors").stat().st_size
    sizes = {b: checkpoint_sizes(save_quantized(convert_bert(copy.deepcopy(tiny_bert), qbert_config(b, b)),
                                                tmp_path / f"{b}.safetensors")) for b in (2, 4, 8)}
    assert sizes[2]["file"] < sizes[4]["file"] < sizes[8]["file"] < float_size
    assert sizes[8]["embeddings"] < float_size / 3  # 8-bit tables: a quarter of their float bytes, plus grids
    assert 0.9 * sizes[8]["codes"] <= 4 * sizes[2]["codes"] <= 1.1 * sizes[8]["codes"]  # four 2-bit codes a byte


def test_tied_weights_are_stored_once(tmp_path):
    torch.manual_seed(0)
    model = convert_bert(BertForMaskedLM(tiny_config()), q8bert_config()).eval()
    path = save_quantized(model, tmp_path / "mlm.safetensors")
    fresh = load_quantized(convert_bert(BertForMaskedLM(tiny_config()), q8bert_config()), path)
    assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight


def test_corrupt_truncated_or_missing_checkpoint(tiny_bert, tmp_path):
    model = convert_bert(tiny_bert, q8bert_config())
    path = save_quantized(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated checkpoint .*cut.safetensors"):
        load_quantized(model, tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.safetensors not found"):
        load_quantized(model, tmp_path / "nope.safetensors")
    save_float(tiny_bert, tmp_path / "fp32.safetensors")
    with pytest.raises(ValueError, match="is not a qbook quantized checkpoint"):
        load_quantized(model, tmp_path / "fp32.safetensors")
    with pytest.raises(ValueError, match="has no quantized layer"):
        save_quantized(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors", "fp32.safetensors", "m.safetensors"]


def test_size_mb_measures_files_and_leaves_the_model_alone(tiny_bert, tmp_path):
    from qlib.deploy.checkpoint import size_mb

    fp32, packed = size_mb(tiny_bert, None, tmp_path), size_mb(tiny_bert, qbert_config(2, 8), tmp_path)
    assert packed["without_embedding_mb"] < fp32["without_embedding_mb"] / 4
    assert packed["file_mb"] >= packed["embedding_mb"] + packed["without_embedding_mb"]
    assert fp32["codes_without_embedding_mb"] == 0
    assert 0 < packed["codes_without_embedding_mb"] < packed["without_embedding_mb"]
    assert type(tiny_bert.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    assert not list(tmp_path.iterdir())


def test_float16_floats_halve_the_float_part_and_keep_codes_and_grids(tiny_bert, tmp_path):
    config = qbert_config(2, 8, groups=4)
    model = convert_bert(tiny_bert, config)
    model.train()(input_ids=torch.randint(5, 64, (2, 8)))
    model.eval()
    exact = checkpoint_sizes(save_quantized(model, tmp_path / "f32.safetensors"))
    half_path = save_quantized(model, tmp_path / "f16.safetensors", float_dtype=torch.float16)
    half = checkpoint_sizes(half_path)
    assert half["codes"] == exact["codes"]
    assert half["other"] - half["codes"] < 0.6 * (exact["other"] - exact["codes"])  # grids stay float32
    with safe_open(str(half_path), framework="pt") as f:
        assert f.get_tensor("bert.encoder.layer.0.output.LayerNorm.weight").dtype == torch.float16
        assert f.get_tensor("bert.encoder.layer.0.output.dense.weight.scale").dtype == torch.float32
        assert f.metadata()["float_dtype"] == "float16"
    fresh = load_quantized(convert_bert(copy.deepcopy(tiny_bert), config), half_path).eval()
    assert fresh.bert.encoder.layer[0].output.LayerNorm.weight.dtype == torch.float32
    ids = torch.randint(5, 64, (3, 10))
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-2)
    with pytest.raises(ValueError, match="float_dtype must be torch.float32 or torch.float16, got torch.bfloat16"):
        save_quantized(model, tmp_path / "bf16.safetensors", float_dtype=torch.bfloat16)


def _saved(tiny_bert, tmp_path, config):
    model = convert_bert(copy.deepcopy(tiny_bert), config).eval()
    return save_quantized(model, tmp_path / "model.safetensors")


@pytest.mark.parametrize("other,said", [
    (qbert_config(2, groups=4), "bits 3 in the file, 2 in the model"),
    (qbert_config(3, groups=2), "groups 4 in the file, 2 in the model"),
    (qbert_config(3, groups=4, percentile=99.9), "percentile None in the file, 99.9 in the model"),
    (qbert_config(3, groups=4, layer_bits={"encoder.layer.1": 4}), "bits 3 in the file, 4 in the model"),
    (q8bert_config(8), "scheme 'asymmetric' in the file, 'symmetric' in the model"),
])
def test_a_checkpoint_refuses_a_model_quantized_otherwise_naming_the_layer(tiny_bert, tmp_path, other, said):
    path = _saved(tiny_bert, tmp_path, qbert_config(3, groups=4))
    with pytest.raises(ValueError, match=rf"{path} does not fit .*: layer bert\.\S+: {said}"):
        load_quantized(convert_bert(copy.deepcopy(tiny_bert), other), path)


def test_a_checkpoint_refuses_a_model_with_another_layer_set(tiny_bert, tmp_path):
    path = _saved(tiny_bert, tmp_path, qbert_config(3, groups=4))
    model = convert_bert(copy.deepcopy(tiny_bert), qbert_config(3, groups=4))
    target = model.bert.encoder.layer[0].attention.self
    target.query = torch.nn.Linear(target.query.in_features, target.query.out_features)  # left in float
    with pytest.raises(ValueError, match="layer bert.encoder.layer.0.attention.self.query is quantized in the file "
                                         "but not in the model"):
        load_quantized(model, path)


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # in the last tensor's payload: the header still parses
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_refused_not_loaded(tiny_bert, tmp_path):
    path = _saved(tiny_bert, tmp_path, qbert_config(3, groups=4))
    fresh = convert_bert(copy.deepcopy(tiny_bert), qbert_config(3, groups=4))
    load_quantized(fresh, path)  # intact: loads
    _flip_last_byte(path)
    with pytest.raises(ValueError, match=f"corrupt checkpoint {path}: its tensors do not match the SHA-256"):
        load_quantized(fresh, path)
    from qlib.deploy.checkpoint import load_float

    float_path = save_float(tiny_bert, tmp_path / "fp32.safetensors")
    load_float(copy.deepcopy(tiny_bert), float_path)
    _flip_last_byte(float_path)
    with pytest.raises(ValueError, match=f"corrupt checkpoint {float_path}: its tensors do not match"):
        load_float(copy.deepcopy(tiny_bert), float_path)


def test_the_payload_hash_reads_a_tensor_by_its_values_whatever_its_strides():
    """A one-element view keeps its parent's stride and still counts as contiguous (a per-tensor range picked from a
    [G, k] selection): hashed like the same value in a fresh tensor, as a transposed matrix like its copy."""
    column = torch.randn(1, 3)[:, -1]
    matrix = torch.randn(3, 4)
    assert payload_sha256({"a": column, "b": matrix.T}) == payload_sha256({"a": column.clone(), "b": matrix.T.clone()})
    assert payload_sha256({"a": column}) != payload_sha256({"a": column + 1})
