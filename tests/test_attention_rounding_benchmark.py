"""benchmarks/attention_rounding.py on a tiny model: each rounding keeps a value within its format's step, the float32
pair keeps the fake-quantized model's logits where int8 inputs move them, and a run writes every pair with
its provenance. Accuracy only: no timing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlib.experiments.results import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import attention_rounding  # noqa: E402

sys.path.pop(0)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40))
def test_each_rounding_stays_within_its_formats_step(values):
    x = torch.tensor(values)
    assert torch.equal(attention_rounding.rounded(x, "float32"), x)
    bf16 = attention_rounding.rounded(x, "bfloat16")
    assert bf16.dtype == torch.float32 and torch.all((bf16 - x).abs() <= x.abs() * 2.0 ** -8)  # half of 2^-7 ulp
    step = x.abs().max() / 127
    int8 = attention_rounding.rounded(x, "int8")
    assert torch.all((int8 - x).abs() <= step / 2 * (1 + 1e-5) + 1e-30)
    assert len(torch.unique(torch.round(int8 / step) if step > 0 else int8)) <= 255
    p = x.abs()
    assert len(torch.unique(attention_rounding.rounded(p, "int8", nonnegative=True))) <= 256


def test_an_unknown_rounding_is_refused_by_name():
    with pytest.raises(ValueError, match="float32.*'float16'"):
        attention_rounding.rounded(torch.ones(2), "float16")


@pytest.mark.slow
def test_a_run_scores_every_pair_and_only_float32_products_keep_the_fake_quantized_logits(glue_dir, tiny_model_dir,
                                                                                          tmp_path):
    from qlib.deploy.int8 import CodeWidths, exact_widths
    from qlib.experiments.experiment import run_glue
    from qlib.experiments.speed import attention_rounding_table, rounding_drift_line

    if not exact_widths():
        pytest.skip("no exact int8 route on this CPU")
    run_glue("sst2", "qat", 0, str(tiny_model_dir), epochs=1, max_train_examples=8, results_dir=tmp_path / "results",
             checkpoint_dir=tmp_path / "kept", device="cpu", progress=False)
    out = tmp_path / "rounding.json"
    assert attention_rounding.main(["--checkpoint", str(tmp_path / "kept" / "sst2" / "qat-seed0.safetensors"),
                                    "--model", str(tiny_model_dir), "--threads", "1", "--out", str(out)]) == 0
    report = read_json(out)
    table, records = attention_rounding_table([out])
    pairs = {(s, v) for s in attention_rounding.ROUNDINGS for v in attention_rounding.ROUNDINGS}
    assert pairs <= set(table.index) and records[0]["checkpoint"] == "qat-seed0.safetensors"
    drift = table.xs("mean |Δlogit|", axis=1, level=1).iloc[:, 0]
    if exact_widths()[0] == CodeWidths():  # 8-bit codes: the float32 pair is the fake-quantized model's arithmetic
        assert drift[("float32", "float32")] < drift[("int8", "int8")] / 100  # (7-bit codes move it by themselves)
    assert rounding_drift_line(table).startswith("* qat-seed0.safetensors")
    assert report["provenance"]["git_commit"] and report["checkpoint"] == "qat-seed0.safetensors"
