"""The int8 CPU path: agreement with the fake-quantized model, checkpoint → int8, and its error cases."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertForSequenceClassification
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, eager_mask

from qlib import QuantGrid, calibrate, convert_bert, dynamic_config, q8bert_config, qbert_config
from qlib.core.quantizers import QuantSpec
from qlib.deploy import int8
from qlib.deploy.checkpoint import load_quantized, save_quantized
from qlib.deploy.int8 import (
    BF16_ATTENTION,
    GELU_FLOOR,
    UINT8_ZERO_POINT,
    CodeWidths,
    Int8Embedding,
    Int8Intermediate,
    Int8Linear,
    Int8ResidualOutput,
    Int8SelfAttention,
    exact_widths,
    input_zero_point,
    padding_row_mask,
    quantize_input,
    to_int8,
)

needs_vnni = pytest.mark.skipif(
    CodeWidths(8, 8) not in exact_widths(), reason="this CPU's int8 GEMMs saturate with 8-bit inputs and weights (no "
    "VNNI or AMX): to_int8 takes a 7-bit operand here (tested below)")


def trained(model):
    """Set the EMA input ranges with a few training-mode forwards, as QAT would (without gradients: flex attention
    has no backward on CPU)."""
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(input_ids=torch.randint(5, 64, (8, 16), generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@needs_vnni
@pytest.mark.parametrize("attention, activation, fused_ffn", [("sdpa", "gelu", True), ("eager", "gelu_new", True),
                                                             ("sdpa", "relu", False), ("flex_attention", "gelu", True)])
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
    with pytest.raises(ValueError, match="8-bit symmetric inputs and 8- or 7-bit symmetric weights"):
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


def test_the_engine_check_matches_what_the_kernel_does():
    from qlib.deploy.int8 import int8_gemm_error

    assert int8_gemm_error(7) == 0.0  # 7-bit weights never saturate
    assert {CodeWidths(8, 7), CodeWidths(7, 8)} <= set(exact_widths())  # nor do 7-bit inputs, on every x86 CPU
    if CodeWidths(8, 8) in exact_widths():
        assert int8_gemm_error(8) == 0.0
    else:
        assert int8_gemm_error(8) > 1.0  # the saturation that makes to_int8 take a 7-bit operand here


AVX2_SCRIPT = """
import torch, pytest
from conftest import tiny_config
from transformers import BertForSequenceClassification
from qlib import convert_bert, q8bert_config
from qlib.deploy.int8 import CodeWidths, Int8Linear, exact_widths, to_int8
from test_int8 import trained
assert exact_widths() == (CodeWidths(8, 7), CodeWidths(7, 8)), exact_widths()
torch.manual_seed(0)
fake = trained(convert_bert(BertForSequenceClassification(tiny_config()).eval(), q8bert_config()))
with pytest.raises(RuntimeError, match="saturate with 8-bit inputs × 8-bit weights"):
    to_int8(fake, CodeWidths(8, 8))
ids = torch.randint(5, 64, (6, 12), generator=torch.Generator().manual_seed(9))
for widths in (None, CodeWidths(7, 8)):
    real = to_int8(fake, widths)
    assert {m.widths for m in real.modules() if isinstance(m, Int8Linear)} == {widths or CodeWidths(8, 7)}
    with torch.no_grad():
        print((real(input_ids=ids).logits - fake(input_ids=ids).logits).abs().max().item())
# trained with 7-bit weights, the model's own arithmetic runs here: its codes fit the 7-bit route unchanged
torch.manual_seed(0)
fake = trained(convert_bert(BertForSequenceClassification(tiny_config()).eval(), q8bert_config(weight_bits=7)))
with torch.no_grad():
    print((to_int8(fake)(input_ids=ids).logits - fake(input_ids=ids).logits).abs().max().item())
