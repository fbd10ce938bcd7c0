"""Whole GLUE jobs on a tiny random BERT: FP32 (+ post-training rows), Q8BERT QAT, Q-BERT QAT, resume, bad input."""

from __future__ import annotations

import pytest
import torch

from qlib.experiments.data import file_sha256
from qlib.experiments.experiment import run_glue
from qlib.experiments.results import read_json
from qlib.experiments.spec import RunSpec

pytestmark = pytest.mark.slow


def run(tiny_model_dir, tmp_path, method, **kwargs):
    return run_glue("sst2", method, seed=0, model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16,
                    results_dir=tmp_path / "results", progress=False, **kwargs)


def test_fp32_job_writes_fp32_and_post_training_results_with_provenance(glue_dir, tiny_model_dir, tmp_path):
    records = run(tiny_model_dir, tmp_path, "fp32", post_training=("dq", "directq-w2"))
    assert [r["method"] for r in records] == ["fp32", "dq", "directq-w2"]
    paths = [RunSpec.from_record(r).result_path(tmp_path / "results") for r in records]
    assert [p.name for p in paths] == ["fp32-seed0.json", "dq-seed0.json", "directq-w2-seed0.json"]
    assert RunSpec.from_record(records[2]) == RunSpec("sst2", "directq", weight_bits=2,
                                                      protocol=RunSpec.from_record(records[0]).protocol)
    for record, path in zip(records, paths):
        on_disk = read_json(path)
        assert on_disk == record
        assert 0.0 <= on_disk["metrics"]["accuracy"] <= 1.0
        assert on_disk["params"]["model"] == str(tiny_model_dir) and on_disk["train"]["train_examples"] == 16
        assert on_disk["train"]["examples_per_s"] > 0 and on_disk["provenance"]["wall_time_s"] > 0
        assert on_disk["provenance"]["data"] == {
            "source": "local", "folder": glue_dir.resolve().name,
            "files": {f"glue/sst2/{s}.tsv": file_sha256(glue_dir / "glue" / "sst2" / f"{s}.tsv")
                      for s in ("dev", "train")}}
    from qlib.experiments.report import protocol_frame

    protocol = protocol_frame(records)  # the post-training rows trained nothing: one row, the FP32 run's
    assert protocol[["method", "seed", "train examples", "epochs", "max tokens"]].values.tolist() == [
        ["fp32", 0, 16, 1, 16]]
    noted = [records[0], records[0] | {"seed": 1, "provenance": records[0]["provenance"] | {"note": "shared CPU"}}]
    assert protocol_frame(noted)["note"].tolist() == ["", "shared CPU"]  # no NaN for a run without a note


def test_qat_job_and_resume_skips_finished_runs(glue_dir, tiny_model_dir, tmp_path):
    first = run(tiny_model_dir, tmp_path, "qat")
    path = tmp_path / "results" / "sst2" / "qat-seed0.json"
    stamp = path.stat().st_mtime_ns
    again = run(tiny_model_dir, tmp_path, "qat")
    assert again == first and path.stat().st_mtime_ns == stamp


def test_qbert_mixed_precision_job(glue_dir, tiny_model_dir, tmp_path):
    records = run(tiny_model_dir, tmp_path, "qbert", weight_bits=2, embedding_bits=8, groups=4,
                  layer_bits={"encoder.layer.1": 3})
    assert [r["method"] for r in records] == ["qbert-w2e8-g4-mp2-3"]
    assert records[0]["params"]["layer_bits"] == {"encoder.layer.1": 3}
    assert (tmp_path / "results" / "sst2" / "qbert-w2e8-g4-mp2-3-seed0.json").is_file()


