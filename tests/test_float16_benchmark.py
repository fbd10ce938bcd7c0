"""benchmarks/float16_floats.py on a tiny Q-BERT run: it reproduces the run's recorded score from the kept model and
names that model by file and hash, never by this machine's path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_float16_benchmark_rescores_a_kept_model_and_names_it_by_file_and_hash(glue_dir, tiny_model_dir,
                                                                                    tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import float16_floats

    sys.path.pop(0)
    from qlib.experiments.data import file_sha256
    from qlib.experiments.experiment import run_glue

    run_glue("sst2", "qbert", 0, str(tiny_model_dir), weight_bits=3, embedding_bits=8, groups=2, epochs=1,
             max_train_examples=8, results_dir=tmp_path / "results", checkpoint_dir=tmp_path / "kept", device="cpu",
             progress=False)
    [result] = (tmp_path / "results").rglob("*.json")
    [checkpoint] = (tmp_path / "kept").rglob("*.safetensors")
    out = tmp_path / "float16.json"
    assert float16_floats.main(["--result", str(result), "--checkpoint", str(checkpoint), "--threads", "1",
                                "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["scores"]["float32"][report["metric"]] == pytest.approx(report["recorded_score"])  # the same model
    assert report["checkpoint"] == report["params"]["checkpoint"] == checkpoint.name
    assert report["checkpoint_sha256"] == file_sha256(checkpoint)
    assert str(tmp_path / "kept") not in out.read_text()
    assert report["sizes_bytes"]["float16"]["other"] < report["sizes_bytes"]["float32"]["other"]