"""


def test_on_a_cpu_capped_at_avx2_int8_runs_a_7_bit_operand_and_refuses_two_8_bit_ones(tmp_path):
    """oneDNN capped at AVX2 (``ONEDNN_MAX_CPU_ISA``) runs the saturating kernels of a CPU without VNNI: the
    export takes 7-bit weights there by default (7-bit inputs on request), exactly, and stays close to the
    fake-quantized model; a model trained with 7-bit weights (``q8bert_config(weight_bits=7)``) runs there with its
    own arithmetic, as exactly as an 8-bit model on a VNNI CPU."""
    tests = Path(__file__).parent
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(tests))
    done = subprocess.run([sys.executable, "-c", AVX2_SCRIPT], env=env, capture_output=True, text=True, cwd=tests,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    *errors, trained_7_bit = [float(line) for line in done.stdout.strip().splitlines()[-3:]]
    assert max(errors) < 0.05, errors
    assert trained_7_bit < 1e-4 < min(errors), (errors, trained_7_bit)


@needs_vnni
def test_a_7_bit_operand_stays_close_and_8_bit_ones_are_exact(tiny_bert):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    ids = torch.randint(5, 64, (6, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = fake(input_ids=ids).logits
        error = {w: (to_int8(fake, w)(input_ids=ids).logits - expected).abs().max().item() for w in exact_widths()}
    assert error[CodeWidths(8, 8)] < 1e-4 < error[CodeWidths(7, 8)] < 0.05
    assert 1e-4 < error[CodeWidths(8, 7)] < 0.05


@needs_vnni
def test_a_model_trained_with_7_bit_weights_runs_its_own_arithmetic_on_either_8_bit_input_route(tiny_bert):
    fake = trained(convert_bert(tiny_bert, q8bert_config(weight_bits=7)))
    ids = torch.randint(5, 64, (6, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = fake(input_ids=ids).logits
        for widths in (CodeWidths(8, 8), CodeWidths(8, 7)):
            assert (to_int8(fake, widths)(input_ids=ids).logits - expected).abs().max() < 1e-4, widths


def test_7_bit_weights_keep_the_codes_that_fit_and_re_round_the_others_per_channel():
    from qlib.deploy.int8 import seven_bit_weights

    weight = torch.tensor([[1.27, -0.5, 0.25], [0.01, 0.02, -0.63], [0.3, -0.2, 0.1]])
    grid = QuantSpec(8, "symmetric").grid_for(weight)  # per tensor: Δ8 = 0.01
    codes = grid.quantize(weight)
    seven = seven_bit_weights(weight, grid)
    kept = seven.quantize(grid.fake_quantize(weight))
    assert torch.equal(kept[1:], codes[1:])  # rows whose codes fit in ±63 keep them
    assert torch.allclose(seven.scale[1:], grid.scale.expand(2))
    assert kept[0].abs().max() == 63 and seven.scale[0] == pytest.approx(1.27 / 63)  # the wide row: its own range
    per_channel = QuantSpec(8, "symmetric", "channel").grid_for(weight)
    assert (seven_bit_weights(weight, per_channel).quantize(weight).abs().amax(dim=1) == 63).all()


@needs_vnni
def test_bf16_attention_reads_q_k_v_in_bf16_straight_from_their_gemm(tiny_bert):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    real = to_int8(fake, attention_dtype=torch.bfloat16)
    attention = next(m for m in real.modules() if isinstance(m, Int8SelfAttention))
    assert attention.qkv.out_dtype == torch.bfloat16
    hidden = torch.randn(3, 7, tiny_bert.config.hidden_size, generator=torch.Generator().manual_seed(1))
    written = attention.qkv(hidden)
    attention.qkv.out_dtype = torch.float32  # the GEMM's float32 output, rounded to bf16 afterwards
    assert written.dtype == torch.bfloat16 and torch.equal(written, attention.qkv(hidden).to(torch.bfloat16))
    ids = torch.randint(5, 64, (4, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        from_float32 = real(input_ids=ids).logits
        attention.qkv.out_dtype = torch.bfloat16
        assert torch.equal(real(input_ids=ids).logits, from_float32)
        assert (from_float32 - fake(input_ids=ids).logits).abs().max() < 0.05


@needs_vnni
def test_bf16_attention_runs_a_float32_softmax_and_honours_padding(tiny_bert):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    implementation = fake.config._attn_implementation
    real = to_int8(fake, attention_dtype=torch.bfloat16)
    assert real.config._attn_implementation == BF16_ATTENTION and fake.config._attn_implementation == implementation
    ids = torch.randint(5, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[:2, 7:] = 0
    masks = []  # what each layer's attention adds to its scores
    for attention in (m for m in real.modules() if isinstance(m, Int8SelfAttention)):
        attention.register_forward_pre_hook(lambda _, args, kwargs: masks.append(kwargs["attention_mask"]),
                                            with_kwargs=True)
    with torch.no_grad():
        got = real(input_ids=ids, attention_mask=mask).logits
        assert masks[0].shape == (4, 1, 1, 12)  # one padding row per sequence, broadcast over heads and queries
        assert torch.equal(masks[0][:, 0, 0] == 0, mask.bool())
        assert (got - fake(input_ids=ids, attention_mask=mask).logits).abs().max() < 0.05
        unpadded = real(input_ids=ids[:2, :7]).logits  # the padded rows score as if the padding were not there
    assert (got[:2] - unpadded).abs().max() < 0.02


@pytest.mark.parametrize("padded", [True, False, None])
def test_the_padding_row_is_each_query_row_of_the_whole_mask_and_a_causal_mask_stays_whole(padded):
    padding = None if padded is None else torch.ones(3, 6, dtype=torch.bool)
    if padded:
        padding[1, 4:] = False
    common = {"batch_size": 3, "kv_length": 6, "attention_mask": padding, "dtype": torch.float32}
    for mask_function in (bidirectional_mask_function, causal_mask_function):  # as BERT's encoder, decoder ask
        skip = {"allow_is_bidirectional_skip": mask_function is bidirectional_mask_function}
        whole = eager_mask(q_length=5, mask_function=mask_function, **common, **skip)
        got = padding_row_mask(q_length=5, mask_function=mask_function, **common, **skip)
        if mask_function is causal_mask_function:
            assert torch.equal(got, whole)
        else:  # without padding (or a mask) transformers adds no mask; the row is then all zeros
            assert got.shape == (3, 1, 1, 6)
            assert torch.equal(got.expand(3, 1, 5, 6), whole) if padded else (whole is None and not got.any())


@needs_vnni
def test_bf16_attention_runs_sdpa_past_the_eager_limit_with_the_same_padding(tiny_bert, monkeypatch):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    real = to_int8(fake, attention_dtype=torch.bfloat16)
    sdpa, calls = F.scaled_dot_product_attention, []
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: calls.append(q.dtype) or sdpa(q, *a, **k))
    ids = torch.randint(5, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[:2, 7:] = 0
    logits = {}
    with torch.no_grad():
        expected = fake(input_ids=ids, attention_mask=mask).logits
        for limit in (12, 11):  # the 12 keys within the eager limit, then past it
            for attention in [m for m in real.modules() if isinstance(m, Int8SelfAttention)]:
                attention.eager_max_tokens = limit
            calls.clear()
            logits[limit] = real(input_ids=ids, attention_mask=mask).logits
            assert calls == ([] if limit == 12 else [torch.bfloat16] * tiny_bert.config.num_hidden_layers)
            assert (logits[limit] - expected).abs().max() < 0.05
    assert (logits[11] - logits[12]).abs().max() < 0.02


@pytest.mark.parametrize("cpu, limit", [("AMX", 0), ("AVX-512 VNNI", 256),
                                        ("AVX2", int8.DEFAULT_EAGER_ATTENTION_MAX_TOKENS)])
def test_the_eager_attention_limit_follows_the_cpu_class(tiny_bert, monkeypatch, cpu, limit):
    monkeypatch.setattr(int8, "cpu_class", lambda: cpu)
    monkeypatch.setattr(int8, "check_int8_engine", lambda widths: None)  # builds the modules only; nothing runs
    monkeypatch.setattr(int8, "exact_widths", lambda: (CodeWidths(),))
    real = to_int8(trained(convert_bert(tiny_bert, q8bert_config())), attention_dtype=torch.bfloat16)
    limits = {m.eager_max_tokens for m in real.modules() if isinstance(m, Int8SelfAttention)}
    assert limits == {limit}


@needs_vnni
@settings(max_examples=40, deadline=None)
@given(out_scale=st.floats(1e-4, 0.5), seed=st.integers(0, 2**16))
def test_the_ffn_codes_stay_on_the_symmetric_grid_when_their_clamp_is_skipped(out_scale, seed):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (16, 32), generator=generator, dtype=torch.int8)
    w_scale = torch.full((16,), 1e-3)
    bias = torch.linspace(-2.0, 1.0, 16)  # pre-activations around GELU's minimum (at -0.75) and past it
    gemm = Int8Linear(codes, w_scale, bias, 0.01, activation="gelu", out_scale=out_scale)
    assert gemm.clamps_codes == (127 * out_scale <= -GELU_FLOOR)
    x = torch.randn(8, 32, generator=generator)
    y = gemm(x)
    assert y.dtype == torch.uint8 and int(y.min()) >= 1
    gemm.clamps_codes = True
    assert torch.equal(gemm(x), y)


def test_an_int8_gemm_refuses_a_float_output_it_cannot_write():
    codes, scale = torch.ones(4, 8, dtype=torch.int8), torch.ones(4)
    with pytest.raises(ValueError, match=r"float output is one of .* got out_dtype=torch.float16"):
        Int8Linear(codes, scale, None, 0.1, out_dtype=torch.float16)
    with pytest.raises(ValueError, match="out_dtype applies to a float output only"):
        Int8Linear(codes, scale, None, 0.1, out_scale=0.2, out_dtype=torch.bfloat16)
    if CodeWidths(8, 8) in exact_widths():
        with pytest.raises(ValueError, match="the residual add runs in float32; this GEMM's output is torch.bfloat16"):
            Int8Linear(codes, scale, None, 0.1, out_dtype=torch.bfloat16)(torch.ones(2, 8), residual=torch.ones(2, 4))


def test_bad_code_widths_or_attention_dtype_are_refused(tiny_bert):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    with pytest.raises(ValueError, match=r"inputs codes of an int8 GEMM have one of \(8, 7\) bits, got 6"):
        CodeWidths(inputs=6)
    with pytest.raises(ValueError, match="weights codes .* got 4"):
        CodeWidths(weights=4)
    with pytest.raises(TypeError, match="widths must be a qlib.deploy.int8.CodeWidths"):
        to_int8(fake, 7)
    with pytest.raises(ValueError, match="attention_dtype must be one of"):
        to_int8(fake, attention_dtype=torch.float16)


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
    grid7 = QuantGrid.from_range(-x.abs().max() * narrow, x.abs().max() * narrow, 7, symmetric=True)
    codes7 = quantize_input(x, float(grid7.scale), bits=7)
    assert torch.equal(codes7.to(torch.int16) - input_zero_point(7), grid7.quantize(x).to(torch.int16))


@needs_vnni
@pytest.mark.slow
@pytest.mark.parametrize("attention_dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_int8_model_is_one_graph_and_agrees(tiny_bert, attention_dtype):
    from qlib.deploy.int8 import CompiledInt8

    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    eager = to_int8(fake, attention_dtype=attention_dtype)
    explained = torch._dynamo.explain(eager)(input_ids=torch.randint(5, 64, (2, 8)))
    assert explained.graph_break_count == 0  # the input quantization is plain ops when compiled
    compiled = to_int8(fake, attention_dtype=attention_dtype, compile=True)
    assert isinstance(compiled, CompiledInt8)
    ids = torch.randint(5, 64, (3, 10), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    other = copy.deepcopy(fake)  # another model of the same shape, compiled beside it: each keeps its own weights
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(1.5)
    other_compiled, other_eager = (to_int8(other, attention_dtype=attention_dtype, compile=c) for c in (True, False))
    with torch.inference_mode():
        got = compiled(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(got, eager(input_ids=ids, attention_mask=mask).logits, atol=1e-3, rtol=0)
        if attention_dtype == torch.float32:
            torch.testing.assert_close(got, fake(input_ids=ids, attention_mask=mask).logits, atol=1e-3, rtol=0)
        theirs = other_compiled(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(theirs, other_eager(input_ids=ids, attention_mask=mask).logits, atol=1e-3, rtol=0)
        assert (theirs - got).abs().max() > 1e-2
        shorter = {"input_ids": ids[:2, :7], "attention_mask": mask[:2, :7]}
        shorter_logits = compiled(**shorter).logits  # a new shape: full guards, a second graph
        torch.testing.assert_close(shorter_logits, eager(**shorter).logits, atol=1e-3, rtol=0)
        # Calls seen before run with only the guards that tell the cached graphs apart: each still gets its own
        assert compiled.seen and other_compiled.seen
        for _ in range(2):
            assert torch.equal(other_compiled(input_ids=ids, attention_mask=mask).logits, theirs)
            assert torch.equal(compiled(input_ids=ids, attention_mask=mask).logits, got)
            assert torch.equal(compiled(**shorter).logits, shorter_logits)


def test_a_call_signature_names_what_the_guards_check():
    from qlib.deploy.int8 import call_signature

    ids = torch.ones(2, 8, dtype=torch.long)
    signature = call_signature((), {"input_ids": ids, "attention_mask": ids})
    assert signature == call_signature((), {"attention_mask": ids.clone(), "input_ids": torch.zeros_like(ids)})
    assert signature != call_signature((), {"input_ids": ids[:1], "attention_mask": ids[:1]})
    assert signature != call_signature((), {"input_ids": ids.int(), "attention_mask": ids})
    assert signature != call_signature((), {"input_ids": ids.t().contiguous().t(), "attention_mask": ids})
    assert signature != call_signature((), {"input_ids": ids, "attention_mask": ids, "return_dict": False})
    with torch.inference_mode():
        assert signature != call_signature((), {"input_ids": ids, "attention_mask": ids})
    assert call_signature((ids, [ids]), {}) is None  # a list: not a key, so always the full guards


@needs_vnni
@pytest.mark.slow
def test_the_autotuned_int8_model_agrees_on_inductors_own_gemm_template(tiny_bert, monkeypatch):
    import qlib.deploy.int8 as int8

    monkeypatch.setattr(int8, "AUTOTUNE_GEMM_BACKENDS", "CPP")  # the template alone: no oneDNN GEMM to fall back on
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    tuned = to_int8(fake, compile=True, autotune=True)
    assert tuned.settings["max_autotune"] and tuned.settings["max_autotune_gemm_backends"] == "CPP"
    ids = torch.randint(5, 64, (3, 10), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(tuned(input_ids=ids).logits, fake(input_ids=ids).logits, atol=1e-3, rtol=0)


def test_autotune_without_compile_is_refused(tiny_bert):
    fake = trained(convert_bert(tiny_bert, q8bert_config()))
    with pytest.raises(ValueError, match="autotune=True .* pass compile=True"):
        to_int8(fake, autotune=True)


@pytest.mark.slow
def test_compiled_input_quantization_gives_the_eager_codes():
    from qlib.deploy.int8 import float32_reciprocal

    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(2)) * 3
    scale = float(QuantGrid.from_range(-x.abs().max() * 0.5, x.abs().max() * 0.5, 8, symmetric=True).scale)
    x[0] = (torch.round(x[0] / scale) + 0.5) * scale  # exact ties, where rounding rules differ
    reciprocal = float32_reciprocal(scale)
    for bits in (8, 7):
        compiled = torch.compile(lambda t, b=bits: quantize_input(t, scale, b, reciprocal), dynamic=False,
                                 fullgraph=True)
        assert torch.equal(compiled(x), quantize_input(x, scale, bits))


@needs_vnni
def test_a_model_with_integer_nonlinearities_keeps_them_on_the_int8_kernels():
    from qlib.bert.integer_modules import IntegerGELU, IntegerLayerNorm, IntegerSoftmax, use_integer_nonlinearities

    torch.manual_seed(0)
    fake = trained(use_integer_nonlinearities(convert_bert(BertForSequenceClassification(tiny_config()),
                                                           q8bert_config())))
    real = to_int8(fake)
    kinds = {type(m) for m in real.modules()}
    assert {IntegerGELU, IntegerLayerNorm, IntegerSoftmax} <= kinds and Int8Intermediate not in kinds  # GELU unfused
    assert all(hasattr(m, "integer_softmax") for m in real.modules() if isinstance(m, Int8SelfAttention))
    ids = torch.randint(5, 64, (4, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[:2, 9:] = 0
    with torch.no_grad():
        got = real(input_ids=ids, attention_mask=mask).logits
        expected = fake(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs().max().item() < 0.05
    with pytest.raises(ValueError, match="integer softmax takes float32 scores"):
        to_int8(fake, attention_dtype=torch.bfloat16)


def test_integer_nonlinearities_skip_the_float_function_where_no_gradient_is_recorded():
    from qlib.bert.integer_modules import IntegerGELU

    gelu = IntegerGELU()
    x = torch.linspace(-4, 4, 101, requires_grad=True)
    gelu(x)  # training mode: the observer sees the range once
    gelu.eval()
    with torch.no_grad():
        inferred = gelu(x)
    trained_value = gelu(x)
    trained_value.sum().backward()
    assert torch.allclose(inferred, trained_value.detach(), atol=1e-6)  # the integer kernel's value either way
    assert torch.allclose(x.grad, torch.autograd.functional.jacobian(
        lambda t: torch.nn.functional.gelu(t).sum(), x.detach()), atol=1e-5)  # the float function's gradient
