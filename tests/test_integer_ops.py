"""I-BERT's integer-only GELU, softmax and LayerNorm: each kernel against its float function (errors bounded over the
input range), ⌊√n⌋ exact, and the trainable modules: a BERT converted to them runs, trains through the STE, and
keeps its predictions close to the float nonlinearities'."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from qlib import convert_bert, q8bert_config
from qlib.bert.integer_modules import IntegerGELU, IntegerLayerNorm, IntegerSoftmax, use_integer_nonlinearities
from qlib.core.integer_ops import i_exp, i_gelu, i_layernorm, i_softmax, i_sqrt


def codes(x: torch.Tensor, bits: int = 16) -> tuple[torch.Tensor, float]:
    scale = float(x.abs().max()) / (2 ** (bits - 1) - 1)
    return torch.round(x / scale).to(torch.int64), scale


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**62), min_size=1, max_size=20))
def test_integer_square_root_is_exact(values):
    assert i_sqrt(torch.tensor(values, dtype=torch.int64)).tolist() == [math.isqrt(v) for v in values]


def test_each_kernel_stays_within_its_error_bound_over_the_input_range():
    x = torch.linspace(-10, 10, 100_001, dtype=torch.float64)
    q, scale = codes(x)
    gelu, gelu_scale = i_gelu(q, scale)
    assert (gelu * gelu_scale - F.gelu(x)).abs().max() < 0.0185  # I-BERT's erf polynomial: 1.8e-2 at most
    negative = torch.linspace(-10, 0, 100_001, dtype=torch.float64)
    q, scale = codes(negative)
    exp, exp_scale = i_exp(q, scale)
    assert (exp * exp_scale - torch.exp(negative)).abs().max() < 2.5e-3
    scores = torch.randn(32, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    q, scale = codes(scores)
    probabilities, out_scale = i_softmax(q, scale)
    assert out_scale == 2**-8 and (probabilities * out_scale - torch.softmax(scores, -1)).abs().max() < 6e-3
    hidden = torch.randn(32, 384, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3 + 1
    q, scale = codes(hidden)
    normalized, norm_scale = i_layernorm(q, scale)
    assert (normalized * norm_scale - F.layer_norm(hidden, (384,))).abs().max() < 2e-3


def test_the_kernels_leave_their_input_codes_unchanged():
    q = torch.randint(-2**15, 2**15, (4, 64), generator=torch.Generator().manual_seed(2))
    mask = q % 5 == 0
    cases = [(i_gelu, q), (i_layernorm, q), (i_softmax, q), (lambda q, s: i_softmax(q, s, mask=mask), q),
             (i_exp, -q.abs()), (lambda q, s: i_sqrt(q), q.abs())]
    for kernel, codes_in in cases:
        before = codes_in.clone()
        kernel(codes_in, 1e-3)
        assert torch.equal(codes_in, before)


def test_masked_scores_get_probability_zero_and_bad_inputs_are_refused():
    scores = torch.tensor([[1.0, 2.0, 3.0, -5.0]], dtype=torch.float64)
    q, scale = codes(scores)
    mask = torch.tensor([[False, False, True, False]])
    probabilities, out_scale = i_softmax(q, scale, mask=mask)
    assert probabilities[0, 2] == 0
    expected = torch.softmax(scores.masked_fill(mask, float("-inf")), -1)
    assert (probabilities * out_scale - expected).abs().max() < 6e-3
    with pytest.raises(TypeError, match="int64 codes, got torch.int32"):
        i_gelu(q.to(torch.int32), scale)
    with pytest.raises(ValueError, match="i_exp takes x <= 0"):
        i_exp(torch.tensor([1]), 0.1)
    with pytest.raises(ValueError, match="scale must be positive, got 0"):
        i_gelu(q, 0)
    with pytest.raises(ValueError, match="bits must be in 8..24"):
        IntegerGELU(bits=4)


def test_modules_give_the_kernels_value_and_the_float_functions_gradient():
    x = torch.randn(4, 64, requires_grad=True, generator=torch.Generator().manual_seed(2))
    module = IntegerGELU().train()
    y = module(x)
    assert (y - F.gelu(x)).abs().max() < 0.02 and not torch.equal(y, F.gelu(x))
    y.sum().backward()
    x2 = x.detach().requires_grad_()
    F.gelu(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad)  # the straight-through estimator: the float function's gradient
    norm = torch.nn.LayerNorm(64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    integer = IntegerLayerNorm.from_float(norm).train()
    assert integer.weight is norm.weight and (integer(x) - norm(x)).abs().max() < 5e-3
    softmax = IntegerSoftmax().train()
    assert (softmax(x) - torch.softmax(x, -1)).abs().max() < 6e-3


def test_a_bert_runs_and_trains_with_integer_nonlinearities():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    float_model = BertForSequenceClassification(tiny_config()).eval()
    model = convert_bert(BertForSequenceClassification(tiny_config()), q8bert_config())
    model.load_state_dict(float_model.state_dict(), strict=False)
    reference = convert_bert(BertForSequenceClassification(tiny_config()), q8bert_config())
    reference.load_state_dict(float_model.state_dict(), strict=False)
    use_integer_nonlinearities(model)
    names = {type(m).__name__ for m in model.modules()}
    assert {"IntegerGELU", "IntegerLayerNorm"} <= names and model.config._attn_implementation == \
        "qbook_integer_softmax"
    ids = torch.randint(5, 60, (4, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0  # padding: its keys get probability exactly 0
    labels = torch.tensor([0, 1, 0, 1])
    model.train(), reference.train()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "encoder.layer.0" in n)
    reference(input_ids=ids, attention_mask=mask, labels=labels)  # the same ranges observed once each
    model.eval(), reference.eval()
    with torch.no_grad():
        integer_logits = model(input_ids=ids, attention_mask=mask).logits
        float_logits = reference(input_ids=ids, attention_mask=mask).logits
    assert (integer_logits - float_logits).abs().max() < 0.05
    with pytest.raises(ValueError, match="is not a BERT with GELU"):
        use_integer_nonlinearities(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.slow
def test_an_integer_nonlinearity_qat_run_trains_saves_and_loads(glue_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from qlib.deploy.checkpoint import load_quantized
    from qlib.experiments.experiment import checkpoint_path, run
    from qlib.experiments.spec import RunSpec, TrainingProtocol

    spec = RunSpec("sst2", "qat", integer_nonlinearities=True,
                   protocol=TrainingProtocol(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16))
    record = run(spec, results_dir=tmp_path / "r", checkpoint_dir=tmp_path / "c", progress=False)[0]
    assert record["method"] == "qat-int" and 0 <= record["metrics"]["accuracy"] <= 1
    fresh = convert_bert(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), spec.quant_config())
    load_quantized(fresh, checkpoint_path(spec, tmp_path / "c"))  # the integer modules' ranges travel too
    ranges = [m.observer for m in fresh.modules() if isinstance(m, IntegerLayerNorm)]
    assert ranges and all(int(o.observed) > 0 for o in ranges)
