"""benchmarks/peer_accuracy.py on a tiny model: each peer built as the speed benchmark builds it is scored on the dev
set beside the FP32 model it quantizes, a peer missing here is reported as skipped, and bad options are refused by
name. Accuracy only: no timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import write_run

from qlib.deploy.checkpoint import save_float
from qlib.experiments.data import load_glue
from qlib.experiments.models import load_classifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peer_accuracy  # noqa: E402

sys.path.pop(0)


@pytest.mark.slow
def test_a_run_scores_each_peer_against_the_fp32_model(glue_dir, tiny_model_dir, tmp_path):
    model, _ = load_classifier(str(tiny_model_dir), 2)
    checkpoint = save_float(model, tmp_path / "fp32-seed0.safetensors")
    out = tmp_path / "peers.json"
    peers = ["ao_dynamic", "ort_int8", "ort_qdq_static", "ort_qdq_static_all_ops", "openvino_int8"]
    assert peer_accuracy.main(["--checkpoint", str(checkpoint), "--model", str(tiny_model_dir), "--threads", "1",
                               "--max-length", "16", "--calibration-batches", "1", "--peers", ",".join(peers),
                               "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["peers"]) == set(peers) and report["checkpoint"] == "fp32-seed0.safetensors"
    dynamic = report["peers"]["ao_dynamic"]  # torch.ao's int8 runs everywhere: weights within half a step
    assert dynamic["max_abs_logit_diff"] < 0.1 and dynamic["same_prediction"] > 0.5
    assert report["examples"] == len(load_glue("sst2", "dev"))
    for name in peers:
        peer = report["peers"][name]
        assert "skipped" in peer and "not installed" in peer["skipped"] or 0 <= peer["same_prediction"] <= 1
    assert report["provenance"]["data"]["files"] and report["params"]["checkpoint"] == "fp32-seed0.safetensors"
    from qlib.experiments.speed import QAT_ROW, peer_accuracy_lines, peer_accuracy_table, peer_calibration_line

    table, records = peer_accuracy_table([out])
    ran = [name for name in peers if "scores" in report["peers"][name]]
    assert list(table.index) == ["FP32", *ran] and records[0]["checkpoint"] == "fp32-seed0.safetensors"
    run = table.columns.levels[0][0]
    assert run.startswith("fp32-seed0.safetensors, ")
    accuracy = 100 * dynamic["scores"]["accuracy"] - 100 * report["fp32_scores"]["accuracy"]
    assert table.loc["ao_dynamic", (run, "vs FP32 (points)")] == pytest.approx(accuracy)
    assert table.loc["ao_dynamic", (run, "flips %")] == pytest.approx(100 * (1 - dynamic["same_prediction"]))
    qat = tmp_path / "q8bert"  # the Q8BERT rows of the seed: its QAT row joins where its FP32 row is this model's

    def official(path):  # as on the official files: the run records its data
        record = json.loads(path.read_text())
        record["provenance"]["data"] = {"source": "local", "folder": "data", "files": {}}
        path.write_text(json.dumps(record))

    official(write_run(qat, "sst2", "qat", 0, 0.75))
    official(write_run(qat, "sst2", "fp32", 0, report["fp32_scores"]["accuracy"] + 0.01))
    assert QAT_ROW not in peer_accuracy_table([out], qat_results=qat)[0].index  # another FP32 model: no row
    write_run(qat, "sst2", "fp32", 0, report["fp32_scores"]["accuracy"])
    assert QAT_ROW not in peer_accuracy_table([out], qat_results=qat)[0].index  # a row on the altered copy: none
    official(qat / "sst2" / "fp32-seed0.json")
    with_qat = peer_accuracy_table([out], qat_results=qat)[0]
    fp32 = 100 * report["fp32_scores"]["accuracy"]
    assert with_qat.loc[QAT_ROW, (run, "vs FP32 (points)")] == pytest.approx(75 - fp32)
    calibration = report["params"]["calibration_batches"]
    assert f"fp32-seed0.safetensors: {calibration} batch(es) drawn with seed 0" in peer_calibration_line(records)
    assert peer_calibration_line([]) is None
    lines = peer_accuracy_lines(table).splitlines()
    assert len(lines) == len(ran) and lines[0] == f"* `ao_dynamic`: {accuracy:+.2f} points from FP32 on average " \
        f"over 1 model(s) ({accuracy:+.2f} to {accuracy:+.2f})"


def test_unknown_peers_and_empty_calibration_are_refused_by_name(capsys):
    for argv, message in ((["--peers", "tensorrt"], "unknown peer(s) ['tensorrt']; allowed: ['ao_dynamic'"),
                          (["--calibration-batches", "0"], "--calibration-batches must be at least 1, got 0")):
        with pytest.raises(SystemExit):
            peer_accuracy.main(["--checkpoint", "x.safetensors", *argv])
        assert message in capsys.readouterr().err
