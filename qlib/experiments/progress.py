"""How far the book's protocol has come: every job of ``qlib.experiments.protocol`` as it stands under a results
folder, finished (its result files record the data they read) or still to run, and what the rest would cost,
estimated from the runs already measured. ``python -m qlib.experiments.progress`` prints it; the status page shows
it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from qlib.experiments.experiment import snapshot_folder
from qlib.experiments.protocol import Job, second_stage, sweep_jobs, wanted_tasks
from qlib.experiments.results import read_json, records_its_data
from qlib.experiments.spec import RunSpec, TrainingProtocol


def dev_set_size(results: str | os.PathLike, task: str) -> int | None:
    """How many examples ``task``'s whole dev set has, as ``<results>/benchmarks/constant_answer.json`` counted them
    (None where that file or the task is missing): what ``estimated_hours`` scales a run's evaluation to."""
    floors = Path(results) / "benchmarks" / "constant_answer.json"
    return read_json(floors)["tasks"].get(task, {}).get("dev examples") if floors.is_file() else None


def grouped_speedups(results: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Per task, how many times faster a training step on length-grouped batches is than one on random batches,
    FP32 and QAT (``{"fp32": …, "qat": …}``), from the newest run of ``benchmarks/batching.py`` under
    ``<results>/benchmarks`` ({} where none is committed)."""
    runs = [read_json(p) for p in Path(results, "benchmarks").glob("batching-*.json")]
    if not runs:
        return {}
    newest = max(runs, key=lambda run: run["provenance"]["date"])
    return {task: {"fp32": row["fp32_speedup"], "qat": row["qat_speedup"]} for task, row in newest["tasks"].items()}


def on_cpu(record: dict[str, Any]) -> bool:
    """Whether a result record was measured on a CPU (a GPU's time is no guide to a CPU run's)."""
    return record["provenance"].get("machine", {}).get("device") == "cpu"


def estimated_hours(records: Sequence[dict[str, Any]], examples: int | None, passes: int,
                    dev_examples: int | None = None, grouped_speedup: float | None = None,
                    evaluations: int = 1) -> float | None:
    """What one run of a protocol would take, in wall hours, estimated from measured runs (``records``) of the same
    task: the mean over them of their training seconds per training example and pass over the data (a record's
    ``train.seconds`` over its epochs; an iPQ record's are its last stage's) times ``examples`` (None: the whole
    training set, known only from a record trained on all of it) and ``passes`` (a spec's ``passes``: iPQ makes one
    per stage), plus their dev evaluation, scaled to ``dev_examples`` (None: as measured), times ``evaluations`` (how
    many the run makes: an FP32 Baseline also evaluates each of its post-training rows, ``Job.evaluations``; each
    counts as long as the record's own, so a quantized row's slower one is understated). ``grouped_speedup``: for
    a run on length-grouped batches, how many times faster its steps are than random batches' (``grouped_speedups``);
    the training time of a record made on random batches (``TrainingProtocol.recorded``) is divided by it. None when
    no record gives an estimate."""
    estimates = []
    for r in records:
        trained_on = r["params"].get("max_train_examples") or r["train"]["train_examples"]
        n = examples or (r["train"]["train_examples"] if r["params"].get("max_train_examples") is None else None)
        if n is None:
            continue
        evaluation = r["eval"]["seconds"] * (dev_examples / r["eval"]["examples"] if dev_examples else 1)
        random = not TrainingProtocol.recorded(r["params"]).group_by_length
        speedup = grouped_speedup if grouped_speedup is not None and random else 1.0
        estimates.append(r["train"]["seconds"] / (trained_on * r["params"]["epochs"]) * n * passes / speedup
                         + evaluation * evaluations)
    return sum(estimates) / len(estimates) / 3600 if estimates else None


def random_batches_caveat(records: Sequence[dict[str, Any]], grouped: bool, speedup: float | None) -> str:
    """What an estimate for a job on length-grouped batches (``grouped``) adds when any of the ``records`` it comes
    from trained on random batches (``TrainingProtocol.recorded``), which pad more: ", from random batches ÷ their
    measured speed-up" where ``estimated_hours`` divided their training time by ``speedup``, ", from random batches
    (an overestimate)" where none is measured; "" when nothing needs saying."""
    if not grouped or all(TrainingProtocol.recorded(r["params"]).group_by_length for r in records):
        return ""
    return ", from random batches" + (" ÷ their measured speed-up" if speedup else " (an overestimate)")


def protocol_progress(results: str | Path = "results", checkpoints: str | Path = "runs/checkpoints",
                      snapshots: str | Path = "runs/snapshots") -> tuple[pd.DataFrame, list[str]]:
    """One row per (results folder, task) of the protocol's stages 1 and 2 (stage 3's MP rows wait for their spectrum;
    the FP32 sweep's points are one folder): its jobs, how many are finished, how many are still to run, how many of
    those are partly done (a training snapshot under ``snapshots``, or a spectrum's kept eigenvalues, which the
    protocol's runner goes on from: ``qlib.experiments.snapshots``), and the estimated CPU hours of those still to run,
    as if from the start (``estimated_hours``): each one from the finished jobs of the same task and method, else from
    their CPU runs on the earlier, altered copy (the same sizes, so about the same cost), else from the task's finished
    FP32 jobs (a lower bound: QAT trains slower), else from a CPU run of the task's FP32 outside the protocol that
    records its data (a sizing run such as ``results/squad-sizing``: a lower bound), else unknown (a Hessian spectrum
    has no such estimate); each one's dev evaluation is scaled to the whole dev set (``dev_set_size``) and counted once
    per evaluation the job makes (``Job.evaluations``: a Baseline's post-training rows too). An estimate of a
    length-grouped job from runs on random batches divides their training time by the step speed-up that
    ``benchmarks/batching.py`` measured for the task (``grouped_speedups``; FP32's for an FP32 job, QAT's for the
    others), and says so (``random_batches_caveat``); without a measured speed-up it overstates. The hours are None
    where none of a row's jobs has one.

    Returns:
        The table, and what it leaves out (tasks whose FP32 sweep is incomplete, spectra that stage 3 waits for).
    """
    jobs, waiting, unmeasured = second_stage(wanted_tasks(), results, checkpoints)
    speedups = grouped_speedups(results)
    jobs = [*sweep_jobs(results=results), *jobs]
    on_disk = [(j, read_json(j.spec.result_path(j.results_dir))) for j in jobs
               if isinstance(j, Job) and j.spec.result_path(j.results_dir).is_file()]
    finished = [(j.spec, r) for j, r in on_disk if j.recorded()]
    earlier = [(j.spec, r) for j, r in on_disk if not j.recorded()  # a CPU run on the earlier, altered copy
               and on_cpu(r)]
    planned = {j.spec.result_path(j.results_dir).resolve() for j in jobs if isinstance(j, Job)}
    sizing = [(RunSpec.from_record(r), r) for path in sorted(Path(results).glob("*/*/*.json"))  # e.g. squad-sizing
              if path.resolve() not in planned and records_its_data(path) and "spec" in (r := read_json(path))
              and on_cpu(r)]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        is_run = isinstance(job, Job)
        folder = (job.folder or job.experiment).split("/")[0] if is_run else "qbert (spectrum)"
        key = (folder, job.spec.task if is_run else job.arguments["task"])
        row = rows.setdefault(key, {"jobs": 0, "finished": 0, "to run": 0, "partly done": 0,
                                    "est. CPU h": None, "estimate": set()})
        row["jobs"] += 1
        if job.recorded():
            row["finished"] += 1
            continue
        row["to run"] += 1
        row["partly done"] += (any(snapshot_folder(job.spec, snapshots).glob("finetune-*.safetensors")) if is_run
                               else job.kept(snapshots) > 0)
        hours, how = None, "partly unknown"
        if is_run:
            dev = None if job.spec.protocol.max_eval_examples else dev_set_size(results, job.spec.task)
            speedup = (speedups.get(job.spec.task, {}).get("fp32" if job.spec.method == "fp32" else "qat")
                       if job.spec.protocol.group_by_length else None)
            for method, basis, pool in ((job.spec.method, "measured", finished),
                                        (job.spec.method, "earlier copy", earlier),
                                        ("fp32", "FP32 (lower bound)", finished),
                                        ("fp32", "sizing run (lower bound)", sizing)):
                alike = [(spec, r) for spec, r in pool if (spec.task, spec.method) == (job.spec.task, method)]
                hours = estimated_hours([r for _, r in alike], job.spec.protocol.max_train_examples, job.spec.passes,
                                        dev, speedup, job.evaluations)
                if hours is not None:
                    how = basis + random_batches_caveat([r for _, r in alike], job.spec.protocol.group_by_length,
                                                        speedup)
                    break
        if hours is not None:
            row["est. CPU h"] = (row["est. CPU h"] or 0.0) + hours
        row["estimate"].add(how)
    for row in rows.values():
        row["estimate"] = ", ".join(sorted(row["estimate"])) or "—"
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["results folder", "task"]).round(1)
    left_out = [f"{t}: its FP32 sweep is incomplete, so its rows are not planned yet" for t in waiting]
    left_out += [f"{t}: the Q-BERT MP rows wait for its Hessian spectrum (stage 3)" for t in unmeasured]
    return table, left_out


def main(argv: list[str] | None = None) -> int:
    """``python -m qlib.experiments.progress [RESULTS] [--checkpoints DIR] [--snapshots DIR]``: print the table, what
    it leaves out, and the total; a results folder that does not exist is an error (a typo would read as nothing
    run)."""
    parser = argparse.ArgumentParser(prog="python -m qlib.experiments.progress",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default="results", help="the protocol's results folder")
    parser.add_argument("--checkpoints", default="runs/checkpoints", help="where the protocol keeps its models")
    parser.add_argument("--snapshots", default="runs/snapshots", help="where it keeps its training snapshots")
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        parser.error(f"results folder {args.results!r} does not exist (default: 'results', run from the book's root)")
    progress, notes = protocol_progress(args.results, args.checkpoints, args.snapshots)
    print(progress.to_string())
    print("\n".join(notes))
    print(f"to run: {int(progress['to run'].sum())} job(s), est. {progress['est. CPU h'].sum():.1f} CPU h "
          "where estimated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
