"""How far the book's protocol has come: every job of ``qlib.experiments.protocol`` as it stands under a results
folder, finished (its result files record the data they read) or still to run, and what the rest would cost,
estimated from the runs already measured. ``python -m qlib.experiments.progress`` prints it; the status page shows
it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from qlib.experiments.protocol import Job, second_stage, sweep_jobs, wanted_tasks
from qlib.experiments.results import read_json


def _hours_per_epoch(job: Job) -> float:
    wall = read_json(job.spec.result_path(job.results_dir))["provenance"]["wall_time_s"]
    return wall / 3600 / job.spec.protocol.epochs


def protocol_progress(results: str | Path = "results", checkpoints: str | Path = "runs/checkpoints/qbert",
                      ) -> tuple[pd.DataFrame, list[str]]:
    """One row per (results folder, task) of the protocol's stages 1 and 2 (stage 3's MP rows wait for their
    spectrum; the FP32 sweep's points are one folder): its jobs, how many are finished, how many are still to run,
    and the estimated CPU hours of those: each one at the mean wall time per epoch of the finished jobs of the same
    task and method, times its epochs, else of the task's finished FP32 jobs (a lower bound: QAT trains slower),
    else unknown (a Hessian spectrum has no such estimate); the hours are None where none of a row's jobs has one.

    Returns:
        The table, and what it leaves out (tasks whose FP32 sweep is incomplete, spectra that stage 3 waits for).
    """
    jobs, waiting, unmeasured = second_stage(wanted_tasks(), results, checkpoints)
    jobs = [*sweep_jobs(results=results), *jobs]
    finished = [j for j in jobs if isinstance(j, Job) and j.recorded()]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        kind = isinstance(job, Job)
        folder = (job.folder or job.experiment).split("/")[0] if kind else "qbert (spectrum)"
        key = (folder, job.spec.task if kind else job.arguments["task"])
        row = rows.setdefault(key, {"jobs": 0, "finished": 0, "to run": 0, "est. CPU h to run": None,
                                    "estimate": set()})
        row["jobs"] += 1
        if job.recorded():
            row["finished"] += 1
            continue
        row["to run"] += 1
        task, method = (job.spec.task, job.spec.method) if kind else (None, None)
        same = [_hours_per_epoch(j) for j in finished if (j.spec.task, j.spec.method) == (task, method)]
        fp32 = [_hours_per_epoch(j) for j in finished if (j.spec.task, j.spec.method) == (task, "fp32")]
        per_epoch, how = ((sum(same) / len(same), "measured") if same else
                          (sum(fp32) / len(fp32), "at least (FP32's time)") if fp32 else (None, "partly unknown"))
        if per_epoch is not None:
            row["est. CPU h to run"] = (row["est. CPU h to run"] or 0.0) + per_epoch * job.spec.protocol.epochs
        row["estimate"].add(how)
    for row in rows.values():
        row["estimate"] = ", ".join(sorted(row["estimate"])) or "—"
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["results folder", "task"]).round(1)
    left_out = [f"{t}: its FP32 sweep is incomplete, so its rows are not planned yet" for t in waiting]
    left_out += [f"{t}: the Q-BERT MP rows wait for its Hessian spectrum (stage 3)" for t in unmeasured]
    return table, left_out


if __name__ == "__main__":
    progress, notes = protocol_progress(*sys.argv[1:2])
    print(progress.to_string())
    print("\n".join(notes))
    print(f"to run: {int(progress['to run'].sum())} job(s), est. {progress['est. CPU h to run'].sum():.1f} CPU h "
          "where estimated")
