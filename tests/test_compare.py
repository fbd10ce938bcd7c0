"""The side-by-side table: configs read back from result records, sizes measured, drops on the same seeds; and
Quant-Noise as a Q-BERT run option."""

import json

import pandas as pd
import pytest
import torch

from qlib.bert.config import qbert_config
from qlib.bert.modules import QuantLinear
from qlib.experiments.compare import bits_of, records_by_group, side_by_side
from qlib.experiments.spec import RunSpec


def record(task, method, seed, score, **params):
    trained = params.pop("trained", "fp32" if method in ("fp32", "dq") or method.startswith("directq") else method)
    return {"task": task, "method": method, "seed": seed, "main_metric": "accuracy", "metrics": {"accuracy": score},
            "train": {"train_examples": 10, "examples_per_s": 1.0}, "provenance": {"wall_time_s": 1.0},
            "params": {"method": trained, "epochs": 1, "weight_bits": 8, "embedding_bits": 8, "groups": None,
                       "layer_bits": None, "ema_decay": None, "percentile": None, **params}}


def test_each_record_is_read_back_as_the_quantization_it_was_evaluated_with():
    def config(r):
        return RunSpec.from_record(r).quant_config()

    assert config(record("sst2", "fp32", 0, 0.9)) is None
    dq = config(record("sst2", "dq", 0, 0.9))
    assert dq.default.observer == "dynamic" and dq.default.weight.bits == 8
    direct = config(record("sst2", "directq-w3-p99.9", 0, 0.5, groups=4))
    assert (direct.default.weight.bits, direct.default.weight.groups, direct.default.weight.percentile) == (3, 4, 99.9)
    qat = config(record("sst2", "qat-ema0.99", 0, 0.9, trained="qat", ema_decay=0.99))
    assert qat.default.ema_decay == 0.99 and qat.default.weight.symmetric
    mixed = config(record("sst2", "qbert-w2e8-mp2-3", 0, 0.8, trained="qbert", weight_bits=2,
                          layer_bits={"encoder.layer.0": 3}))
    assert mixed.layer_for("encoder.layer.0.output.dense").weight.bits == 3 and mixed.default.weight.bits == 2
    noisy = config(record("sst2", "qbert-w2e8-qn0.5", 0, 0.8, trained="qbert", weight_bits=2, noise_rate=0.5))
    assert noisy.default.noise_rate == 0.5
    old = {**record("sst2", "dq", 0, 0.9), "params": {"method": "fp32", "epochs": 1}}  # an early file: no bits
    assert config(old).default.observer == "dynamic"
    assert RunSpec.from_record(old).is_post_training and not RunSpec.from_record(
        record("sst2", "fp32", 0, 0.9)).is_post_training
    assert not RunSpec.from_record(record("sst2", "qbert-w2e8", 0, 0.5, trained="qbert", weight_bits=2)
                                   ).is_post_training


def test_quant_noise_is_a_qbert_option_with_its_own_label():
    config = qbert_config(2, noise_rate=0.25, noise_block=4)
    layer = QuantLinear.from_float(torch.nn.Linear(8, 3), config.default)
    assert layer.quant.noise_rate == 0.25 and layer.quant.noise_block == 4


def test_paper_and_bits_of_each_row():
    mp = {"layer_bits": {"encoder.layer.0": 3}}
    assert [RunSpec.from_label(label, "sst2", **(mp if "-mp" in label else {})).paper
            for label in ("fp32", "dq", "qat-ema0.99", "directq-w2", "qbert-w2e8-g12-p99.9-mp2-3-ft",
                          "qbert-w2e8-qn0.1-ft", "qbert-w8e8")] == [
        "FP32", "Q8BERT (DQ)", "Q8BERT (QAT)", "Q-BERT (DirectQ)", "Q-BERT_MP", "Quant-Noise", "Q-BERT"]
    assert bits_of(None) == {"weights": "32", "weight ranges": "", "embedding": "32", "inputs": "32"}
    mixed = bits_of(qbert_config(2, 8, groups=1, layer_bits={"encoder.layer.0": 4}, percentile=99.9, noise_rate=0.5))
    assert mixed == {"weights": "2/4 MP, Quant-Noise p=0.5", "weight ranges": "asymmetric, 1 group, [0.1, 99.9] pct",
                     "embedding": "8", "inputs": "8 (EMA)"}
    ternary = RunSpec.from_label("qbert-w2e8-twn-kdh-ft", "sst2")
    assert ternary.paper == "TernaryBERT (TWN)" and bits_of(ternary.quant_config()) == {
        "weights": "2", "weight ranges": "ternary (TWN), per tensor", "embedding": "8", "inputs": "8 (EMA)"}
    assert RunSpec.from_label("qat-int", "sst2").paper == "I-BERT (integer-only)"


