"""The Dask machinery under qlib.experiments.protocol and qlib.experiments.batch: a LocalCluster of two single-thread
workers runs a tiny protocol with a dependency chain, a failing job and a resume, and writes the same results as the
direct serial run; clusters are sized so the CPU is not oversubscribed; the SLURM recipe's job script is built."""

from __future__ import annotations

from dataclasses import dataclass

import dask
import pytest
import torch
from distributed import Client

from qlib.experiments.jobs import (
    close_client,
    defer_model_reruns,
    execute,
    local_cluster_size,
    make_client,
    plan_lines,
    resources_for,
    select_jobs,
)
from qlib.experiments.protocol import Job
from qlib.experiments.results import read_json
from qlib.experiments.spec import RunSpec, TrainingProtocol


def tiny_protocol_jobs(model_dir, results, checkpoints) -> list[Job]:
    """Baseline → QAT row from its model; a job that fails (a missing model) → a job that needs it."""
    tiny = TrainingProtocol(model=str(model_dir), epochs=1, batch_size=4, max_length=16)
    baseline = Job(RunSpec("sst2", "fp32", protocol=tiny), "qbert", (RunSpec("sst2", "dq", protocol=tiny),),
                   checkpoint_dir=str(checkpoints), results=str(results))
    start = str(checkpoints / "sst2" / "fp32-seed0.safetensors")
    qat = Job(RunSpec("sst2", "qbert", weight_bits=3, groups=4, init_from=start, protocol=tiny), "qbert",
              needs=(baseline.name,), results=str(results))
    broken = Job(RunSpec("rte", "fp32", protocol=TrainingProtocol(model=str(results / "no-model"))), "qbert",
                 results=str(results))
    after_broken = Job(RunSpec("rte", "qat", protocol=tiny), "qbert", needs=(broken.name,), results=str(results))
    return [baseline, qat, broken, after_broken]


@pytest.mark.slow
def test_a_local_cluster_runs_the_chain_names_the_failure_resumes_and_matches_the_serial_run(glue_dir, tiny_model_dir,
                                                                                              tmp_path):
    jobs = tiny_protocol_jobs(tiny_model_dir, tmp_path / "dask", tmp_path / "ckpt-dask")
    client, threads = make_client(workers=2, threads=1)
    lines: list[str] = []
    # a worker is never dropped for missing heartbeats: a run paused with SIGSTOP resumes instead of restarting
    assert client.cluster.scheduler.worker_ttl is None
    try:
        report = execute(jobs, client, threads, progress=lines.append)
        statuses = {o.name: o.status for o in report.outcomes}
        assert statuses == {"qbert/sst2/fp32-seed0": "done", "qbert/sst2/qbert-w3e8-g4-ft-seed0": "done",
                            "qbert/rte/fp32-seed0": "failed", "qbert/rte/qat-seed0": "not started"}
        failed = report.by_status("failed")[0]
        assert "no-model" in failed.error and "needs qbert/rte/fp32-seed0" in report.by_status("not started")[0].error
        assert all(o.worker.startswith("tcp://") and o.seconds > 0 for o in report.by_status("done"))
        assert len(lines) == 4 and "FAILED qbert/rte/fp32-seed0" in "\n".join(lines)
        assert "qbert/sst2/fp32-seed0: done on tcp://" in report.summary() and not report.ok

        again = execute(jobs, client, threads, progress=lines.append)  # resume: only what did not finish runs
        assert [o.status for o in again.outcomes] == ["skipped", "skipped", "failed", "not started"]
    finally:
        close_client(client)

    torch.set_num_threads(1)
    serial = tiny_protocol_jobs(tiny_model_dir, tmp_path / "serial", tmp_path / "ckpt-serial")
    for job in serial[:2]:  # the direct call, in this process, one after the other
        job()
    for dask_job, serial_job in zip(jobs[:2], serial[:2]):
        for row in (dask_job.spec, *dask_job.post_training):
            on_dask = read_json(row.result_path(dask_job.results_dir))
            direct = read_json(row.result_path(serial_job.results_dir))
            assert on_dask["metrics"] == direct["metrics"] and on_dask["train"]["steps"] == direct["train"]["steps"]


def test_job_lists_are_checked_before_anything_runs():
    class Named:
        def __init__(self, name, needs=()):
            self.name, self.needs, self.resources = name, needs, {}

    with pytest.raises(ValueError, match=r"job b needs \['c'\], which are not listed before it"):
        execute([Named("a"), Named("b", ("c",)), Named("c")], client=None)
    with pytest.raises(ValueError, match=r"job names must be unique; repeated: \['a'\]"):
        execute([Named("a"), Named("a")], client=None)


