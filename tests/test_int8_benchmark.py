"""benchmarks/int8_cpu.py's machinery on a tiny model: every variant that can run here builds and agrees with the
models it should, one that cannot is skipped with why, and the CPU's limits are measured. Not timed: speed is
the benchmark's to print, on a quiet CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, write_run
from transformers import BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import int8_cpu  # noqa: E402

sys.path.pop(0)


def tiny_inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 64, (batch, seq), generator=torch.Generator().manual_seed(batch * 100 + seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(int8_cpu, "inputs", tiny_inputs)  # the calibration batches use the tiny vocabulary too
    monkeypatch.setattr(int8_cpu, "CALIBRATION", ((2, 16), (3, 8)))  # and its 64 positions
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config()).eval()
    return int8_cpu.Setup(model, tiny_inputs(1, 16), tmp_path)


def test_torch_variants_build_and_agree(setup):
    names = ["fp32", "ao_dynamic", "qbook_int8", "qbook_int8_compiled", "qbook_int8_autotuned"]
    runs, skipped = int8_cpu.variants(setup, names)
    assert set(runs) | set(skipped) == set(names)
    agreement = int8_cpu.agreement(runs, setup, tiny_inputs(4, 16))
    assert agreement["fp32"]["max_abs_diff_vs_fp32"] == 0.0
    if "qbook_int8" in runs:
        assert agreement["qbook_int8"]["max_abs_diff_vs_fake_quantized"] < 0.05
        assert agreement["qbook_int8_compiled"]["max_abs_diff_vs_fake_quantized"] < 0.05
        assert agreement["qbook_int8_autotuned"]["max_abs_diff_vs_fake_quantized"] < 0.05
        assert setup.settings["qbook_int8_autotuned_attention"] == ("bfloat16" if int8_cpu.has_bf16() else "float32")
        assert setup.sizes["qbook_int8_safetensors"] < setup.sizes["fp32_safetensors"]


@pytest.mark.slow
def test_the_profile_sees_the_kernels_of_eager_and_compiled_qbook_int8(setup):
    runs, skipped = int8_cpu.variants(setup, ["fp32", "qbook_int8", "qbook_int8_compiled", "qbook_int8_autotuned"])
    if "qbook_int8" not in runs:
        pytest.skip(f"no exact int8 route on this CPU: {skipped}")
    profiled = int8_cpu.profile(runs, tiny_inputs(2, 16), setup, rounds=2)
    for name in runs:  # Inductor's compiled kernels too, each in its group (not all left in "rest")
        groups = profiled[name]
        assert groups["GEMM"] > 0 and groups["LayerNorm"] > 0, (name, groups)
        assert groups["total"] == pytest.approx(sum(v for k, v in groups.items() if k != "total"))
    assert profiled["fp32"]["input quantization"] == 0
    assert profiled["qbook_int8"]["input quantization"] > 0 and profiled["qbook_int8_compiled"]["attention"] > 0
    assert int8_cpu.profile_group("cpp_fused__to_copy_add_clamp_mul_native_layer_norm_round_view_8") == "LayerNorm"
    assert int8_cpu.profile_group("cpp_fused__to_copy_add_clamp_mul_round_transpose_view_9") == "input quantization"
    assert int8_cpu.profile_group("aoti_torch_cpu__qlinear_pointwise_tensor") == "GEMM"


def test_onnx_variants_build_and_the_qdq_export_agrees_with_the_fake_quantized_model(setup):
    pytest.importorskip("onnxruntime")
    runs, skipped = int8_cpu.variants(setup, ["ort_int8", "ort_qdq_static", "qbook_qdq_ort"])
    assert set(runs) == {"ort_int8", "ort_qdq_static", "qbook_qdq_ort"}, skipped
    agreement = int8_cpu.agreement(runs, setup, tiny_inputs(4, 16))
    assert agreement["qbook_qdq_ort"]["max_abs_diff_vs_fake_quantized"] < 1e-3
    assert agreement["qbook_qdq_ort"]["same_class_vs_fake_quantized"] == 1.0
    # ONNX Runtime's static int8 quantizes around the GEMMs only: not the attention mask's path (Where, Softmax), whose
    # padded positions (the float minimum) would leave a MinMax range no resolution for the scores
    import onnx

    graph = onnx.load(str(setup.folder / "model.qdq.onnx")).graph
    readers = {name: node.op_type for node in graph.node for name in node.input}
    readers |= {output.name: "output" for output in graph.output}
    kinds = {readers[node.output[0]] for node in graph.node if node.op_type == "DequantizeLinear"}
    assert "MatMul" in kinds and not kinds & {"Where", "Softmax", "LayerNormalization", "Gelu"}, kinds


def test_a_variant_that_cannot_run_is_skipped_with_why(setup, monkeypatch):
    monkeypatch.setattr(int8_cpu, "has_bf16", lambda: False)

    def broken(_):
        raise OSError("engine exploded")

    monkeypatch.setitem(int8_cpu.VARIANTS, "ao_dynamic", broken)
    runs, skipped = int8_cpu.variants(setup, ["fp32", "torch_bf16", "ao_dynamic"])
    assert list(runs) == ["fp32"]
    assert skipped == {"torch_bf16": "this CPU has neither AVX-512 BF16 nor AMX",
                       "ao_dynamic": "failed to build: OSError: engine exploded"}


def test_measure_times_every_variant_once_a_round_in_a_random_order_with_a_host_probe_before_each_call():
    calls = []
    runs = {name: (lambda batch, name=name: calls.append(name)) for name in "abcd"}
    timing = int8_cpu.measure(runs, {}, repeats=7, warmup=1, pause=0.0, seed=3)
    assert set(timing) == set(runs)
    for t in timing.values():
        assert len(t["runs_ms"]) == len(t["probe_ms"]) == 7 and all(p > 0 for p in t["probe_ms"])
    rounds = [tuple(calls[i:i + 4]) for i in range(0, len(calls), 4)]
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1  # not one fixed order
    calls.clear()
    int8_cpu.measure(runs, {}, repeats=7, warmup=1, pause=0.0, seed=3)
    assert [tuple(calls[i:i + 4]) for i in range(0, len(calls), 4)] == rounds  # the seed fixes the orders


def test_the_cpu_limits_are_measured():
    peaks = int8_cpu.gemm_peaks(m=64, k=128, n=128, repeats=3)
    assert peaks["fp32_gemm_gops"] > 0 and peaks.get("int8_gemm_gops", 1) > 0 and peaks["gemm_shape"] == [64, 128, 128]


def test_a_benchmark_writes_a_new_file_named_after_the_cpu_class_never_over_one(tmp_path, monkeypatch):
    from datetime import datetime

    from qlib.experiments import results

    class Fixed(datetime):  # one UTC minute for the whole test
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 3, 23, 30, tzinfo=tz)

    monkeypatch.setattr(results, "datetime", Fixed)
    monkeypatch.setattr(results, "cpu_class", lambda: "AMX")
    path = results.benchmark_path("int8_agreement-sst2", tmp_path)
    assert path == tmp_path / "int8_agreement-sst2-amx-2026-12-03T2330.json"
    monkeypatch.setattr(results, "cpu_class", lambda: "")
    assert results.benchmark_path("int8_cpu", tmp_path).name.startswith("int8_cpu-other-")
    taken = results.benchmark_path("ipq_decode", tmp_path)
    taken.write_text("{}")
    with pytest.raises(FileExistsError, match="written once"):
        results.benchmark_path("ipq_decode", tmp_path)


@pytest.mark.slow
def test_a_run_profiles_each_profile_batch_and_the_speed_chapter_reads_them(tmp_path, monkeypatch):
    from qlib.experiments.speed import batch_and_seq, point_name, profile_at

    monkeypatch.setattr(int8_cpu, "inputs", tiny_inputs)
    monkeypatch.setattr(int8_cpu, "CALIBRATION", ((2, 16), (3, 8)))
    tiny = lambda: BertForSequenceClassification(tiny_config()).eval()  # noqa: E731
    monkeypatch.setattr(int8_cpu, "bert_base", tiny)
    monkeypatch.setattr(int8_cpu, "packaged", tiny)
    out = tmp_path / "run.json"
    assert int8_cpu.main(["--variants", "fp32", "--batches", "2", "--seq", "16", "--sweep-batches", "--repeats", "7",
                          "--warmup", "1", "--pause", "0", "--profile-batches", "2", "1", "--out", str(out)]) == 0
    run = json.loads(out.read_text())
    assert list(run["shapes"]["bert-base"]["profile_ms_at"]) == [point_name(1, 16)]
    assert batch_and_seq(point_name(1, 16)) == (1, 16)
    for batch in (2, 1):
        assert profile_at(run, batch, 16)["fp32"]["GEMM"] > 0
    assert profile_at(run, 2, 16) is run["shapes"]["bert-base"]["profile_ms"]


def test_the_verdicts_printed_give_the_rounds_spread_and_say_when_it_straddles_the_target(capsys):
    timing = {"qbook_int8": {"median_ms": 10.0, "runs_ms": [10.0, 10.0, 10.0]},
              "openvino_int8": {"median_ms": 9.5, "runs_ms": [9.0, 9.5, 10.5]},
              "torch_bf16": {"median_ms": 20.0, "runs_ms": [20.0, 20.0, 20.0]}}
    int8_cpu.print_verdicts("AMX", timing)
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "qbook_int8 vs openvino_int8: 0.95x (rounds 0.90-1.05x) (MISSES the 1.0x target on AMX; not settled: " \
           "rounds on both sides)" in lines
    assert "qbook_int8 vs torch_bf16: 2.00x (rounds 2.00-2.00x) (meets the 1.5x target on AMX)" in lines


def test_openvino_int8_is_profiled_by_its_own_counters(setup):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    runs, skipped = int8_cpu.variants(setup, ["openvino_int8"])
    assert set(runs) == {"openvino_int8"}, skipped
    profiled = int8_cpu.openvino_profile("openvino_int8", setup, tiny_inputs(2, 16), rounds=2)
    groups = profiled["groups"]
    assert set(groups) == {*int8_cpu.OPENVINO_GROUPS, "rest", "total"} and groups["GEMM"] > 0
    assert groups["total"] == pytest.approx(sum(v for k, v in groups.items() if k != "total"))
    assert groups["total"] == pytest.approx(sum(profiled["by_node"].values()))
    assert any(node.startswith("FullyConnected") for node in profiled["by_node"])  # e.g. "FullyConnected (brgemm…)"
    groups, tables = int8_cpu.profile_all(runs, setup, tiny_inputs(1, 16), setup.folder)  # what a profiled batch keeps
    assert set(groups) == {"openvino_int8"} and set(tables) == {"openvino_profile_by_node_ms"}
    assert groups["openvino_int8"]["GEMM"] > 0


@pytest.mark.slow
def test_the_agreement_benchmark_runs_the_integer_route_and_skips_what_it_refuses(glue_dir, tiny_model_dir, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import int8_agreement

    sys.path.pop(0)
    out = tmp_path / "agreement.json"
    assert int8_agreement.main(["--train-examples", "8", "--integer-nonlinearities", "--model", str(tiny_model_dir),
                                "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["nonlinearities"] == "integer (I-BERT)" and report["trained"]["method"] == "qat-int"
    assert "must be torch.float32" in report["routes"]["int8_bf16_attention"]["skipped"]  # refused, saying why
    ran = [r for r in report["routes"].values() if "scores" in r]
    assert ran and all(0 <= r["same_prediction"] <= 1 and r["max_abs_logit_diff"] >= 0 for r in ran)
    from qlib.experiments.speed import int8_agreement_table

    table, _ = int8_agreement_table([out])
    assert all("integer GELU/softmax/LayerNorm" in run for run, _ in table.index)


@pytest.mark.slow
def test_the_agreement_benchmark_exports_a_model_trained_with_7_bit_weights_exactly(glue_dir, tiny_model_dir,
                                                                                  tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import int8_agreement

    sys.path.pop(0)
    out = tmp_path / "agreement.json"
    assert int8_agreement.main(["--train-examples", "8", "--weight-bits", "7", "--model", str(tiny_model_dir),
                                "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["weight_bits"] == 7 and report["trained"]["method"] == "qat-w7"
    # the 7-bit-weight route runs every CPU's kernels exactly, and on this model it is the model's own arithmetic
    assert report["routes"]["int8_7bit_weights"]["max_abs_logit_diff"] < 1e-4
    assert report["max_abs_logit_diff"] < 1e-4 and report["gap_points"] == 0  # whichever route this CPU takes
    from qlib.experiments.speed import int8_agreement_table

    table, records = int8_agreement_table([out])
    assert all("7-bit weights" in run for run, _ in table.index)
    from qlib.experiments.speed import seven_bit_qat_lines

    assert "Q8BERT's 8-bit QAT of that seed is not committed" in seven_bit_qat_lines(records, tmp_path / "q8bert")
    write_run(tmp_path / "q8bert", "sst2", "qat", 0, 0.625, model=str(tiny_model_dir))
    line = seven_bit_qat_lines(records, tmp_path / "q8bert")
    assert line.startswith("* QAT with 7-bit weights on 8 sst2 examples, seed 0 (")
    # the template's run trained on all 67,349 examples: the line says so instead of calling the gap the bits' cost
    assert ("Q8BERT's 8-bit QAT of that seed scores 62.50 (differs: examples 8 vs 67349); its 7-bit-weight route "
            "is 0.00 points from it") in line
    same = dict(report["trained"], method="qat", metrics={"accuracy": 0.5})  # a run of the same schedule
    (tmp_path / "q8bert" / "sst2" / "qat-seed0.json").write_text(json.dumps(same))
    line = seven_bit_qat_lines(records, tmp_path / "q8bert")
    assert "scores 50.00 (the same model, examples, epochs and lr);" in line
    second = dict(same, seed=1, metrics={"accuracy": 0.55})  # a second seed: the line gives the seeds' spread
    (tmp_path / "q8bert" / "sst2" / "qat-seed1.json").write_text(json.dumps(second))
    assert "scores 50.00 (the same model, examples, epochs and lr), over its 2 seeds 52.50 ± 3.54;" in \
        seven_bit_qat_lines(records, tmp_path / "q8bert")
    assert seven_bit_qat_lines([], tmp_path / "q8bert") is None


@pytest.mark.slow
def test_the_agreement_benchmark_names_a_kept_checkpoint_by_file_and_hash_not_by_this_machines_path(
        glue_dir, tiny_model_dir, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import int8_agreement

    sys.path.pop(0)
    from qlib.experiments.data import file_sha256
    from qlib.experiments.experiment import run_glue

    run_glue("sst2", "qat", 0, str(tiny_model_dir), epochs=1, max_train_examples=8, results_dir=tmp_path / "results",
             checkpoint_dir=tmp_path / "kept", device="cpu", progress=False)
    checkpoint = tmp_path / "kept" / "sst2" / "qat-seed0.safetensors"
    out = tmp_path / "agreement.json"
    assert int8_agreement.main(["--checkpoint", str(checkpoint), "--model", str(tiny_model_dir), "--threads", "1",
                                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["checkpoint"] == report["params"]["checkpoint"] == "qat-seed0.safetensors"
    assert report["checkpoint_sha256"] == file_sha256(checkpoint)
    assert str(tmp_path / "kept") not in out.read_text()


@pytest.mark.slow
def test_the_agreement_benchmark_scores_the_compiled_autotuned_route_on_padded_batches(glue_dir, tiny_model_dir,
                                                                                      tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import int8_agreement

    sys.path.pop(0)
    from qlib.deploy.int8 import exact_widths

    if not exact_widths():
        pytest.skip("no exact int8 route on this CPU")
    out = tmp_path / "agreement.json"
    assert int8_agreement.main(["--train-examples", "8", "--model", str(tiny_model_dir), "--threads", "1",
                                "--compiled", "--max-length", "32", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    route = report["routes"]["int8_compiled_autotuned"]
    assert route["batches"] == "padded to 32 tokens" and route["options"]["autotune"] == "True"
    assert route["max_abs_logit_diff"] < 0.05 and route["same_prediction"] > 0.9
    # the padded batches change no prediction of the fake-quantized model: padding is masked
    assert route["fake_quant_scores"] == report["scores"]["fake_quant"]
    from qlib.experiments.speed import int8_agreement_table

    table, _ = int8_agreement_table([out])
    batches = table.xs("int8_compiled_autotuned", level="route")["batches"]
    assert list(batches) == ["padded to 32 tokens"]
    assert set(table.xs("int8", level="route")["batches"]) == {"padded per batch"}