def test_the_beyond_chapters_rows_join_the_group_of_their_baseline_and_say_how_they_trained(tmp_path, tiny_bert):
    """``records_by_group`` takes each folder's rows whose label matches its pattern (integer-only QAT with the
    Q8BERT rows, distilled Q-BERT rows with the Q-BERT rows); a distilled row says what it learned from the
    teacher, and integer-only QAT's latency is the integer route's, not the float-nonlinearity export's."""
    teacher = "runs/checkpoints/qbert/rte/fp32-seed0.safetensors"
    files = {"q8bert": [record("rte", "fp32", 0, 0.60), record("rte", "qat", 0, 0.58)],
             "beyond": [record("rte", "qat-int", 0, 0.57, trained="qat", integer_nonlinearities=True),
                        record("rte", "qbert-w2e8-kdh-ft", 0, 0.52, trained="qbert", weight_bits=2,
                               distillation="hidden", init_from=teacher)],
             "qbert": [record("rte", "fp32", 0, 0.62)]}
    for folder, records in files.items():
        for r in records:
            path = tmp_path / folder / "rte" / f"{r['method']}-seed0.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r))
    groups = records_by_group(tmp_path, ["rte", "sst2"], {"Q8BERT": {"q8bert": "*", "beyond": "qat*"},
                                                          "Q-BERT": {"qbert": "*", "beyond": "qbert*"}})
    assert {group: sorted(r["method"] for r in rows) for group, rows in groups.items()} == {
        "Q8BERT": ["fp32", "qat", "qat-int"], "Q-BERT": ["fp32", "qbert-w2e8-kdh-ft"]}
    bench = {"shapes": {"packaged": {"latency": {"batch8-seq128": {
        "fp32": {"median_ms": 40.0}, "qbook_int8": {"median_ms": 10.0}, "qbook_int8_integer": {"median_ms": 30.0}}}}}}
    table = side_by_side(groups, tiny_bert, bench).set_index(["chapter", "method"])
    assert table.loc[("Q8BERT", "qat-int"), "CPU latency vs FP32"] == 0.75
    assert table.loc[("Q8BERT", "qat"), "CPU latency vs FP32"] == 0.25
    assert table.loc[("Q8BERT", "qat-int"), "drop vs FP32 (%)"] == pytest.approx(5.0)  # against Q8BERT's FP32: 60
    assert table.loc[("Q-BERT", "qbert-w2e8-kdh-ft"), "training"] == (
        "QAT distilled on the logits, hidden states and attention maps, 1 epoch from the FP32 Baseline")


def test_side_by_side_measures_sizes_and_pairs_each_chapter_with_its_own_fp32(tiny_bert):
    q8bert = [record("rte", "fp32", 0, 0.60), record("rte", "fp32", 1, 0.70), record("rte", "dq", 0, 0.57),
              record("rte", "dq", 1, 0.63), record("rte", "qat", 0, 0.66)]
    qbert = [record("rte", "fp32", 0, 0.50), record("rte", "directq-w2", 0, 0.25, post_training=["directq-w2"]),
             record("rte", "qbert-w4e8", 0, 0.45, trained="qbert", weight_bits=4)]
    bench = {"shapes": {"packaged": {"latency": {"batch8-seq128": {
        "fp32": {"median_ms": 40.0}, "ao_dynamic": {"median_ms": 20.0}, "qbook_int8": {"median_ms": 10.0}}}}}}
    table = side_by_side({"Q8BERT": q8bert, "Q-BERT": qbert}, tiny_bert, bench).set_index(["chapter", "method"])
    assert table.loc[("Q8BERT", "dq"), "drop vs FP32 (%)"] == pytest.approx((65 - 60) / 65 * 100)
    assert table.loc[("Q8BERT", "qat"), "drop vs FP32 (%)"] == pytest.approx((60 - 66) / 60 * 100)  # seed 0 only
    assert table.loc[("Q-BERT", "directq-w2"), "drop vs FP32 (%)"] == pytest.approx(50.0)  # its own FP32: 50
    assert table.loc[("Q8BERT", "qat"), "CPU latency vs FP32"] == 0.25
    assert table.loc[("Q8BERT", "dq"), "CPU latency vs FP32"] == 0.5
    assert pytest.approx(table.loc[("Q-BERT", "fp32"), "file vs FP32"]) == 1.0
    sizes = table["file (MB)"]
    assert sizes[("Q-BERT", "directq-w2")] < sizes[("Q-BERT", "qbert-w4e8")] < sizes[("Q8BERT", "qat")] \
        < sizes[("Q8BERT", "fp32")]  # measured files, 2 < 4 < 8 < 32 bits
    assert table.loc[("Q-BERT", "directq-w2"), "training"] == "none: quantized after FP32 fine-tuning"
    assert list(table.xs("Q-BERT")["file (MB)"]) == sorted(table.xs("Q-BERT")["file (MB)"], reverse=True)
    with pytest.raises(ValueError, match="no point packaged batch 1 seq 128"):
        side_by_side({"Q8BERT": q8bert}, tiny_bert, bench, batch=1)
    bench["shapes"]["packaged"]["latency"]["batch8-seq128"]["qbook_int8_compiled"] = {"median_ms": 8.0}
    table = side_by_side({"Q8BERT": q8bert}, tiny_bert, bench).set_index("method")
    assert table.loc["qat", "CPU latency vs FP32"] == 0.2  # the compiled route, where the run measured it


