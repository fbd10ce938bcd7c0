"""benchmarks/pq_robustness.py on a tiny model: each arm's float score, then its score after each iPQ stage with no
fine-tuning; only the two trained arms train; the checkpoint is named by file; bad input is refused; the Quant-Noise
chapter's table reads the run back (``noise_robustness``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import write_run
from transformers import BertForSequenceClassification

from qlib.bert.pq_modules import IPQ_STAGES
from qlib.deploy.checkpoint import save_float
from qlib.experiments.protocol import ROBUSTNESS_ARMS, WITH_NOISE_ARM, WITHOUT_NOISE_ARM
from qlib.experiments.quant_noise_tables import noise_robustness
from qlib.experiments.results import read_json, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pq_robustness  # noqa: E402

sys.path.pop(0)


@pytest.mark.slow
def test_each_arm_is_scored_as_float_and_after_each_stage_without_fine_tuning(glue_dir, tiny_model_dir, tmp_path):
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    checkpoint = save_float(model, tmp_path / "fp32.safetensors")
    out = tmp_path / "results" / "benchmarks" / "pq_robustness-sst2-seed1-amx-2026-12-06T1200.json"
    assert pq_robustness.main(["--checkpoint", str(checkpoint), "--model", str(tiny_model_dir), "--seed", "1",
                               "--max-train-examples", "16", "--centroids", "8", "--threads", "1",
                               "--out", str(out)]) == 0
    report = read_json(out)
    assert report["arms"] == list(ROBUSTNESS_ARMS) and report["stages"] == list(IPQ_STAGES)
    assert set(report["scores"]) == set(ROBUSTNESS_ARMS)
    for scores in report["scores"].values():
        assert set(scores) == {"float", *IPQ_STAGES}
        assert all(0 <= value <= 100 for value in scores.values())
    assert set(report["training"]) == {WITHOUT_NOISE_ARM, WITH_NOISE_ARM}  # the baseline arm trains nothing
    assert all(run["examples"] == 16 for run in report["training"].values())
    assert report["spec"]["noise_rate"] == 0.2 and report["spec"]["centroid_bits"] == 8 and report["seed"] == 1
    assert str(tmp_path) not in report["spec"]["init_from"] and report["checkpoint"] == "fp32.safetensors"
    assert report["ipq_rows"] == {"baseline": "ipq-k8-int8-ft", "trained again with PQ noise": "ipq-k8-int8-qn0.2-ft"}
    assert report["provenance"]["data"]

    # the chapter's table: one row per arm, the cost of quantizing without fine-tuning, the iPQ row it starts
    write_run(tmp_path / "results" / "quant-noise", "sst2", "ipq-k8-int8-ft", 1, 0.75, trained="ipq", centroids=8,
              centroid_bits=8, init_from="runs/checkpoints/qbert/sst2/fp32-seed1.safetensors")
    table, lines, notes = noise_robustness("sst2", tmp_path / "results")
    assert list(table.index) == [(1, "Baseline"), (1, "no noise"), (1, "PQ noise")]  # the short labels
    baseline = report["scores"]["baseline"]
    assert table.loc[(1, "Baseline"), "PQ cost"] == pytest.approx(
        round(baseline["float"] - baseline["attention"], 2))
    assert table.loc[(1, "Baseline"), "float"] == pytest.approx(round(baseline["float"], 2))
    assert table.loc[(1, "Baseline"), "iPQ row"] == 75.0
    assert table["iPQ row"].isna().sum() == 2  # the noisy row is not committed; no row for the other
    assert lines.startswith("* Seed 1 (`pq_robustness-sst2-seed1-amx-2026-12-06T1200.json`): product-quantizing")
    cost = {arm: scores["float"] - scores["attention"] for arm, scores in report["scores"].items()}
    spared = cost[WITHOUT_NOISE_ARM] - cost[WITH_NOISE_ARM]
    assert (f"the noise spares {spared:.2f} of" if spared > 0 else "the noise spares nothing") in lines
    assert "differ by" not in lines  # only one of the two iPQ rows is committed
    write_run(tmp_path / "results" / "quant-noise", "sst2", "ipq-k8-int8-qn0.2-ft", 1, 0.8, trained="ipq", centroids=8,
              centroid_bits=8, noise_rate=0.2, init_from="runs/checkpoints/qbert/sst2/fp32-seed1.safetensors")
    _, lines, _ = noise_robustness("sst2", tmp_path / "results")
    assert lines.endswith("the iPQ rows from the Baseline and from the noisy model differ by +5.00 points.")
    assert notes == ""  # no notes.toml beside these results


@pytest.mark.parametrize("arguments, message", [
    (["--noise-rate", "1"], "--noise-rate must lie strictly between 0 and 1"),
    (["--checkpoint", "missing.safetensors"], "is not a file"),
])
def test_bad_input_is_refused_naming_it(tmp_path, capsys, arguments, message):
    checkpoint = tmp_path / "fp32.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit):
        pq_robustness.main(["--checkpoint", str(checkpoint), *arguments])
    assert message in capsys.readouterr().err


def test_the_chapter_says_when_no_run_is_committed(tmp_path):
    assert noise_robustness("sst2", tmp_path) == [
        f"*No run of `benchmarks/pq_robustness.py` on sst2 committed yet "
        f"(`{tmp_path / 'benchmarks'}/pq_robustness-sst2-seed<n>-*.json`).*"]


def test_a_run_of_other_models_is_refused_naming_them(tmp_path):
    path = tmp_path / "benchmarks" / "pq_robustness-sst2-seed0-amx-2026-12-06T1200.json"
    write_json(path, {"seed": 0, "arms": ["baseline", "trained twice"]})
    with pytest.raises(ValueError, match=r"scores the models \['baseline', 'trained twice'\]; the table reads"):
        noise_robustness("sst2", tmp_path)


@pytest.mark.parametrize("without, noisy, clause", [
    (20.0, 5.0, ": the noise spares 15.00 of the 20.00 points PQ costs the model trained again without it"),
    (5.0, 7.5, ": the noise spares nothing (PQ costs the noisy model 2.50 points more)"),
])
def test_the_line_says_how_much_of_pqs_cost_the_noise_spares(without, noisy, clause):
    from qlib.experiments.quant_noise_tables import _what_the_noise_spares

    costs = {"baseline": 30.0, "trained again without noise": without, "trained again with PQ noise": noisy}
    assert _what_the_noise_spares(costs, {"baseline": None, "trained again with PQ noise": 80.0}) == clause
