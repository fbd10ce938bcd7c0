"""The ONNX QDQ export: the graph ONNX Runtime runs computes what the fake-quantized model computes, with the
learned scales; settings with no int8 QDQ form are refused, naming the layer."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from transformers import BertForSequenceClassification

from qlib import convert_bert, dynamic_config, q8bert_config, qbert_config
from qlib.deploy.onnx_export import QDQLinear, export_onnx, to_qdq

onnx = pytest.importorskip("onnx", reason="onnx not installed: pip install -e '.[test]'")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install -e '.[test]'")


def trained(model):
    """EMA input ranges set by a few training-mode forwards, as QAT leaves them."""
    model.train()
    for seed in range(3):
        model(input_ids=torch.randint(5, 64, (8, 16), generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def batch(rows: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 64, (rows, seq), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[: rows // 2, seq - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def fake():
    torch.manual_seed(0)
    return trained(convert_bert(BertForSequenceClassification(tiny_config()).eval(), q8bert_config()))


def test_qdq_model_computes_the_fake_quantized_function(fake):
    qdq = to_qdq(fake)
    # per layer: Q, K and V as one MatMul, the attention output, the two FFN matrices; and the pooler
    assert sum(isinstance(m, QDQLinear) for m in qdq.modules()) == 2 * 4 + 1
    x = batch(4, 12, 1)
    with torch.no_grad():
        torch.testing.assert_close(qdq(**x).logits, fake(**x).logits, atol=1e-5, rtol=0)


def test_onnx_runtime_runs_the_export_at_other_shapes_and_agrees(fake, tmp_path):
    path = export_onnx(fake, tmp_path / "model.onnx", batch(2, 8, 0))
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    # one QuantizeLinear per MatMul's input (Q, K and V are one MatMul), none for the weights and tables: theirs are
    # folded into int8 initializers
    matmuls = 2 * 4 + 1
    assert ops.count("QuantizeLinear") == matmuls and ops.count("DequantizeLinear") == 2 * matmuls + 3
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) == matmuls + 3
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = batch(5, 11, 3)  # batch and sequence length differ from the export's example
    (logits,) = session.run(None, {k: v.numpy() for k, v in x.items()})
    with torch.no_grad():
        expected = fake(**x).logits
    # ONNX Runtime fuses the QDQ pairs into int8 GEMMs (another summation order): float error only
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-3, rtol=1e-3)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"


def test_an_example_in_a_tokenizers_order_names_each_graph_input_by_its_own_tensor(fake, tmp_path):
    x = batch(4, 10, 5)
    ordered = {"input_ids": x["input_ids"], "token_type_ids": torch.zeros_like(x["input_ids"]),
               "attention_mask": x["attention_mask"]}  # as a BERT tokenizer returns them; forward takes the mask 2nd
    session = onnxruntime.InferenceSession(str(export_onnx(fake, tmp_path / "model.onnx", ordered)),
                                           providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    (logits,) = session.run(None, {k: v.numpy() for k, v in ordered.items()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), fake(**ordered).logits, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match=r"example inputs \['segment_ids'\] are not parameters of .*allowed: "):
        export_onnx(fake, tmp_path / "bad.onnx", {**ordered, "segment_ids": ordered["token_type_ids"]})


def test_learned_input_scales_reach_the_graph(fake, tmp_path):
    graph = onnx.load(str(export_onnx(fake, tmp_path / "model.onnx", batch(2, 8, 0)))).graph
    constants = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                 if n.op_type == "Constant"}
    input_scales = sorted({float(constants[n.input[1]]) for n in graph.node
                           if n.op_type == "QuantizeLinear" and n.input[1] in constants})
    learned = sorted({m.x_scale for m in to_qdq(fake).modules() if isinstance(m, QDQLinear)})
    assert len(learned) == 2 * 4 + 1
    assert input_scales == pytest.approx(learned, rel=1e-7)


@pytest.mark.parametrize("config, message", [
    (lambda: qbert_config(weight_bits=4), "8-bit symmetric"),
    (lambda: dynamic_config(), "dynamic"),
])
def test_settings_without_an_int8_qdq_form_are_refused_naming_the_layer(config, message, tmp_path):
    torch.manual_seed(0)
    model = trained(convert_bert(BertForSequenceClassification(tiny_config()).eval(), config()))
    with pytest.raises(ValueError, match=message) as err:
        export_onnx(model, tmp_path / "model.onnx", batch(2, 8, 0))
    assert "layer bert.encoder.layer.0" in str(err.value) or "embedding" in str(err.value)
    assert not (tmp_path / "model.onnx").exists()


def test_an_unconverted_model_or_a_bad_example_is_refused(fake, tmp_path):
    with pytest.raises(ValueError, match="no quantized layer"):
        to_qdq(BertForSequenceClassification(tiny_config()))
    with pytest.raises(ValueError, match=r"\[batch, seq\] tensors"):
        export_onnx(fake, tmp_path / "m.onnx", {"input_ids": torch.ones(8, dtype=torch.long)})


def test_a_model_never_calibrated_is_refused(tmp_path):
    model = convert_bert(BertForSequenceClassification(tiny_config()).eval(), q8bert_config())
    with pytest.raises(RuntimeError):
        export_onnx(model, tmp_path / "m.onnx", batch(2, 8, 0))
