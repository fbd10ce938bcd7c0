"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from qlib.experiments.metrics import constant_answer, glue_metrics, squad_metrics


def test_accuracy_and_f1():
    # predictions 1 1 0 0 1, labels 1 0 0 1 1: TP=2, FP=1, FN=1, TN=1 -> acc 3/5, precision = recall = 2/3
    assert glue_metrics("sst2", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == {"accuracy": pytest.approx(0.6)}
    assert glue_metrics("mrpc", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == {"f1": pytest.approx(2 / 3),
                                                                      "accuracy": pytest.approx(0.6)}


def test_matthews_correlation():
    # TP=2, FP=1, FN=1, TN=1: (2·1 - 1·1) / sqrt(3·3·2·2) = 1/6
    assert glue_metrics("cola", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])["mcc"] == pytest.approx(1 / 6)


def test_pearson_and_spearman():
    # x = 1 2 3, y = 1 2 4: Pearson = 1.5 / sqrt(1 · 2.333...) ; ranks agree -> Spearman 1
    m = glue_metrics("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert m["pearson"] == pytest.approx(1.5 / math.sqrt(7 / 3)) and m["spearman"] == pytest.approx(1.0)


def test_constant_answer_is_the_majority_class_and_zero_mcc():
    # 3 of 5 labels are 1: always answering 1 is right 3/5 of the time; MCC of a constant answer is 0.
    assert constant_answer("rte", [1, 0, 1, 1, 0]) == {"accuracy": pytest.approx(0.6)}
    assert constant_answer("rte", [0, 0, 0, 1]) == {"accuracy": pytest.approx(0.75)}  # the other class wins here
    assert constant_answer("cola", [1, 0, 1, 1, 0]) == {"mcc": 0.0}
    with pytest.raises(ValueError, match="'stsb' is a regression"):
        constant_answer("stsb", [0.5, 1.0])


def test_constant_answer_script_writes_each_tasks_floor(glue_dir, tmp_path):
    import sys
    from pathlib import Path

    from qlib.experiments.results import read_json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from constant_answer import main
    finally:
        sys.path.pop(0)
    out = tmp_path / "floor.json"
    assert main(["--tasks", "rte,cola", "--out", str(out)]) == 0
    record = read_json(out)
    # the fixture's RTE dev: 12 pairs alternating entailment / not_entailment; CoLA's: 16 sentences, half 1
    assert record["tasks"]["rte"]["label counts"] == {"entailment": 6, "not_entailment": 6}
    assert record["tasks"]["rte"]["constant answer"] == {"accuracy": pytest.approx(0.5)}
    assert record["tasks"]["cola"] | {"label counts": None} == {
        "dev examples": 16, "metric": "mcc", "label counts": None, "constant answer": {"mcc": 0.0}}
    assert record["provenance"]["git_commit"]

    from qlib.experiments.report import constant_answer_scores

    assert constant_answer_scores(out) == {"rte": pytest.approx(50.0), "cola": 0.0}  # percent of the main metric
    assert constant_answer_scores(tmp_path / "missing.json") == {}


def test_squad_exact_match_and_f1():
    # "The cat" vs "cat": normalization drops the article -> EM 1. "a black cat sat" vs "black dog":
    # tokens [black, cat, sat] vs [black, dog], 1 common -> P 1/3, R 1/2, F1 0.4; best of two references.
    m = squad_metrics(["The cat", "a black cat sat"], [["cat"], ["black dog", "white"]])
    assert m == {"exact_match": pytest.approx(0.5), "f1": pytest.approx((1 + 0.4) / 2)}


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="equally many"):
        glue_metrics("sst2", [1, 0], [1])
    with pytest.raises(ValueError, match="equally many"):
        squad_metrics([], [])


def test_report_tables_from_records():
    from qlib.experiments.report import mean_std, mean_std_text, relative_error, runs_frame

    def record(method, seed, mcc):
        return {"task": "cola", "method": method, "seed": seed, "main_metric": "mcc", "metrics": {"mcc": mcc},
                "train": {"train_examples": 10, "examples_per_s": 1.0}, "params": {"epochs": 1},
                "provenance": {"wall_time_s": 1.0}}

    runs = runs_frame([record("fp32", 0, 0.5), record("fp32", 1, 0.6), record("qat", 0, 0.44)])
    summary = mean_std(runs)
    assert summary.loc[("cola", "fp32"), "mean"] == pytest.approx(55.0)
    assert mean_std_text(summary).loc[("cola", "fp32")] == "55.00 ± 7.07 (n=2)"
    assert mean_std_text(summary).loc[("cola", "qat")] == "44.00 (n=1)"
    assert relative_error(summary).loc["cola", "qat"] == pytest.approx(20.0)  # (55 - 44) / 55


def test_paired_gaps_compare_the_same_seeds():
    from qlib.experiments.report import paired_gaps, runs_frame

    def record(task, method, seed, score):
        return {"task": task, "method": method, "seed": seed, "main_metric": "accuracy",
                "metrics": {"accuracy": score}, "train": {"train_examples": 10, "examples_per_s": 1.0},
                "params": {"epochs": 1}, "provenance": {"wall_time_s": 1.0}}

    runs = runs_frame([record("rte", "fp32", 0, 0.60), record("rte", "fp32", 1, 0.70), record("rte", "fp32", 2, 0.80),
                       record("rte", "qat", 0, 0.58), record("rte", "qat", 1, 0.66),  # seed 2 not run: no pair
                       record("sst2", "fp32", 0, 0.9)])
    gaps = paired_gaps(runs, "qat")
    assert list(gaps.index) == ["rte"]  # sst2 has no QAT run to pair with
    assert gaps.loc["rte", "pairs"] == 2
    assert gaps.loc["rte", "mean gap"] == pytest.approx(-3.0)  # (-2 + -4) / 2 points
    assert gaps.loc["rte", "gap std"] == pytest.approx(2 ** 0.5)
    assert gaps.loc["rte", "fp32 std"] == pytest.approx(10.0)
    assert gaps.loc["rte", "spread"] == pytest.approx(10.0) and gaps.loc["rte", "beyond spread"] is False
    one_seed = paired_gaps(runs[runs["seed"] == 0], "qat")
    assert one_seed.loc["rte", "mean gap"] == pytest.approx(-2.0) and one_seed.loc["rte", "beyond spread"] is None
    assert paired_gaps(runs, "dq").empty


def test_same_seeds_keeps_the_seeds_every_method_has_in_the_order_asked():
    import pandas as pd

    from qlib.experiments.report import same_seeds

    runs = pd.DataFrame({"method": ["fp32", "fp32", "fp32", "qat", "qat", "noise", "noise"],
                         "seed": [0, 1, 2, 0, 2, 2, 1], "score": [90.0, 91.0, 92.0, 89.0, 88.0, 89.5, 90.5]})
    three = same_seeds(runs, "noise", "fp32", "qat")
    assert list(three.columns) == ["noise", "fp32", "qat"] and list(three.index) == [2]
    assert three.loc[2].tolist() == [89.5, 92.0, 88.0]
    assert list(same_seeds(runs, "qat", "fp32").index) == [0, 2]
    absent = same_seeds(runs, "fp32", "dq")  # no run of one method: no seed, the columns still named
    assert absent.empty and list(absent.columns) == ["fp32", "dq"]


def test_latency_frame_reads_every_point_of_a_benchmark():
    from qlib.experiments.speed import latency_frame

    bench = {"shapes": {"packaged": {"latency": {
        "batch8-seq128": {"fp32": {"median_ms": 40.0}, "qbook_int8": {"median_ms": 10.0}},
        "batch32-seq64": {"fp32": {"median_ms": 90.0}}}}}}
    frame = latency_frame(bench).set_index(["batch", "seq", "variant"])["median ms"]
    assert frame.to_dict() == {(8, 128, "fp32"): 40.0, (8, 128, "qbook_int8"): 10.0, (32, 64, "fp32"): 90.0}


def test_baseline_over_seeds_compares_the_same_seeds():
    import pandas as pd

    from qlib.experiments.report import baseline_over_seeds

    runs = pd.DataFrame({"method": ["fp32", "fp32", "qbert", "mp", "mp"], "seed": [0, 1, 0, 0, 2],
                         "score": [20.0, 30.0, 19.0, 18.0, 17.0]})
    reference = baseline_over_seeds(runs)
    assert reference["fp32"] == 25.0 and reference["qbert"] == 20.0  # qbert has seed 0 only
    assert pd.isna(reference["mp"])  # the baseline lacks seed 2
