"""The protocol's progress as the status page shows it: every planned job, finished or not, and the CPU hours of
the rest estimated from the finished ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qlib.experiments.experiment import snapshot_folder
from qlib.experiments.progress import grouped_speedups, main, protocol_progress, random_batches_caveat
from qlib.experiments.protocol import sweep_jobs
from qlib.experiments.results import read_json, write_json

SWEEP_POINT = Path(__file__).parents[1] / "results" / "q8bert-sweep" / "lr2e-05-ep3" / "rte" / "fp32-seed0.json"


def test_progress_counts_finished_jobs_and_estimates_the_rest_per_epoch(tmp_path):
    snapshot = snapshot_folder(sweep_jobs(results=tmp_path / "results")[0].spec, tmp_path / "snapshots")
    snapshot.mkdir(parents=True)
    (snapshot / "finetune-0.safetensors").touch()  # the first sweep job is partly trained
    table, left_out = protocol_progress(tmp_path / "results", tmp_path / "ckpt", tmp_path / "snapshots")
    assert table.loc[("q8bert-sweep", "rte"), ["jobs", "finished", "to run", "partly done"]].tolist() == [4, 0, 4, 1]
    assert table.loc[("q8bert-sweep", "mrpc"), "partly done"] == 0
    assert table["finished"].sum() == 0 and ("qbert", "squad") in table.index and ("qbert", "cola") not in table.index
    assert any(line.startswith("cola: its FP32 sweep is incomplete") for line in left_out)  # CoLA's rows wait
    assert "squad: the Q-BERT MP rows wait for its Hessian spectrum (stage 3)" in left_out
    if not SWEEP_POINT.is_file():
        pytest.skip(f"the committed sweep result {SWEEP_POINT} is the finished job of this test")
    target = tmp_path / "results" / "q8bert-sweep" / "lr2e-05-ep3" / "rte" / "fp32-seed0.json"
    target.parent.mkdir(parents=True)
    shutil.copy(SWEEP_POINT, target)
    table, _ = protocol_progress(tmp_path / "results", tmp_path / "ckpt")
    row = table.loc[("q8bert-sweep", "rte")]
    assert row[["finished", "to run"]].tolist() == [1, 3] and row["estimate"] == "measured"
    per_epoch = read_json(target)["provenance"]["wall_time_s"] / 3600 / 3
    assert row["est. CPU h"] == pytest.approx(per_epoch * (3 + 6 + 6), abs=0.1)  # the other three (table: 0.1 h)
    assert table.loc[("q8bert-sweep", "mrpc"), "est. CPU h"] != table.loc[("q8bert-sweep", "mrpc"),
                                                                                "est. CPU h"]  # NaN: unknown
    earlier = read_json(SWEEP_POINT) | {"task": "mrpc", "metrics": {"f1": 0.8, "accuracy": 0.7}}  # altered copy, CPU
    earlier["provenance"] = earlier["provenance"] | {"data": None}
    write_json(tmp_path / "results" / "q8bert-sweep" / "lr5e-05-ep6" / "mrpc" / "fp32-seed0.json", earlier)
    row = protocol_progress(tmp_path / "results", tmp_path / "ckpt")[0].loc[("q8bert-sweep", "mrpc")]
    assert row[["finished", "to run"]].tolist() == [0, 4] and row["estimate"] == "earlier copy"
    assert row["est. CPU h"] == pytest.approx(per_epoch * (3 + 3 + 6 + 6), abs=0.1)  # all four, it included
    earlier["provenance"]["machine"] = earlier["provenance"]["machine"] | {"device": "cuda"}  # a GPU's time is no guide
    write_json(tmp_path / "results" / "q8bert-sweep" / "lr5e-05-ep6" / "mrpc" / "fp32-seed0.json", earlier)
    row = protocol_progress(tmp_path / "results", tmp_path / "ckpt")[0].loc[("q8bert-sweep", "mrpc")]
    assert row["estimate"] == "partly unknown"


def test_a_spectrum_with_kept_eigenvalues_counts_as_partly_done(tmp_path):
    from qlib.experiments.protocol import chapter_checkpoints, spectrum_job
    from qlib.experiments.qbert import spectrum_params, spectrum_snapshot_folder
    from qlib.experiments.snapshots import Snapshots

    def spectrum_row():
        table, _ = protocol_progress(tmp_path / "results", tmp_path / "ckpt", tmp_path / "snapshots")
        return table.loc[("qbert (spectrum)", "squad"), ["to run", "partly done"]].tolist()

    assert spectrum_row() == [1, 0]  # no Baseline yet: nothing to have kept
    job = spectrum_job("squad", chapter_checkpoints(tmp_path / "ckpt", "qbert"), tmp_path / "results")
    params = spectrum_params(job)
    Path(params["init_from"]).parent.mkdir(parents=True)
    Path(params["init_from"]).write_bytes(b"the Baseline's weights")
    assert spectrum_row() == [1, 0]
    Snapshots(spectrum_snapshot_folder(params, tmp_path / "snapshots")).keep("eigenvalue 0 embeddings", {"top": 1.0})
    assert spectrum_row() == [1, 1]
    Path(params["init_from"]).write_bytes(b"a Baseline trained again")  # its kept eigenvalues are of another model
    assert spectrum_row() == [1, 0]


SIZING = Path(__file__).parents[1] / "results" / "squad-sizing" / "squad" / "fp32-seed0.json"
FLOORS = Path(__file__).parents[1] / "results" / "benchmarks" / "constant_answer.json"


def test_a_task_with_no_protocol_run_is_estimated_from_its_sizing_run_with_the_whole_dev_set(tmp_path):
    if not SIZING.is_file() or not FLOORS.is_file():
        pytest.skip(f"the committed SQuAD sizing run ({SIZING}) and dev counts ({FLOORS}) are this test's input")
    table, _ = protocol_progress(tmp_path / "results", tmp_path / "ckpt")
    assert table.loc[("q8bert", "squad"), "estimate"] == "partly unknown"
    for source, target in ((SIZING, "squad-sizing/squad/fp32-seed0.json"), (FLOORS, "benchmarks/constant_answer.json")):
        (tmp_path / "results" / target).parent.mkdir(parents=True)
        shutil.copy(source, tmp_path / "results" / target)
    row = protocol_progress(tmp_path / "results", tmp_path / "ckpt")[0].loc[("q8bert", "squad")]
    assert row["estimate"] == "sizing run (lower bound), from random batches (an overestimate)"  # before grouping
    sizing = read_json(SIZING)  # 320 questions for 1 epoch and 320 dev questions; the protocol: 20 k, the whole dev
    per_job = (sizing["train"]["seconds"] / 320 * 20_000
               + sizing["eval"]["seconds"] * read_json(FLOORS)["tasks"]["squad"]["dev examples"] / 320) / 3600
    assert row["est. CPU h"] == pytest.approx(per_job * row["to run"], abs=0.05)
    write_json(tmp_path / "results" / "benchmarks" / "batching-avx2-2026-01-01T0000.json", {
        "provenance": {"date": "2026-01-01T00:00:00+00:00"}, "tasks": {"squad": {"fp32_speedup": 2.0,
                                                                                 "qat_speedup": 1.5}}})
    assert grouped_speedups(tmp_path / "results") == {"squad": {"fp32": 2.0, "qat": 1.5}}
    row = protocol_progress(tmp_path / "results", tmp_path / "ckpt")[0].loc[("q8bert", "squad")]
    assert row["estimate"] == "sizing run (lower bound), from random batches ÷ their measured speed-up"
    evaluation = sizing["eval"]["seconds"] * read_json(FLOORS)["tasks"]["squad"]["dev examples"] / 320
    training = sizing["train"]["seconds"] / 320 * 20_000
    # q8bert/squad's jobs are its QAT seeds (its FP32 and DQ rows come with Q-BERT's Baseline): QAT's speed-up
    assert row["est. CPU h"] == pytest.approx(row["to run"] * (training / 1.5 + evaluation) / 3600, abs=0.05)
    assert protocol_progress(tmp_path / "results", tmp_path / "ckpt")[0].loc[("qbert", "squad"), "estimate"] == (
        "sizing run (lower bound), from random batches ÷ their measured speed-up")


def test_an_estimate_says_so_when_any_of_its_runs_trained_on_random_batches():
    grouped, random = {"params": {"group_by_length": True}}, {"params": {}}  # a record from before grouping
    assert random_batches_caveat([grouped, grouped], True, None) == ""
    assert random_batches_caveat([grouped, random], True, 1.5) == ", from random batches ÷ their measured speed-up"
    assert random_batches_caveat([random], True, None) == ", from random batches (an overestimate)"
    assert random_batches_caveat([random], False, 1.5) == ""  # a job on random batches is estimated as measured


def test_the_command_refuses_a_results_folder_that_does_not_exist(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "no-such-folder"), "--checkpoints", str(tmp_path / "ckpt")])
    assert exit_.value.code == 2 and "no-such-folder' does not exist" in capsys.readouterr().err
    (tmp_path / "results").mkdir()
    assert main([str(tmp_path / "results"), "--checkpoints", str(tmp_path / "ckpt"),
                 "--snapshots", str(tmp_path / "snapshots")]) == 0
    assert "to run: " in capsys.readouterr().out