def test_clusters_do_not_oversubscribe_the_cores():
    assert local_cluster_size(cores=2) == (1, 2) and local_cluster_size(2, cores=2) == (2, 1)
    assert local_cluster_size(1, 1, cores=2) == (1, 1)
    with pytest.raises(ValueError, match="2 worker\\(s\\) × 2 thread\\(s\\) oversubscribe this machine's 2 cores"):
        local_cluster_size(2, 2, cores=2)
    with pytest.raises(ValueError, match="workers and threads must be positive, got 0"):
        local_cluster_size(0, cores=2)
    assert resources_for("cuda") == {"GPU": 1} and resources_for("cuda:1") == {"GPU": 1}
    assert resources_for("cpu") == {} and resources_for(None) == {}


def test_the_slurm_recipe_builds_its_job_script():
    pytest.importorskip("dask_jobqueue", reason="the SLURM recipe's extra (pip install dask-jobqueue)")
    from qlib.experiments.jobs import slurm_cluster

    cluster = slurm_cluster(jobs=0, cores=4, memory="16GB", walltime="02:00:00", queue="gpu", gpus=1)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH -t 02:00:00", "#SBATCH --cpus-per-task=4"):
        assert line in script, line
    assert "--nthreads 1" in script and "--resources GPU=1" in script  # one run at a time, on a GPU worker


def test_ctrl_c_cancels_what_has_not_finished_and_still_reports(tmp_path):
    @dataclass(frozen=True)
    class Sleep:
        name: str
        seconds: float
        needs: tuple[str, ...] = ()
        resources: tuple = ()

        def done(self) -> bool:
            return False

        recorded = done

        def __call__(self) -> str:
            import time

            time.sleep(self.seconds)
            return f"slept {self.seconds} s"

    def interrupt(line: str) -> None:  # the user presses Ctrl-C as the first job finishes
        raise KeyboardInterrupt

    client = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        report = execute([Sleep("short", 0.1), Sleep("long", 30.0), Sleep("after", 0.1, needs=("long",))], client,
                         progress=interrupt)
    finally:
        close_client(client)
    assert [o.status for o in report.outcomes] == ["done", "not started", "not started"]
    assert report.outcomes[1].error == "interrupted (Ctrl-C) before it finished"
    assert "1 done, 0 skipped, 0 failed, 2 not started" in report.summary()


@dataclass(frozen=True)
class Record:
    """A job that appends its name to ``log`` when it starts and fails where ``fails``."""

    name: str
    log: str
    needs: tuple[str, ...] = ()
    fails: bool = False
    resources: tuple = ()
    only_its_model_is_missing: bool = False

    def done(self) -> bool:
        return False

    def recorded(self) -> bool:
        return self.only_its_model_is_missing

    def __call__(self) -> str:
        with open(self.log, "a") as f:
            f.write(self.name + "\n")
        if self.fails:
            raise RuntimeError(f"{self.name} failed on purpose")
        return self.name


def test_one_worker_starts_the_jobs_in_the_order_they_are_listed(tmp_path):
    log = str(tmp_path / "started.txt")
    # names whose sorted order is not the list's; each QAT job needs the FP32 job before it
    jobs = []
    for i, task in enumerate(["rte", "mrpc", "stsb", "cola", "sst2", "squad"] * 3):
        fp32 = Record(f"{task}/fp32-seed{i // 6}", log)
        jobs += [fp32, Record(f"{task}/qat-seed{i // 6}", log, needs=(fp32.name,))]
    client, _ = make_client(workers=1, threads=1)
    try:
        # the worker samples no stacks: that profiler's CPU would come out of the training's two cores
        assert set(client.run(dask.config.get, "distributed.worker.profile.enabled").values()) == {False}
        report = execute(jobs, client, progress=lambda line: None, poll_s=0.05)
    finally:
        close_client(client)
    assert {o.status for o in report.outcomes} == {"done"}
    # each QAT row right after its Baseline (with Dask's priorities alone, a worker took later FP32 jobs first)
    assert open(log).read().split() == [job.name for job in jobs]