def test_pareto_keeps_the_rows_no_smaller_file_beats():
    import pandas as pd

    from qlib.experiments.compare import pareto

    table = pd.DataFrame({"task": ["a"] * 5 + ["b"], "method": ["fp32", "q8", "dq", "w4", "w2", "fp32"],
                          "file (MB)": [90.0, 23.0, 23.0, 17.0, 15.0, 90.0], "mean": [80, 79, 77, 70, 50, 60]})
    front = pareto(table)
    assert list(zip(front["task"], front["method"])) == [("a", "w2"), ("a", "w4"), ("a", "q8"), ("a", "fp32"),
                                                         ("b", "fp32")]
    worse_and_larger = pd.concat([table, pd.DataFrame({"task": ["a"], "method": ["bad"], "file (MB)": [30.0],
                                                       "mean": [60]})], ignore_index=True)
    assert "bad" not in set(pareto(worse_and_larger)["method"])


def test_one_relative_drop_formula_serves_table_2_and_the_drops():
    import pandas as pd

    from qlib.experiments.report import relative_drop, relative_error

    assert relative_drop(80.0, 76.0) == 5.0 and relative_drop(50.0, 55.0) == -10.0
    index = pd.MultiIndex.from_tuples([("a", "fp32"), ("a", "qat"), ("b", "fp32"), ("b", "qat")],
                                      names=["task", "method"])
    summary = pd.DataFrame({"mean": [80.0, 76.0, 50.0, 45.0]}, index=index)
    assert relative_error(summary)["qat"].to_dict() == {"a": 5.0, "b": 10.0}


def test_book_tables_show_a_missing_value_as_a_dash_never_nan():
    import pandas as pd

    from qlib.experiments.report import MISSING, table_html

    html = table_html(pd.DataFrame({"score": [88.5, float("nan")], "std": [None, 0.4]}, index=["qat", "dq"]))
    assert MISSING in html and "NaN" not in html and "nan" not in html.lower().replace("dataframe", "")
    verdicts = table_html(pd.DataFrame({"beyond spread": pd.Series([True, None], dtype=object), "pairs": [3, 1]}))
    assert "None" not in verdicts and verdicts.count(MISSING) == 1 and "True" in verdicts


def test_a_drop_without_fp32_on_the_rows_seeds_says_so_never_nan(tiny_bert):
    from qlib.experiments.compare import survey_table
    from qlib.experiments.papers import SURVEY_TABLE
    from qlib.experiments.report import UNPAIRED, drop_text

    assert drop_text(1.234) == "+1.23" and drop_text(-0.5, " %") == "-0.50 %" and drop_text(float("nan")) == UNPAIRED
    rows = [record("sst2", "fp32", 0, 0.80), record("sst2", "qat", 1, 0.81, trained="qat")]  # no FP32 at seed 1
    table = side_by_side({"all": rows}, tiny_bert)
    assert pd.isna(table.set_index("method").loc["qat", "drop vs FP32 (%)"])
    survey = survey_table(table, "sst2", {"Q8BERT": "qat"}, SURVEY_TABLE)
    assert survey.loc["accuracy drop vs FP32 (ours)", "Q8BERT"] == UNPAIRED