def test_run_takes_a_spec_and_refuses_rows_that_are_not_its_own(glue_dir, tiny_model_dir, tmp_path):
    from qlib.experiments.experiment import run
    from qlib.experiments.spec import TrainingProtocol

    tiny = TrainingProtocol(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16)
    spec = RunSpec("sst2", "qbert", 1, weight_bits=3, groups=4, protocol=tiny)
    records = run(spec, results_dir=tmp_path / "results", progress=False)
    assert RunSpec.from_record(records[0]) == spec and spec.result_path(tmp_path / "results").is_file()
    fp32 = spec.with_(method="fp32", weight_bits=8, groups=None)
    with pytest.raises(ValueError, match="dq trains nothing: run its trained spec \\(fp32\\)"):
        run(fp32.with_(method="dq"), results_dir=tmp_path / "results")
    with pytest.raises(ValueError, match=r"post_training rows \['dq'\] do not belong to fp32"):
        run(fp32, [RunSpec("sst2", "dq", 2, protocol=tiny)], results_dir=tmp_path / "results")
    with pytest.raises(ValueError, match="do not belong to qbert-w3e8-g4"):
        run(spec, [fp32.with_(method="dq")], results_dir=tmp_path / "results")


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


def test_protocol_covers_tasks_outside_the_cpu_protocol():
    from qlib.experiments.experiment import protocol_for

    assert protocol_for("sst2") == {"epochs": 1, "lr": 5e-5}
    assert protocol_for("MNLI") == {"epochs": 3, "lr": 5e-5}
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        protocol_for("imdb")


def test_checkpoint_dir_keeps_a_loadable_model_and_ema_label(glue_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from qlib import convert_bert, q8bert_config
    from qlib.deploy.checkpoint import load_quantized

    records = run(tiny_model_dir, tmp_path, "qat", ema_decay=0.99, checkpoint_dir=tmp_path / "ckpt")
    assert records[0]["method"] == "qat-ema0.99" and records[0]["params"]["ema_decay"] == 0.99
    assert records[0]["provenance"]["machine"]["device"] == "cpu"
    path = tmp_path / "ckpt" / "sst2" / "qat-ema0.99-seed0.safetensors"
    model = convert_bert(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), q8bert_config())
    load_quantized(model, path)  # the EMA ranges travel with the packed weights
    observers = [m for n, m in model.named_modules() if n.endswith("input_observer")]
    assert observers and all(int(o.observed) > 0 for o in observers)


def test_a_qat_row_starts_from_its_baseline_model_and_runs_it_first_when_missing(glue_dir, tiny_model_dir, tmp_path):
    from qlib.experiments.qbert import fp32_checkpoint, run_setting

    args = dict(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16, experiment="qbert",
                results_dir=tmp_path / "results", progress=False)
    records = run_setting("Q-BERT 3/8", "sst2", 0, 4, tmp_path / "ckpt", **args)
    start = fp32_checkpoint(tmp_path / "ckpt", "sst2", 0)
    assert start.is_file() and records[0]["params"]["init_from"] == str(start)
    assert records[0]["method"] == "qbert-w3e8-g4-p99.9-ft" and records[0]["params"]["percentile"] == 99.9
    written = {p.name for p in (tmp_path / "results" / "sst2").iterdir()}
    assert {"fp32-seed0.json", "directq-w2-p99.9-seed0.json", "directq-w2-seed0.json"} <= written
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.safetensors not found"):
        run(tiny_model_dir, tmp_path, "qbert", weight_bits=3, init_from=tmp_path / "missing.safetensors")


def test_a_quant_noise_row_trains_its_baseline_without_noise(glue_dir, tiny_model_dir, tmp_path):
    from qlib.experiments.qbert import run_setting

    args = dict(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16, experiment="qbert",
                results_dir=tmp_path / "results", progress=False)
    records = run_setting("Q-BERT 2/8", "sst2", 0, 4, tmp_path / "ckpt", noise_rate=0.5, **args)
    assert records[0]["method"] == "qbert-w2e8-g4-p99.9-qn0.5-ft" and records[0]["params"]["noise_rate"] == 0.5
    baseline = read_json(tmp_path / "results" / "sst2" / "fp32-seed0.json")
    assert baseline["params"]["noise_rate"] == 1.0
    with pytest.raises(ValueError, match="noise_rate=0.5 is not a knob of method 'fp32'"):
        run_setting("Baseline", "sst2", 1, 4, tmp_path / "ckpt", noise_rate=0.5, **args)


