"""A whole Q8BERT job on a tiny random BERT: FP32 (+DQ) and QAT results, resume, and bad input."""

from __future__ import annotations

import pytest

from qlib.experiment import result_paths, run_q8bert
from qlib.results import read_json

pytestmark = pytest.mark.slow


def run(tiny_model_dir, tmp_path, method, **kwargs):
    return run_q8bert("sst2", method, seed=0, model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16,
                      results_dir=tmp_path / "results", progress=False, **kwargs)


def test_fp32_job_writes_fp32_and_dq_results_with_provenance(glue_dir, tiny_model_dir, tmp_path):
    records = run(tiny_model_dir, tmp_path, "fp32")
    assert [r["method"] for r in records] == ["fp32", "dq"]
    for record, path in zip(records, result_paths(tmp_path / "results", "sst2", "fp32", 0)):
        on_disk = read_json(path)
        assert on_disk == record
        assert 0.0 <= on_disk["metrics"]["accuracy"] <= 1.0
        assert on_disk["params"]["model"] == str(tiny_model_dir) and on_disk["train"]["train_examples"] == 16
        assert on_disk["train"]["examples_per_s"] > 0 and on_disk["provenance"]["wall_time_s"] > 0


def test_qat_job_and_resume_skips_finished_runs(glue_dir, tiny_model_dir, tmp_path):
    first = run(tiny_model_dir, tmp_path, "qat")
    path = result_paths(tmp_path / "results", "sst2", "qat", 0)[0]
    stamp = path.stat().st_mtime_ns
    again = run(tiny_model_dir, tmp_path, "qat")
    assert again == first and path.stat().st_mtime_ns == stamp


def test_bad_method_and_non_bert_model(glue_dir, tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="unknown method 'int4'"):
        run(tiny_model_dir, tmp_path, "int4")
    config = tiny_model_dir / "config.json"
    other = tmp_path / "gpt"
    other.mkdir()
    (other / "config.json").write_text(config.read_text().replace('"model_type": "bert"', '"model_type": "gpt2"'))
    with pytest.raises(ValueError, match="model_type 'gpt2'; qlib needs a BERT"):
        run(other, tmp_path, "fp32")
    assert not (tmp_path / "results").exists()