def test_a_job_rerun_only_for_its_lost_model_waits_until_a_job_starts_from_it(tmp_path):
    log = str(tmp_path / "started.txt")
    jobs = [Record("cola/fp32", log, only_its_model_is_missing=True), Record("sst2/fp32", log),
            Record("sst2/qat", log, needs=("sst2/fp32",)), Record("cola/qbert", log, needs=("cola/fp32",)),
            Record("sst2/deploy", log, only_its_model_is_missing=True), Record("rte/fp32", log)]
    assert [j.name for j in defer_model_reruns(jobs)] == ["sst2/fp32", "sst2/qat", "cola/fp32", "cola/qbert",
                                                        "sst2/deploy", "rte/fp32"]  # nothing needs the deployed one
    client = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        report = execute(jobs, client, progress=lambda line: None, poll_s=0.05)
    finally:
        close_client(client)
    assert {o.status for o in report.outcomes} == {"done"}
    assert open(log).read().split() == ["sst2/fp32", "sst2/qat", "cola/fp32", "cola/qbert", "sst2/deploy", "rte/fp32"]


def test_fail_fast_stops_at_the_first_failure_and_a_failure_reaches_the_jobs_after_its_dependents(tmp_path):
    log = str(tmp_path / "started.txt")
    jobs = [Record("a", log, fails=True), Record("b", log, needs=("a",)), Record("c", log, needs=("b",)),
            Record("d", log)]
    client = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        lines: list[str] = []
        report = execute(jobs, client, progress=lines.append, poll_s=0.05)
        assert [o.status for o in report.outcomes] == ["failed", "not started", "not started", "done"]
        assert report.outcomes[2].error == "needs b, which did not finish"
        assert lines[-1].startswith("[4/4; 1 done, 0 to go, 1 failed, 2 not started] DONE d")
        open(log, "w").close()
        stopped = execute(jobs, client, progress=lambda line: None, fail_fast=True, poll_s=0.05)
        assert [o.status for o in stopped.outcomes] == ["failed", "not started", "not started", "not started"]
        assert stopped.outcomes[3].error == "cancelled" and open(log).read().split() == ["a"]
    finally:
        close_client(client)


def test_jobs_wait_for_a_worker_to_join(tmp_path):
    import threading

    from distributed import LocalCluster

    log = str(tmp_path / "started.txt")
    cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=False, dashboard_address=None)
    client = Client(cluster)
    try:
        timer = threading.Timer(1.0, cluster.scale, args=(1,))  # a SLURM worker that starts after the run began
        timer.start()
        report = execute([Record("a", log), Record("b", log, needs=("a",))], client, progress=lambda line: None,
                         poll_s=0.05)
        timer.join()
    finally:
        close_client(client)
    assert [o.status for o in report.outcomes] == ["done", "done"] and open(log).read().split() == ["a", "b"]


@dataclass(frozen=True)
class Planned:
    """A job as the runner finds it: its result written (``finished``), or only its model missing (``recorded``)."""

    name: str
    needs: tuple[str, ...] = ()
    finished: bool = False
    model_lost: bool = False
    resources: tuple = ()

    def done(self) -> bool:
        return self.finished

    def recorded(self) -> bool:
        return self.finished or self.model_lost

    def __call__(self) -> str:
        raise AssertionError("a plan runs nothing")


def test_a_pattern_selects_its_jobs_with_everything_they_need_and_one_matching_nothing_is_named():
    baseline = Planned("qbert/sst2/fp32-seed0")
    spectrum = Planned("spectrum of sst2", needs=(baseline.name,))
    mixed = Planned("qbert/sst2/qbert-w2e8-g12-p99.9-mp2-3-ft-seed0", needs=(spectrum.name,))
    other = Planned("qbert/cola/fp32-seed0")
    jobs = [baseline, other, spectrum, mixed]
    selected, unmatched = select_jobs(jobs, ["qbert/sst2/*mp2-3*", "qbert/mnli/*"])
    assert selected == [baseline, spectrum, mixed]  # the spectrum's Baseline too, through the spectrum; list order
    assert unmatched == ["qbert/mnli/*"]
    assert select_jobs(jobs, ["qbert/*/fp32-seed0"]) == ([baseline, other], [])
    assert select_jobs(jobs, ["QBERT/*"]) == ([], ["QBERT/*"])  # whole names, case and all: no loose matches


def test_the_plan_says_what_a_run_would_do_with_each_job():
    jobs = [Planned("fp32-seed0", finished=True), Planned("fp32-seed1", model_lost=True), Planned("fp32-seed2"),
            Planned("qat-seed0", needs=("fp32-seed0",)), Planned("qat-seed1", needs=("fp32-seed1",)),
            Planned("qat-seed2", needs=("fp32-seed2",), finished=True)]
    assert plan_lines(jobs) == ["done   fp32-seed0", "rerun  fp32-seed1", "to run fp32-seed2",
                                "to run qat-seed0", "to run qat-seed1  (after fp32-seed1)", "done   qat-seed2"]