def test_per_row_groups_job(glue_dir, tiny_model_dir, tmp_path):
    records = run(tiny_model_dir, tmp_path, "qbert", weight_bits=3, groups="row")
    assert records[0]["method"] == "qbert-w3e8-per-row"


def test_device_resolution():
    from qlib.experiments.train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("task,metrics", [("stsb", {"pearson", "spearman"}), ("mrpc", {"f1", "accuracy"})])
def test_regression_and_pair_tasks_train_from_their_official_files(glue_dir, tiny_model_dir, tmp_path, task, metrics):
    record = run_glue(task, "fp32", seed=0, model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16,
                      results_dir=tmp_path / "results", progress=False, post_training=())[0]
    assert set(record["metrics"]) == metrics and record["main_metric"] == sorted(metrics)[task == "mrpc"]
    assert all(-1.0 <= v <= 1.0 for v in record["metrics"].values())


def test_a_seeded_qat_run_is_deterministic(glue_dir, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    runs = []
    for attempt in ("a", "b"):
        record = run_glue("sst2", "qat", seed=3, model=str(tiny_model_dir), epochs=2, batch_size=4, max_length=16,
                          results_dir=tmp_path / attempt, checkpoint_dir=tmp_path / attempt, progress=False)[0]
        runs.append((record, load_file(tmp_path / attempt / "sst2" / "qat-seed3.safetensors")))
    (first, first_weights), (second, second_weights) = runs
    assert first["metrics"] == second["metrics"] and first["train"]["steps"] == second["train"]["steps"]
    assert first_weights.keys() == second_weights.keys()
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    run_glue("sst2", "qat", seed=4, model=str(tiny_model_dir), epochs=2, batch_size=4, max_length=16,
             results_dir=tmp_path / "c", checkpoint_dir=tmp_path / "c", progress=False)
    other_weights = load_file(tmp_path / "c" / "sst2" / "qat-seed4.safetensors")
    assert any(not torch.equal(first_weights[k], other_weights[k]) for k in first_weights)  # the seed matters


@pytest.mark.parametrize("noise_rate,label", [(1.0, "ipq-k16-int8-ft"), (0.2, "ipq-k16-int8-qn0.2-ft")])
def test_an_ipq_run_quantizes_in_stages_from_its_fp32_model_and_keeps_a_loadable_file(glue_dir, tiny_model_dir,
                                                                                      tmp_path, noise_rate, label):
    from transformers import AutoModelForSequenceClassification

    from qlib import convert_bert, q8bert_config
    from qlib.bert.convert import find_bert
    from qlib.bert.pq_modules import IPQ_STAGES, PQEmbedding, PQLinear, product_quantize
    from qlib.deploy.checkpoint import load_quantized, save_float

    start = save_float(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), tmp_path / "fp32.st")
    records = run(tiny_model_dir, tmp_path, "ipq", centroids=16, centroid_bits=8, init_from=start,
                  checkpoint_dir=tmp_path / "ckpt", noise_rate=noise_rate)
    record = records[0]
    assert record["method"] == label and record["params"]["centroids"] == 16
    assert list(record["train"]["stages"]) == ["noise"] * (noise_rate < 1) + list(IPQ_STAGES)
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    assert RunSpec.from_record(record) == RunSpec("sst2", "ipq", centroids=16, centroid_bits=8, init_from=str(start),
                                                  noise_rate=noise_rate, protocol=RunSpec.from_record(record).protocol)
    model = convert_bert(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), q8bert_config())
    for stage in IPQ_STAGES:
        product_quantize(find_bert(model), stage, 16, centroid_bits=8, iterations=1)
    load_quantized(model, tmp_path / "ckpt" / "sst2" / f"{label}-seed0.safetensors")
    assert sum(isinstance(m, (PQLinear, PQEmbedding)) for m in model.modules()) > 0


