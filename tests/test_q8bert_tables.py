"""The Q8BERT chapter's Table 2 and EMA ablation from result files: relative errors, the within-1 % verdict, the
paired gaps read as where 8-bit's cost comes from, and the first batch's weight in the EMA."""

from __future__ import annotations

import pytest
from conftest import write_run

from qlib.experiments.q8bert_tables import ema_ablation, first_batch_weights, protocol_table, table1, table2
from qlib.experiments.report import mean_std, runs_frame
from qlib.experiments.results import read_results


@pytest.fixture
def results(tmp_path):
    for seed, (fp32, qat, dq) in enumerate(((0.90, 0.85, 0.895), (0.88, 0.83, 0.875))):
        write_run(tmp_path, "sst2", "fp32", seed, fp32)
        write_run(tmp_path, "sst2", "qat", seed, qat, trained="qat", ema_decay=None)
        write_run(tmp_path, "sst2", "dq", seed, dq)
    return tmp_path


def test_table2_says_qat_loses_beyond_the_spread_and_dq_does_not(results):
    runs = runs_frame(read_results(results))
    parts = table2(runs, mean_std(runs))
    table = parts[0]
    assert table.loc["sst2", "ours QAT"] == pytest.approx((89 - 84) / 89 * 100, abs=0.01)
    assert table.loc["sst2", "ours DQ"] == pytest.approx((89 - 88.5) / 89 * 100, abs=0.01)
    assert table.loc["sst2", "paper QAT"] > 0  # the paper's own Table 1 gives it
    assert parts[1] == f"QAT within 1 % relative of FP32: **sst2**: no (+{(89 - 84) / 89 * 100:.2f} %)"
    assert parts[-1] == ("* **sst2**: QAT larger than the seed-to-seed spread; DQ within the seed-to-seed spread — the "
                         "cost comes from training with static input ranges, not from 8-bit precision.")
    assert table2(runs[runs["method"] != "qat"], mean_std(runs)) == []
    write_run(results, "rte", "fp32", 0, 0.58)  # a task whose QAT has not run yet: said so, no NaN verdict
    write_run(results, "rte", "dq", 0, 0.54)
    runs = runs_frame(read_results(results))
    assert table2(runs, mean_std(runs))[1].endswith("no (+5.62 %); QAT not run yet: rte")
    write_run(results, "squad", "qat", 0, 0.57)  # and one whose FP32 has not: said so too
    runs = runs_frame(read_results(results))
    assert table2(runs, mean_std(runs))[1].endswith("no (+5.62 %); QAT not run yet: rte; FP32 not run yet: squad")


def test_the_ema_ablation_waits_for_its_runs_then_compares_each_decay(results):
    records = read_results(results)
    runs = runs_frame(records)
    weights = first_batch_weights(records, decay=0.5)
    steps = records[0]["train"]["steps"]
    assert weights["steps n"].tolist() == [steps, steps]
    assert weights["first batch's weight d^(n-1)"].iloc[0] == round(0.5 ** (steps - 1), 3)
    waiting = ema_ablation(records, runs, mean_std(runs))
    assert len(waiting) == 2 and waiting[1].startswith("*The ablation with a shorter EMA")
    for seed, score in enumerate((0.89, 0.87)):
        write_run(results, "sst2", "qat-ema0.99", seed, score, trained="qat", ema_decay=0.99)
    records = read_results(results)
    runs = runs_frame(records)
    parts = ema_ablation(records, runs, mean_std(runs))
    assert parts[-1].startswith("* **sst2** (2 paired seeds): QAT − FP32 -5.00 points with Q8BERT's decay, -1.00 "
                                "with `qat-ema0.99` (+4.00 ± 0.00 against QAT on the same seeds)")


def test_table1_puts_each_method_beside_the_paper_and_names_the_tasks_not_run(results):
    parts = table1(read_results(results), ("sst2", "rte"), {"sst2": 50.9})
    table = parts[0]
    assert table.loc["sst2", "ours FP32"] == "89.00 ± 1.41 (n=2)" and table.loc["rte", "ours QAT"] == "not run"
    assert table.loc["sst2", "paper FP32"] > 90 and table.loc["sst2", "metric"] == "accuracy"
    assert table.loc["sst2", "constant answer"] == 50.9 and table.loc["rte", "constant answer"] == "–"
    assert parts[1] == ""  # no result here is noted as computed on the altered copy (data_caveat)
    assert parts[2] == "*Not yet run on the CPU protocol: rte* (see *Reproducing*)."
    assert "constant answer" not in table1(read_results(results), ("sst2",), {})[0].columns
    assert table1([], ("sst2",), {}) == []


def test_the_protocol_table_lists_each_method_once_with_its_seeds_and_best_speed(results):
    table, speed_words, notes, hours = protocol_table(read_results(results))
    assert list(table.index) == [("sst2", m, "cpu") for m in ("fp32", "qat")]  # DQ trains nothing: not a row
    assert table.loc[("sst2", "fp32", "cpu"), "seeds"] == "0,1"
    assert speed_words.startswith("Throughput is the best") and hours.startswith("Total wall time of these runs: **")
    assert protocol_table([]) == []
