"""The whole-protocol job list and the Q-BERT table's settings (no training here: the jobs are checked, not run)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qlib.bert.config import qbert_config
from qlib.experiments.experiment import (
    SWEEP_GRID,
    SWEEP_TASKS,
    checkpoint_path,
    protocol_for,
    sweep_folder,
    sweep_points,
)
from qlib.experiments.protocol import (
    ABLATION_GROUPS,
    ABLATION_TASKS,
    DEPLOY_TASKS,
    EMA_ABLATION_TASKS,
    HEADS,
    HESSIAN_BATCH_SIZES,
    Q8BERT_TASKS,
    QBERT_TASKS,
    QUANT_NOISE_RATE,
    Job,
    SpectrumJob,
    baseline_jobs,
    chapter_checkpoints,
    main,
    picked_protocols,
    q8bert_jobs,
    qbert_jobs,
    quant_noise_jobs,
    read_spectra,
    second_stage,
    share_fp32_runs,
    smallest_first,
    spectrum_job,
    sweep_jobs,
    unmatched_patterns,
)
from qlib.experiments.qbert import (
    MIXED_SETTINGS,
    QBERT_PERCENTILE,
    SETTINGS,
    directq_specs,
    fp32_checkpoint,
    main_table_rows,
    mixed_layer_bits,
    setting_spec,
)
from qlib.experiments.qbert_tables import batch_size_effect, saddle_points
from qlib.experiments.results import read_json, write_json
from qlib.experiments.spec import RunSpec, TrainingProtocol

SPECTRUM = {"blocks": {f"encoder.layer.{i}": {"omega": omega} for i, omega in enumerate([5.0, 1.0, 4.0, 2.0])}
            | {"embeddings": {"omega": 9.0}}}


def label(job):
    """The result name a protocol job writes."""
    return job.spec.label


def write_sweep(results, task, scores):
    """Sweep results of ``task`` under ``results``, one dev score per grid point (None: that point not run)."""
    from qlib.experiments.data import get_task
    from qlib.experiments.results import write_json

    for point, score in zip(sweep_points(), scores):
        if score is not None:
            write_json(results / sweep_folder(point["lr"], point["epochs"]) / task / "fp32-seed0.json",
                       {"task": task, "metrics": {get_task(task).metrics[0]: score}})


@pytest.fixture
def swept(tmp_path):
    """A results folder whose sweep is complete for every sweep task (best: 6 epochs at 2e-5)."""
    for task in SWEEP_TASKS:
        write_sweep(tmp_path, task, [0.5, 0.6, 0.7, 0.6])
    return tmp_path


def test_a_sweep_task_takes_the_best_point_of_its_sweep_and_waits_for_all_of_it(tmp_path):
    assert [p for p in sweep_points()] == [{"epochs": 3, "lr": 2e-5}, {"epochs": 3, "lr": 5e-5},
                                          {"epochs": 6, "lr": 2e-5}, {"epochs": 6, "lr": 5e-5}]
    write_sweep(tmp_path, "mrpc", [0.8, 0.9, 0.85, None])
    with pytest.raises(FileNotFoundError, match=r"mrpc's FP32 protocol is picked by its sweep, and 1 of its 4 points"
                                                r".*qlib.experiments.protocol --only sweep"):
        protocol_for("mrpc", tmp_path)
    write_sweep(tmp_path, "mrpc", [None, None, None, 0.9])
    assert protocol_for("mrpc", tmp_path) == {"epochs": 3, "lr": 5e-5}  # a tie goes to the cheaper point
    assert protocol_for("sst2", tmp_path) == {"epochs": 1, "lr": 5e-5} and protocol_for("qnli") == {"epochs": 3,
                                                                                                    "lr": 5e-5}
    assert picked_protocols(["sst2", "mrpc", "cola"], tmp_path) == (
        {"sst2": {"epochs": 1, "lr": 5e-5}, "mrpc": {"epochs": 3, "lr": 5e-5}}, ["cola"])


def test_mixed_settings_raise_the_most_sensitive_layers_and_leave_the_embedding_alone():
    bits = mixed_layer_bits(SPECTRUM, (2, 3), 2.5)
    assert bits == {"encoder.layer.0": 3, "encoder.layer.1": 2, "encoder.layer.2": 3, "encoder.layer.3": 2}
    spec = setting_spec("Q-BERT_MP 2/4", "sst2", 0, HEADS, "ckpt", SPECTRUM)
    assert spec.weight_bits == 2 and sorted(spec.layer_bits.values()) == [2, 2, 4, 4]
    assert spec.label == "qbert-w2e8-g12-p99.9-mp2-4-ft"


def test_setting_specs_rows_and_errors():
    baseline = setting_spec("Baseline", "sst2", 1, HEADS, "ckpt")
    assert baseline == RunSpec("sst2", "fp32", 1)
    assert [r.label for r in directq_specs(baseline, HEADS)] == [
        "directq-w4-p99.9", "directq-w3-p99.9", "directq-w2-p99.9", "directq-w4", "directq-w3", "directq-w2"]
    assert all(r.groups == HEADS and r.trained_spec == baseline for r in directq_specs(baseline, HEADS))
    qat = setting_spec("Q-BERT 2/8", "sst2", 1, HEADS, "ckpt")
    assert qat == RunSpec("sst2", "qbert", 1, weight_bits=2, groups=HEADS, percentile=QBERT_PERCENTILE,
                          init_from=str(fp32_checkpoint("ckpt", "sst2", 1)))
    with pytest.raises(ValueError, match="takes its bits from a Hessian spectrum"):
        setting_spec("Q-BERT_MP 2/3", "sst2", 0, HEADS, "ckpt")
    with pytest.raises(ValueError, match="unknown setting 'Q-BERT 1/8'"):
        setting_spec("Q-BERT 1/8", "sst2", 0, HEADS, "ckpt")
    with pytest.raises(ValueError, match="no encoder layers"):
        mixed_layer_bits({"blocks": {"embeddings": {"omega": 1.0}}}, (2, 3), 2.5)


def test_per_row_groups_and_bad_groups():
    assert qbert_config(3, groups="row").default.weight.granularity == "channel"
    with pytest.raises(ValueError, match="groups must be a positive integer G, 'row' or None; got 'rows'"):
        qbert_config(3, groups="rows")


def test_job_lists_cover_both_tables_and_their_ablations(swept):
    q8_main, q8_ablation = q8bert_jobs(picked_protocols(Q8BERT_TASKS, swept)[0])
    assert len(Q8BERT_TASKS) == 6 and len(q8_main) == 6 * 3 * 2 and len(q8_ablation) == 2 * 3
    assert {j.spec.task for j in q8_ablation} == set(EMA_ABLATION_TASKS) == {"cola", "rte"}
    assert all(getattr(j.spec.protocol, name) == value for j in q8_main
               for name, value in protocol_for(j.spec.task, swept).items())
    assert {(j.spec.task, j.spec.protocol.epochs, j.spec.protocol.lr) for j in q8_main
            if j.spec.task == "rte"} == {("rte", 6, 2e-5)}
    qb_baselines, qb_main, qb_ablation = qbert_jobs(["sst2"], "ckpt", {"sst2": SPECTRUM})
    assert all(j.needs == (f"qbert/sst2/fp32-seed{j.spec.seed}",) for j in qb_main + qb_ablation)
    assert {j.name for j in qb_baselines} == {f"qbert/sst2/fp32-seed{s}" for s in (0, 1, 2)}
    assert [j.spec.seed for j in qb_baselines] == [0, 1, 2] and all(j.spec.method == "fp32" for j in qb_baselines)
    rows = {label(j) for j in qb_main}
    assert len(qb_main) == (len(SETTINGS) + len(MIXED_SETTINGS)) * 3 and len(rows) == 6
    assert {j.spec.groups for j in qb_ablation} == set(ABLATION_GROUPS)
    starts = {str(fp32_checkpoint("ckpt", "sst2", s)) for s in (0, 1, 2)}
    assert {j.spec.init_from for j in qb_main + qb_ablation} == starts


def test_the_deployed_tasks_qat_models_are_kept_and_a_missing_one_is_not_done(swept, tmp_path):
    protocols = picked_protocols(Q8BERT_TASKS, swept)[0]
    models = tmp_path / "ckpt"
    main, ablation = q8bert_jobs(protocols, results=swept, checkpoints=models)
    kept = [j for j in main + ablation if j.checkpoint_dir is not None]
    assert {(j.spec.task, j.spec.method) for j in kept} == {(t, "qat") for t in DEPLOY_TASKS} == {("sst2", "qat")}
    assert [j.spec.seed for j in kept] == [0, 1, 2] and all(j.checkpoint_dir == str(models) for j in kept)
    assert all(j.checkpoint_dir is None for j in q8bert_jobs(protocols)[0])  # no folder: nothing kept
    assert not kept[0].done()  # neither its result nor its model is there
    write_json(kept[0].spec.result_path(kept[0].results_dir), {"provenance": {"data": {"folder": "glue"}}})
    assert kept[0].recorded() and not kept[0].done()  # its result is recorded, its model is not kept: run it again
    model = checkpoint_path(kept[0].spec, models)
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    assert kept[0].done()
    planned, _, _ = second_stage({"q8bert": ("sst2",), "qbert": (), "quant-noise": (), "beyond": (), "ipq": ()},
                                 swept, models)  # each chapter keeps its models in its own folder
    assert [j.name for j in planned if getattr(j, "checkpoint_dir", None) == str(models / "q8bert")
            and j.experiment == "q8bert"] == [f"q8bert/sst2/qat-seed{s}" for s in (0, 1, 2)]
    assert chapter_checkpoints(models, "qbert") == models / "qbert"


def test_q8bert_rows_run_seed_by_seed_smallest_task_first(swept):
    q8_main, _ = q8bert_jobs(picked_protocols(Q8BERT_TASKS, swept)[0])
    order = [(j.spec.seed, j.spec.task, j.spec.method) for j in smallest_first(q8_main)]
    assert order[:4] == [(0, "rte", "fp32"), (0, "rte", "qat"), (0, "mrpc", "fp32"), (0, "mrpc", "qat")]
    assert order[8:12] == [(0, "sst2", "fp32"), (0, "sst2", "qat"), (0, "squad", "fp32"), (0, "squad", "qat")]
    assert order[12][:2] == (1, "rte")
    assert sorted(order) == sorted((j.spec.seed, j.spec.task, j.spec.method) for j in q8_main)  # nothing lost


def test_squads_later_seeds_wait_for_the_glue_seeds_and_every_tables_first_row(swept):
    planned = second_stage({"q8bert": ("rte", "squad"), "qbert": ("sst2",), "quant-noise": (), "beyond": (),
                            "ipq": ()}, swept, "ckpt")[0]
    names = [j.name for j in planned]
    assert names[:4] == ["q8bert/rte/fp32-seed0", "q8bert/rte/qat-seed0", "q8bert/squad/fp32-seed0",
                         "q8bert/squad/qat-seed0"]
    assert names[4:8] == [f"q8bert/rte/{m}-seed{s}" for s in (1, 2) for m in ("fp32", "qat")]  # GLUE's 3 seeds
    squad_seed_1 = names.index("q8bert/squad/fp32-seed1")
    seeds = [j.spec.seed if isinstance(j, Job) else 0 for j in planned]  # a spectrum: its seed-0 Baseline's
    assert set(seeds[8:squad_seed_1]) == {0}  # then every other table's seed 0
    assert "qbert/sst2/qbert-w2e8-g12-p99.9-ft-seed0" in names[:squad_seed_1]
    assert names[squad_seed_1 + 1] == "q8bert/squad/qat-seed1" and seeds[squad_seed_1 - 1] == 0
    assert names.index("q8bert/squad/fp32-seed2") > names.index("qbert/sst2/fp32-seed1")
    assert sorted(names) == sorted(set(names)) and len([n for n in names if n.startswith("q8bert/squad")]) == 6


def test_the_papers_own_tasks_have_their_jobs_and_protocols(swept):
    q8_main, _ = q8bert_jobs(picked_protocols(Q8BERT_TASKS, swept)[0])
    squad = [j for j in q8_main if j.spec.task == "squad"]
    assert len(squad) == 6 and {(j.spec.protocol.epochs, j.spec.protocol.max_train_examples, j.spec.protocol.max_length,
                                 j.spec.protocol.doc_stride) for j in squad} == {(1, 20_000, 256, 128)}
    assert all(j.post_training[0].method == "dq" for j in squad if j.spec.method == "fp32")
    baselines, rows, ablation = qbert_jobs(list(QBERT_TASKS), "ckpt", {t: SPECTRUM for t in QBERT_TASKS}, results=swept)
    assert {j.spec.task for j in baselines} == set(QBERT_TASKS) == {"sst2", "conll2003", "squad"}
    assert {j.spec.task for j in rows if j.spec.layer_bits} == set(QBERT_TASKS)
    assert {j.spec.task for j in ablation} == set(ABLATION_TASKS) == {"sst2", "conll2003"}  # not SQuAD's
    assert {j.spec.protocol.epochs for j in baselines if j.spec.task == "conll2003"} == {3}
    squad_spectrum = spectrum_job("squad", "ckpt", "res")
    assert squad_spectrum["max_length"] == 256 and list(squad_spectrum["batch_sizes"]) == list(HESSIAN_BATCH_SIZES)
    assert "max_length" not in spectrum_job("conll2003", "ckpt", "res")  # run_spectrum's default fits a sentence


def test_a_baseline_that_is_a_q8bert_fp32_run_trains_once_for_both_chapters(swept):
    q8_main, _ = q8bert_jobs(picked_protocols(Q8BERT_TASKS, swept)[0])
    baselines = baseline_jobs(["sst2", "conll2003"], "ckpt", results=swept)
    rows, left = share_fp32_runs(smallest_first(q8_main), baselines)
    shared = [j for j in rows if j.experiment == "qbert"]
    assert [(j.name, j.spec.seed) for j in shared] == [(f"qbert/sst2/fp32-seed{s}", s) for s in (0, 1, 2)]
    assert [j.name for j in rows].index("qbert/sst2/fp32-seed0") == [j.name for j in smallest_first(q8_main)].index(
        "q8bert/sst2/fp32-seed0")  # it runs where Q8BERT's FP32 run would have
    assert all(j.also == (("q8bert", (j.spec, j.spec.with_(method="dq"))),) for j in shared)
    assert all(len(j.post_training) == len(directq_specs(j.spec, HEADS)) for j in shared)  # its DirectQ rows too
    assert all(j.evaluations == 1 + len(j.post_training) + 1 for j in shared)  # FP32 once, then DirectQ and DQ
    assert all(j.evaluations == 1 + len(j.post_training) for j in left)
    assert {j.spec.task for j in left} == {"conll2003"} and len(rows) == len(q8_main)
    assert Job.from_json(shared[0].to_json()) == shared[0]


def test_quant_noise_jobs_start_from_the_baselines_the_protocol_keeps(swept):
    jobs = quant_noise_jobs("ckpt", seeds=(0, 1), results=swept)
    noisy = [j for j in jobs if j.experiment == "quant-noise"]
    widths = {"sst2": (8, 4), "cola": (2, 3)}  # the paper's int8 and int4 on SST-2; CoLA's lowest bits
    assert {(j.spec.task, label(j)) for j in noisy} == {
        (t, f"qbert-w{b}e8-g12-p99.9-qn{QUANT_NOISE_RATE:g}-ft") for t, bits in widths.items() for b in bits}
    compared = [j for j in jobs if j.experiment == "qbert"]  # the same rows at p = 1, the chapter's comparison
    assert {(j.spec.task, label(j)) for j in compared} == {
        (t, f"qbert-w{b}e8-g12-p99.9-ft") for t, bits in widths.items() for b in bits} and len(compared) == 8
    assert all(j.spec.protocol.epochs == protocol_for(j.spec.task, swept)["epochs"] for j in jobs)
    qbert_main = qbert_jobs(["cola", "sst2"], "ckpt", seeds=(0, 1), results=swept)[1]
    assert {j.name for j in compared} <= {j.name for j in qbert_main}  # the same job: the runner keeps one
    baselines = baseline_jobs(sorted({j.spec.task for j in jobs}), "ckpt", seeds=(0, 1), results=swept)
    assert all(j.checkpoint_dir == "ckpt" and j.spec.method == "fp32" for j in baselines)
    assert {j.needs for j in jobs} == {(j.name,) for j in baselines}
    kept = {str(fp32_checkpoint("ckpt", j.spec.task, j.spec.seed)) for j in baselines}
    assert {j.spec.init_from for j in jobs} == kept


def test_ipq_jobs_quantize_their_seeds_baseline_in_float_and_with_int8(swept):
    from qlib.experiments.protocol import IPQ_NOISE_RATE, IPQ_TASKS, ipq_jobs

    jobs = ipq_jobs("ckpt", seeds=(0, 1), results=swept)
    assert {j.spec.label for j in jobs} == {"ipq-k256-ft", "ipq-k256-int8-ft", f"ipq-k256-int8-qn{IPQ_NOISE_RATE:g}-ft"}
    assert len(jobs) == 3 * 2 * len(IPQ_TASKS)
    assert all(j.experiment == "quant-noise" and j.needs == (f"qbert/{j.spec.task}/fp32-seed{j.spec.seed}",)
               and j.spec.init_from == str(fp32_checkpoint("ckpt", j.spec.task, j.spec.seed)) for j in jobs)


def test_the_noise_study_varies_p_and_the_block_size_of_its_settings_apart_from_the_main_rows(swept):
    from qlib.experiments.protocol import NOISE_STUDY_BLOCKS, NOISE_STUDY_RATES, NOISE_STUDY_SETTINGS, noise_study_jobs

    assert NOISE_STUDY_SETTINGS["cola"] == ("Q-BERT 3/8", "Q-BERT 2/8")
    jobs = noise_study_jobs("ckpt", results=swept)
    first = [(p, 8) for p in NOISE_STUDY_RATES] + [(QUANT_NOISE_RATE, b) for b in NOISE_STUDY_BLOCKS]
    assert [(j.spec.weight_bits, j.spec.noise_rate, j.spec.noise_block) for j in jobs] == (
        [(3, p, b) for p, b in first] + [(2, p, 8) for p in NOISE_STUDY_RATES])  # blocks on the first setting only
    assert {j.spec.seed for j in jobs} == {0}
    assert all(j.results_dir == swept / "quant-noise-study" and j.needs == ("qbert/cola/fp32-seed0",) for j in jobs)
    main_rows = {j.name for j in quant_noise_jobs("ckpt", results=swept, tasks=["cola"])}
    assert not main_rows & {j.name for j in jobs}
    assert jobs[3].spec.label == f"qbert-w3e8-g12-p99.9-qn{QUANT_NOISE_RATE:g}-b4-ft"
    with pytest.raises(ValueError, match=r"'Q-BERT 2/8' on 'sst2' has no Quant-Noise main rows; allowed: \('Q-BERT 8"):
        noise_study_jobs("ckpt", results=swept, settings={"sst2": ("Q-BERT 2/8",)})
    planned = second_stage({"q8bert": (), "qbert": (), "quant-noise": ("cola",), "beyond": (), "ipq": ()}, swept,
                           "ckpt")[0]
    seeds = [j.spec.seed for j in planned]
    assert seeds == sorted(seeds) and seeds[0] == 0 and seeds[-1] == 2  # seed 0 of every row first
    names = [j.name for j in planned]
    first_seed_1 = seeds.index(1)
    assert names[first_seed_1 - len(jobs):first_seed_1] == [j.name for j in jobs]  # last of seed 0's jobs


def test_each_task_takes_its_mp_bits_from_its_own_spectrum(tmp_path, swept):
    reversed_spectrum = {"blocks": {name: {"omega": -b["omega"]} for name, b in SPECTRUM["blocks"].items()}}
    _, qb_main, _ = qbert_jobs(["sst2", "cola"], "ckpt", {"sst2": SPECTRUM, "cola": reversed_spectrum}, seeds=(0,),
                               results=swept)
    _, without, _ = qbert_jobs(["sst2", "cola"], "ckpt", {"sst2": SPECTRUM}, seeds=(0,), results=swept)
    assert {j.spec.task for j in without if j.spec.layer_bits} == {"sst2"}  # cola's MP rows wait for its spectrum
    mixed = {j.spec.task: j.spec.layer_bits for j in qb_main
             if j.spec.layer_bits and max(j.spec.layer_bits.values()) == 3}
    assert mixed["sst2"] == mixed_layer_bits(SPECTRUM, (2, 3), 2.5)
    assert mixed["cola"] == mixed_layer_bits(reversed_spectrum, (2, 3), 2.5) != mixed["sst2"]
    with pytest.raises(FileNotFoundError, match=r"spectrum-cola.json.*quick=false"):
        read_spectra(tmp_path, ["cola"])


def test_main_table_rows_name_the_results_the_protocol_writes():
    rows = main_table_rows(SPECTRUM, HEADS)
    assert list(rows)[:4] == ["Baseline", "Q-BERT 8/8", "DirectQ 4/8", "Q-BERT 4/8"]
    assert list(rows)[-2:] == list(MIXED_SETTINGS)
    qb_baselines, qb_main, _ = qbert_jobs(["sst2"], "ckpt", {"sst2": SPECTRUM})
    written = {row.label for j in qb_baselines for row in j.post_training} | {label(j) for j in qb_baselines + qb_main}
    min_max_directq = {f"directq-w{b}" for b in (4, 3, 2)}  # shown beside the table, not in it
    assert {r["label"] for r in rows.values()} == written - min_max_directq
    assert {r["spec"] for r in rows.values()} >= {replace(j.spec, init_from="fp32", protocol=TrainingProtocol())
                                                  for j in qb_main if j.spec.seed == 0}
    assert rows["Q-BERT_MP 2/3"]["w_bits"] == "2/3 MP" and rows["Q-BERT_MP 2/3"]["layer_bits"] == mixed_layer_bits(
        SPECTRUM, (2, 3), 2.5)
    assert rows["Baseline"]["config"] is None and rows["DirectQ 2/8"]["config"].default.weight.bits == 2
    assert "Q-BERT_MP 2/3" not in main_table_rows(None, HEADS)


def test_bad_worker_count_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--workers", "0"])
    assert "workers and threads must be positive, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--workers", "2", "--threads", "64"])
    assert "oversubscribe this machine's" in capsys.readouterr().err


@pytest.mark.slow
def test_runner_runs_jobs_in_worker_processes_and_names_a_failing_one(glue_dir, tiny_model_dir, tmp_path,
                                                                      monkeypatch, capsys):
    import qlib.experiments.protocol

    tiny = TrainingProtocol(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16)
    missing = str(tmp_path / "missing.safetensors")  # a job that fails: its starting checkpoint is not there
    results = str(tmp_path / "results")
    jobs = [Job(RunSpec("sst2", "fp32", protocol=tiny), "q8bert", results=results),
            Job(RunSpec("sst2", "qbert", weight_bits=3, init_from=missing, protocol=tiny), "q8bert", results=results)]
    monkeypatch.setattr(qlib.experiments.protocol, "q8bert_jobs", lambda protocols, **_: (jobs, []))
    status = main(["--only", "q8bert", "--results", str(tmp_path / "results"), "--workers", "2", "--threads", "1",
                   "--device", "cpu"])
    out = capsys.readouterr()
    assert status == 1 and "job(s) failed" in out.err
    assert "FAILED q8bert/sst2/qbert-w3e8-ft-seed0" in out.out and "missing.safetensors not found" in out.out
    assert (tmp_path / "results" / "q8bert" / "sst2" / "fp32-seed0.json").is_file()
    assert "q8bert/sst2/fp32-seed0: done on tcp://" in out.out  # the summary names the worker
    capsys.readouterr()
    assert main(["--only", "q8bert", "--results", results, "--threads", "1", "--device", "cpu"]) == 1
    assert "q8bert/sst2/fp32-seed0: skipped" in capsys.readouterr().out  # resumed: the finished run is not redone
    assert main(["--only", "q8bert", "--results", results, "--threads", "1", "--device", "cpu",
                 "--jobs", "q8bert/sst2/qbert-*", "q8bert/mnli/*"]) == 1
    out = capsys.readouterr()
    assert "FAILED q8bert/sst2/qbert-w3e8-ft-seed0" in out.out and "q8bert/sst2/fp32-seed0" not in out.out
    assert "--jobs 'q8bert/mnli/*': no job of the protocol has a matching name" in out.err


def test_a_pattern_is_unmatched_only_where_every_stage_missed_it_in_the_order_given():
    lines = unmatched_patterns(["b*", "a*", "c*"], [["a*", "b*", "c*"], ["c*", "b*"]])
    assert lines == ["--jobs 'b*': no job of the protocol has a matching name",
                     "--jobs 'c*': no job of the protocol has a matching name"]
    assert unmatched_patterns(["a*"], []) == ["--jobs 'a*': no job of the protocol has a matching name"]


def test_list_prints_the_selected_plan_runs_nothing_and_names_a_pattern_matching_no_job(capsys):
    results = str(Path(__file__).parents[1] / "results")  # the committed results: RTE's seed-0 QAT is finished
    assert main(["--list", "--results", results, "--only", "q8bert", "--jobs", "q8bert/rte/qat-seed0"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: 0 job(s), 0 to run" in out and "stage 2: 1 job(s), 0 to run\n  done   q8bert/rte/qat-seed0" in out
    assert main(["--list", "--results", results, "--only", "q8bert", "--jobs", "q8bert/mnli/*"]) == 1
    assert "--jobs 'q8bert/mnli/*': no job of the protocol has a matching name" in capsys.readouterr().err


def test_spectrum_job_measures_the_seed_0_baseline_where_the_tables_read_it():
    job = spectrum_job("cola", "ckpt", "res")
    assert job["init_from"] == str(fp32_checkpoint("ckpt", "cola", 0))
    assert job["results_path"] == "res/qbert/spectrum-cola.json"


def test_spectrum_job_is_the_chapters_quick_false_run():
    import ast
    import inspect
    from pathlib import Path

    import papermill

    from qlib.experiments.qbert import run_spectrum

    declared = papermill.inspect_notebook(str(Path(__file__).parents[1] / "chapters" / "qbert_sensitivity.ipynb"))
    parameters = {name: ast.literal_eval(p["default"]) for name, p in declared.items()}
    defaults = {name: p.default for name, p in inspect.signature(run_spectrum).parameters.items()}
    job = defaults | spectrum_job("sst2", "ckpt", "res")
    for name in ("model", "subsets", "subset_size", "max_iter", "tol", "landscape_points"):
        assert job[name] == parameters[name], name
    assert list(job["batch_sizes"]) == parameters["batch_sizes"]
    assert list(job["landscape_blocks"]) == parameters["landscape_blocks"]
    assert parameters["init_from"] == "baseline"  # the chapter's "baseline" is the seed-0 model the job names


@pytest.mark.slow
def test_runner_measures_a_missing_spectrum_between_the_baselines_and_the_qat_rows(glue_dir, tiny_model_dir,
                                                                                   tmp_path, monkeypatch, capsys):
    import qlib.experiments.protocol

    model = {"path": str(tiny_model_dir)}
    monkeypatch.setattr(qlib.experiments.protocol, "baseline_jobs", lambda tasks, checkpoints, results=None: [
        Job(RunSpec(t, "fp32", protocol=TrainingProtocol(model=model["path"], epochs=1, batch_size=4, max_length=16)),
            "qbert", checkpoint_dir=str(checkpoints), results=str(results)) for t in tasks])
    real_spectrum_job = qlib.experiments.protocol.spectrum_job
    monkeypatch.setattr(qlib.experiments.protocol, "spectrum_job", lambda *args: real_spectrum_job(*args) | dict(
        model=str(tiny_model_dir), subsets=2, subset_size=4, max_length=16, max_iter=5, landscape_blocks=()))
    spectra_seen = {}

    def qat_jobs(tasks, checkpoints, spectra, results):
        spectra_seen.update(spectra)
        return qlib.experiments.protocol.baseline_jobs(tasks, checkpoints, results), [], []

    monkeypatch.setattr(qlib.experiments.protocol, "qbert_jobs", qat_jobs)
    args = ["--only", "qbert", "--qbert-tasks", "sst2", "--threads", "1", "--device", "cpu"]

    assert main([*args, "--checkpoints", str(tmp_path / "ckpt"), "--results", str(tmp_path / "results")]) == 0
    spectrum = read_json(tmp_path / "results" / "qbert" / "spectrum-sst2.json")
    assert spectrum["params"]["init_from"] == str(fp32_checkpoint(tmp_path / "ckpt" / "qbert", "sst2", 0))
    assert spectra_seen["sst2"]["blocks"] == spectrum["blocks"]  # the QAT rows' bits come from the new spectrum

    model["path"] = str(tmp_path / "no-model")  # a Baseline that fails: no model, so no spectrum, no QAT rows
    capsys.readouterr()
    assert main([*args, "--checkpoints", str(tmp_path / "none"), "--results", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert ("3 job(s) failed or not started: qbert/sst2/fp32-seed0; spectrum of sst2; "
            "the Q-BERT MP rows of sst2 (no spectrum)") in err


def test_the_fp32_sweep_covers_every_small_task_at_every_grid_point_and_writes_apart():
    assert set(SWEEP_TASKS) == {"cola", "rte", "mrpc", "stsb"} and SWEEP_GRID == {"lr": (2e-5, 5e-5), "epochs": (3, 6)}
    jobs = sweep_jobs()
    assert len(jobs) == len(SWEEP_TASKS) * len(SWEEP_GRID["lr"]) * len(SWEEP_GRID["epochs"])
    assert {(j.spec.task, j.spec.protocol.lr, j.spec.protocol.epochs) for j in jobs} == {
        (t, lr, e) for t in SWEEP_TASKS for lr in SWEEP_GRID["lr"] for e in SWEEP_GRID["epochs"]}
    assert all(j.spec.method == "fp32" and j.spec.seed == 0 and j.post_training == () for j in jobs)
    assert [j.spec.task for j in jobs[:4]] == [SWEEP_TASKS[0]] * 4  # task by task
    assert jobs[0].folder == "q8bert-sweep/lr2e-05-ep3" and len({j.folder for j in jobs}) == 4


@pytest.mark.slow
def test_a_job_run_through_its_chapter_writes_what_the_direct_call_writes(glue_dir, tiny_model_dir, tmp_path):
    from pathlib import Path

    from qlib.experiments.protocol import via_papermill

    tiny = TrainingProtocol(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16)
    job = Job(RunSpec("sst2", "fp32", protocol=tiny), "q8bert", (RunSpec("sst2", "dq", protocol=tiny),),
              results=str(tmp_path / "papermill"), snapshot_dir=str(tmp_path / "snapshots"))
    assert Job.from_json(job.to_json()) == job
    direct = replace(job, results=str(tmp_path / "direct"))
    direct()
    chapters = Path(__file__).parents[1] / "chapters"
    notebook_job = via_papermill(job, chapters, tmp_path / "notebooks")
    assert notebook_job.name == job.name and not notebook_job.done()
    notebook_job()
    assert notebook_job.done() and (tmp_path / "notebooks" / "job-q8bert-sst2-fp32-seed0.ipynb").is_file()
    for row in (job.spec, *job.post_training):
        through_chapter, called = (read_json(row.result_path(j.results_dir)) for j in (job, direct))
        assert through_chapter["metrics"] == called["metrics"] and through_chapter["spec"] == called["spec"]


def test_the_beyond_chapters_jobs_are_integer_qat_and_distilled_rows_after_their_baselines(swept):
    from qlib.experiments.protocol import (
        DISTILLED_SETTINGS,
        INTEGER_TASKS,
        LOGITS_ONLY_SETTINGS,
        LONGER_SCHEDULE,
        QUANTIZER_FOLDER,
        SCHEDULE_FOLDER,
        beyond_jobs,
    )

    jobs = beyond_jobs("ckpt", seeds=(0, 1), results=swept)
    integer = [j for j in jobs if j.spec.integer_nonlinearities]
    distilled = [j for j in jobs if j.spec.distillation]
    assert {j.spec.label for j in integer} == {"qat-int"} and {j.spec.task for j in integer} == set(INTEGER_TASKS)
    longer = [j for j in jobs if j.folder == SCHEDULE_FOLDER]
    ternary = [j for j in jobs if j.folder == QUANTIZER_FOLDER]
    distilled = [j for j in distilled if j not in longer + ternary]
    assert len(distilled) == (len(DISTILLED_SETTINGS) - 1 + len(LOGITS_ONLY_SETTINGS)) * 2
    assert all(j.experiment == "beyond" for j in jobs)
    # the schedule ablation: the 2-bit row plain and distilled, seed 0, on TernaryBERT's schedule, in its own folder
    assert sorted(j.name for j in longer) == [f"{SCHEDULE_FOLDER}/sst2/qbert-w2e8-g12-p99.9-{k}ft-seed0"
                                              for k in ("", "kdh-")]
    assert all((j.spec.protocol.epochs, j.spec.protocol.lr) == (LONGER_SCHEDULE["epochs"], LONGER_SCHEDULE["lr"])
               and j.needs == ("qbert/sst2/fp32-seed0",) for j in longer)
    # the quantizer ablation: the 2-bit row with TernaryBERT's ternary weights, plain and distilled, every seed
    assert sorted(j.name for j in ternary) == [f"{QUANTIZER_FOLDER}/sst2/qbert-w2e8-twn-{k}ft-seed{s}"
                                               for k in ("", "kdh-") for s in (0, 1)]
    assert all(j.spec.ternary and j.spec.groups is None and j.spec.protocol == distilled[0].spec.protocol
               and j.needs == (f"qbert/sst2/fp32-seed{j.spec.seed}",) for j in ternary)
    assert {j.spec.label for j in distilled} == {f"qbert-w{b}e8-g12-p99.9-kdh-ft" for b in (8, 4, 3, 2)} | {
        "qbert-w2e8-g12-p99.9-kd-ft"}  # the 2-bit row distilled from the logits alone, beside its full distillation
    assert all(j.needs == (f"qbert/sst2/fp32-seed{j.spec.seed}",) and j.spec.init_from
               == str(fp32_checkpoint("ckpt", "sst2", j.spec.seed)) for j in distilled)
    assert {j.spec.protocol.epochs for j in integer if j.spec.task == "mrpc"} == {6}  # the sweep's pick
    with_spectrum = beyond_jobs("ckpt", seeds=(0,), results=swept, integer_tasks=(), spectra={"sst2": SPECTRUM})
    mixed = [j for j in with_spectrum if j.spec.layer_bits]  # Q-BERT's MP 2/3, distilled, once the spectrum is in
    assert [j.spec.label for j in mixed] == ["qbert-w2e8-g12-p99.9-mp2-3-kdh-ft"]
    assert dict(mixed[0].spec.layer_bits) == dict(setting_spec("Q-BERT_MP 2/3", "sst2", 0, HEADS, "ckpt",
                                                               SPECTRUM).layer_bits)


def test_a_result_on_the_altered_copy_is_not_done_and_is_re_run(tmp_path):
    """A result from before results recorded their data (the earlier, altered GLUE copy) does not count as done:
    the protocol re-runs it on the official files; one that records its data does."""
    job = Job(RunSpec("sst2", "fp32", 0), "q8bert", post_training=(RunSpec("sst2", "dq", 0),), results=str(tmp_path))
    paths = [row.result_path(job.results_dir) for row in (job.spec, *job.post_training)]
    assert not job.done()
    for path in paths:
        write_json(path, {"provenance": {"machine": {}}})  # the old files: no provenance['data']
    assert not job.done()
    for path in paths:
        write_json(path, {"provenance": {"data": {"source": "local", "files": {"sst2/dev.tsv": "0" * 64}}}})
    assert job.done()
    spectrum = SpectrumJob({"task": "sst2", "results_path": str(tmp_path / "spectrum-sst2.json")})
    write_json(tmp_path / "spectrum-sst2.json", {"provenance": {}})
    assert not spectrum.done()


def test_a_spectrum_on_the_altered_copy_is_measured_again_before_the_mp_rows(tmp_path):
    from qlib.experiments.protocol import _present_spectra

    blocks = {"blocks": {"encoder.layer.0": {"omega": 1.0}}}
    write_json(tmp_path / "spectrum-sst2.json", blocks | {"provenance": {}})
    write_json(tmp_path / "spectrum-cola.json", blocks | {"provenance": {"data": {"source": "hub"}}})
    assert list(_present_spectra(tmp_path, ["sst2", "cola", "rte"])) == ["cola"]


@pytest.mark.slow
def test_the_new_tasks_jobs_run_on_a_tiny_model(task_data, tiny_model_dir, tmp_path):
    """The protocol's own CoNLL-03 and SQuAD jobs, shrunk to a tiny model and protocol: each task's Baseline (with its
    DirectQ rows, keeping its model), the Q-BERT 2/8 row from that model, and the spectrum with its batch-size
    study, whose saddle verdict and batch-size table the chapter shows."""
    tiny = dict(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16, doc_stride=4)

    def shrink(spec: RunSpec) -> RunSpec:  # the tiny model's 4 heads: one group per head, as G = HEADS is for 12
        return spec.with_(**tiny, **({"groups": 4} if spec.groups == HEADS else {}))

    checkpoints, results = tmp_path / "ckpt", tmp_path / "results"
    baselines, rows, _ = qbert_jobs(["conll2003", "squad"], checkpoints, seeds=(0,), results=results)
    two_bit = [j for j in rows if j.spec.weight_bits == 2 and not j.spec.layer_bits]
    for job in [*baselines, *two_bit]:
        records = replace(job, spec=shrink(job.spec), post_training=tuple(map(shrink, job.post_training))).run()
        assert all(0 <= r["metrics"][r["main_metric"]] <= 1 and r["main_metric"] == "f1" for r in records)
        assert all(r["provenance"]["data"]["files"] for r in records)
    assert {(r.parent.name, r.name) for r in (results / "qbert").rglob("*.json")} >= {
        (t, f) for t in ("conll2003", "squad") for f in ("fp32-seed0.json", "directq-w2-p99.9-seed0.json",
                                                         "qbert-w2e8-g4-p99.9-ft-seed0.json")}
    arguments = spectrum_job("conll2003", checkpoints, results) | dict(
        model=str(tiny_model_dir), subsets=2, subset_size=2, max_length=16, max_iter=5, landscape_blocks=(),
        batch_sizes=(2, 4), batch_size_subsets=2)
    SpectrumJob(arguments)()
    spectrum = read_json(results / "qbert" / "spectrum-conll2003.json")
    assert spectrum["params"]["init_from"] == str(fp32_checkpoint(checkpoints, "conll2003", 0))
    study = batch_size_effect({"conll2003": spectrum})
    assert list(study.index) == [("conll2003", 2), ("conll2003", 4)] and (study["batches"] == 2).all()
    assert saddle_points({"conll2003": spectrum})[0].startswith("**conll2003**: ")


@pytest.mark.slow
def test_a_shared_fp32_run_writes_each_chapters_rows_in_its_folder(glue_dir, tiny_model_dir, tmp_path):
    tiny = TrainingProtocol(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16)
    results = tmp_path / "results"
    q8 = [Job(RunSpec("sst2", "fp32", protocol=tiny), "q8bert", (RunSpec("sst2", "dq", protocol=tiny),),
              results=str(results))]
    fp32 = RunSpec("sst2", "fp32", protocol=tiny)
    baseline = Job(fp32, "qbert", directq_specs(fp32, 4), checkpoint_dir=str(tmp_path / "ckpt"), results=str(results))
    (shared,), left = share_fp32_runs(q8, [baseline])
    assert not left and not shared.done()
    records = shared.run()
    assert shared.done() and len(records) == 1 + 6 + 2
    q8bert = sorted(p.name for p in (results / "q8bert" / "sst2").iterdir())
    qbert = sorted(p.name for p in (results / "qbert" / "sst2").iterdir())
    assert q8bert == ["dq-seed0.json", "fp32-seed0.json"] and "dq-seed0.json" not in qbert and len(qbert) == 7
    one, other = (read_json(results / folder / "sst2" / "fp32-seed0.json") for folder in ("q8bert", "qbert"))
    assert one == other  # the same run's record, written twice by that run