def test_a_run_killed_mid_stage_resumes_from_its_snapshots_to_the_same_result(glue_dir, tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    import functools

    from conftest import Killed, killed_after
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from qlib.deploy.checkpoint import save_float
    from qlib.experiments import experiment
    from qlib.experiments.snapshots import Snapshots
    from qlib.experiments.train import finetune

    start = save_float(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), tmp_path / "fp32.st")
    ipq = dict(centroids=16, centroid_bits=8, init_from=start, noise_rate=0.2)  # 4 finetune calls: noise, 3 stages
    straight = run(tiny_model_dir, tmp_path / "straight", "ipq", checkpoint_dir=tmp_path / "straight", **ipq)[0]

    calls = []

    def killed_in_the_third_call(*args, **kwargs):
        calls.append(len(calls))
        return finetune(*args, **kwargs | ({"loss_fn": killed_after(1)} if len(calls) == 3 else {}))

    monkeypatch.setattr(experiment, "Snapshots", functools.partial(Snapshots, every_s=0))
    monkeypatch.setattr(experiment, "finetune", killed_in_the_third_call)
    snapshots = tmp_path / "snapshots"
    with pytest.raises(Killed):
        run(tiny_model_dir, tmp_path / "resumed", "ipq", checkpoint_dir=tmp_path / "resumed", snapshot_dir=snapshots,
            **ipq)
    assert len(list(snapshots.rglob("finetune-*.safetensors"))) == 3
    monkeypatch.setattr(experiment, "finetune", finetune)
    resumed = run(tiny_model_dir, tmp_path / "resumed", "ipq", checkpoint_dir=tmp_path / "resumed",
                  snapshot_dir=snapshots, **ipq)[0]
    assert resumed["metrics"] == straight["metrics"]
    stages = resumed["train"]["stages"]
    # the two finished calls replayed (taken over at their last step), the cut one resumed after its first step
    steps = [s["steps"] for s in stages.values()]
    assert [s.get("resumed_at_steps") for s in stages.values()] == [[steps[0]], [steps[1]], [1], None]
    assert not list(snapshots.rglob("*.safetensors"))  # cleared once the results are written
    name = f"sst2/{straight['method']}-seed0.safetensors"
    first, second = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_run_killed_during_its_evaluations_resumes_with_the_rows_not_yet_evaluated(glue_dir, tiny_model_dir,
                                                                                    tmp_path, monkeypatch):
    from conftest import Killed
    from safetensors.torch import load_file

    from qlib.experiments import experiment

    rows = dict(post_training=("dq", "directq-w4", "directq-w2"))
    straight = run(tiny_model_dir, tmp_path / "straight", "fp32", checkpoint_dir=tmp_path / "straight", **rows)
    evaluate, evaluated, kill_at = experiment._evaluate, [], [2]

    def killed_at_the_third_row(model, task, data):
        if len(evaluated) in kill_at:
            raise Killed
        evaluated.append(model)
        return evaluate(model, task, data)

    monkeypatch.setattr(experiment, "_evaluate", killed_at_the_third_row)
    snapshots = tmp_path / "snapshots"
    with pytest.raises(Killed):
        run(tiny_model_dir, tmp_path / "resumed", "fp32", checkpoint_dir=tmp_path / "resumed", snapshot_dir=snapshots,
            **rows)
    assert not list((tmp_path / "resumed").rglob("*.json"))  # nothing written until every row is evaluated
    evaluated.clear()
    kill_at.clear()
    resumed = run(tiny_model_dir, tmp_path / "resumed", "fp32", checkpoint_dir=tmp_path / "resumed",
                  snapshot_dir=snapshots, **rows)
    assert len(evaluated) == 2  # the two rows left, no more
    assert [r["metrics"] for r in resumed] == [r["metrics"] for r in straight]
    assert [set(r["eval"]) for r in resumed] == [{"examples", "seconds", "made_by"}] * 2 + [{"examples", "seconds"}] * 2
    assert resumed[0]["eval"]["made_by"]["git_commit"] == resumed[0]["provenance"]["git_commit"]
    assert not snapshots.exists() or not any(snapshots.rglob("*.*"))  # cleared once the results are written
    name = "sst2/fp32-seed0.safetensors"
    first, second = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