def test_the_integer_kernels_error_curves_are_the_kernels_bounds():
    from qlib.experiments.report import integer_kernel_errors

    errors = integer_kernel_errors(points=801)
    assert set(errors) == {"GELU", "exp", "softmax", "LayerNorm"} and len(errors["GELU"]) == 801
    bounds = {"GELU": 0.0185, "exp": 2.5e-3, "softmax": 6e-3, "LayerNorm": 2e-3}
    assert all(errors[name]["|error|"].max() < bound for name, bound in bounds.items())
    assert errors["GELU"]["|error|"].max() > 0.01  # the polynomial's own error, not a float copy


def test_an_ipq_row_is_measured_as_codes_and_codebooks_and_has_no_kernel(tiny_bert):
    rows = [record("sst2", "fp32", 0, 0.80),
            record("sst2", "ipq-k16-int8-ft", 0, 0.78, trained="ipq", centroids=16, centroid_bits=8,
                   init_from="runs/checkpoints/qbert/sst2/fp32-seed0.safetensors"),
            record("sst2", "qat", 0, 0.79, trained="qat")]
    bench = {"shapes": {"packaged": {"latency": {"batch8-seq128": {
        "fp32": {"median_ms": 40.0}, "qbook_int8": {"median_ms": 10.0}}}}}}
    table = side_by_side({"Q-BERT": rows}, tiny_bert, bench).set_index("method")
    ipq = table.loc["ipq-k16-int8-ft"]
    assert ipq["paper"] == "Quant-Noise (iPQ)" and ipq["weights"] == "iPQ, k = 16, 8-bit centroids"
    assert ipq["file (MB)"] < table.loc["qat", "file (MB)"]  # one byte per block of 4-8 weights, and codebooks
    assert pd.isna(ipq["CPU latency vs FP32"]) and ipq["training"].startswith("iPQ stages")


def test_the_survey_table_puts_each_papers_headline_row_beside_the_surveys_entries(tiny_bert):
    from qlib.experiments.compare import SURVEY_COLUMNS, survey_table
    from qlib.experiments.papers import SURVEY_TABLE

    noisy = "ipq-k16-int8-qn0.2-ft"
    rows = [record("sst2", "fp32", 0, 0.80), record("sst2", "fp32", 1, 0.82),
            record("sst2", noisy, 0, 0.76, trained="ipq", centroids=16, centroid_bits=8, noise_rate=0.2,
                   init_from="runs/checkpoints/qbert/sst2/fp32-seed0.safetensors"),
            record("sst2", "qat", 0, 0.79, trained="qat"), record("sst2", "qat", 1, 0.81, trained="qat")]
    bench = {"shapes": {"packaged": {"latency": {"batch8-seq128": {
        "fp32": {"median_ms": 40.0}, "qbook_int8": {"median_ms": 10.0}}}}}}
    table = side_by_side({"all": rows}, tiny_bert, bench)
    assert table.set_index("method").loc[noisy, "weights"] == "iPQ, k = 16, 8-bit centroids, PQ noise p=0.2 first"
    assert table.set_index("method").loc[noisy, "training"].startswith("PQ noise, then iPQ stages")
    survey = survey_table(table, "sst2", {"Q8BERT": "qat", "Q-BERT": "qbert-w2e8-g12-p99.9-mp2-3-ft",
                                          "Quant-Noise": noisy}, SURVEY_TABLE)
    assert list(survey.columns) == ["Q8BERT", "Q-BERT", "Quant-Noise"]
    assert survey.loc["CPU time vs FP32 (ours)", "Q8BERT"] == "0.25×" and survey.loc["seeds (ours)", "Q8BERT"] == 2
    assert survey.loc["accuracy drop vs FP32 (ours)", "Q8BERT"] == "+1.23 %"  # (81 - 80) / 81
    assert survey.loc["CPU time vs FP32 (ours)", "Quant-Noise"] == "decoded"
    assert float(survey.loc["memory vs FP32 (ours)", "Quant-Noise"].rstrip(" %")) < float(
        survey.loc["memory vs FP32 (ours)", "Q8BERT"].rstrip(" %"))
    assert survey.loc["memory vs FP32 (ours)", "Q-BERT"] == "not run yet" and survey.loc["seeds (ours)", "Q-BERT"] == 0
    assert [survey.loc[f"{c} (survey)", "Quant-Noise"] for c in SURVEY_COLUMNS] == ["5 %", "N/A", "worse"]
