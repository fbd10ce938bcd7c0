"""benchmarks/pq_robustness.py on a tiny model: each arm's float score, then its score after each iPQ stage with no
fine-tuning; only the two trained arms train; the checkpoint is named by file; bad input is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from transformers import BertForSequenceClassification

from qlib.bert.pq_modules import IPQ_STAGES
from qlib.deploy.checkpoint import save_float
from qlib.experiments.results import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pq_robustness  # noqa: E402

sys.path.pop(0)


@pytest.mark.slow
def test_each_arm_is_scored_as_float_and_after_each_stage_without_fine_tuning(glue_dir, tiny_model_dir, tmp_path):
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    checkpoint = save_float(model, tmp_path / "fp32.safetensors")
    out = tmp_path / "robustness.json"
    assert pq_robustness.main(["--checkpoint", str(checkpoint), "--model", str(tiny_model_dir), "--seed", "1",
                               "--max-train-examples", "16", "--centroids", "8", "--threads", "1",
                               "--out", str(out)]) == 0
    report = read_json(out)
    assert set(report["scores"]) == set(pq_robustness.ARMS)
    for scores in report["scores"].values():
        assert set(scores) == {"float", *(f"+ {stage}" for stage in IPQ_STAGES)}
        assert all(0 <= value <= 100 for value in scores.values())
    assert set(report["training"]) == set(pq_robustness.ARMS[1:])  # the baseline arm trains nothing
    assert all(run["examples"] == 16 for run in report["training"].values())
    assert report["spec"]["noise_rate"] == 0.2 and report["spec"]["centroid_bits"] == 8 and report["seed"] == 1
    assert str(tmp_path) not in report["spec"]["init_from"] and report["checkpoint"] == "fp32.safetensors"
    assert report["provenance"]["data"]


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
