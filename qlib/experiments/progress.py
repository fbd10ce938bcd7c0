"""How far the book's protocol has come: every job of ``qlib.experiments.protocol`` as it stands under a results
folder, finished (its result files record the data they read) or still to run, and what the rest would cost,
estimated from the runs already measured. ``python -m qlib.experiments.progress`` prints it; the status page shows
it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from qlib.experiments.experiment import snapshot_folder
from qlib.experiments.protocol import Job, second_stage, sweep_jobs, wanted_tasks
from qlib.experiments.results import dev_set_size, estimated_hours, read_json, records_its_data
from qlib.experiments.spec import RunSpec


def protocol_progress(results: str | Path = "results", checkpoints: str | Path = "runs/checkpoints",
                      snapshots: str | Path = "runs/snapshots") -> tuple[pd.DataFrame, list[str]]:
    """One row per (results folder, task) of the protocol's stages 1 and 2 (stage 3's MP rows wait for their
    spectrum; the FP32 sweep's points are one folder): its jobs, how many are finished, how many are still to run,
    how many of those are partly trained (a training snapshot under ``snapshots``, which the protocol's runner goes on
    from: ``qlib.experiments.snapshots``), and the estimated CPU hours of those still to run, as if from the start
    (``qlib.experiments.results.estimated_hours``): each one from the finished jobs of the same task and method, else
    from their CPU runs on the earlier, altered copy (the same sizes, so about the same cost), else from the task's
    finished FP32 jobs (a lower bound: QAT trains slower), else from a CPU run of the task's FP32 outside the protocol
    that records its data (a sizing run such as ``results/squad-sizing``: a lower bound), else unknown (a Hessian
    spectrum has no such estimate); each one's dev evaluation is scaled to the whole dev set
    (``qlib.experiments.results.dev_set_size``). An estimate of a length-grouped job from runs on random batches only
    says so (", from random batches": they pad more, so it overstates). The hours are None where none of a row's
    jobs has one.

    Returns:
        The table, and what it leaves out (tasks whose FP32 sweep is incomplete, spectra that stage 3 waits for).
    """
    jobs, waiting, unmeasured = second_stage(wanted_tasks(), results, checkpoints)
    jobs = [*sweep_jobs(results=results), *jobs]
    on_disk = [(j, read_json(j.spec.result_path(j.results_dir))) for j in jobs
               if isinstance(j, Job) and j.spec.result_path(j.results_dir).is_file()]
    finished = [(j.spec, r) for j, r in on_disk if j.recorded()]
    earlier = [(j.spec, r) for j, r in on_disk if not j.recorded()  # a CPU run on the earlier, altered copy
               and r["provenance"].get("machine", {}).get("device") == "cpu"]
    planned = {j.spec.result_path(j.results_dir).resolve() for j in jobs if isinstance(j, Job)}
    sizing = [(RunSpec.from_record(r), r) for path in sorted(Path(results).glob("*/*/*.json"))  # e.g. squad-sizing
              if path.resolve() not in planned and records_its_data(path) and "spec" in (r := read_json(path))
              and r["provenance"].get("machine", {}).get("device") == "cpu"]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for job in jobs:
        is_run = isinstance(job, Job)
        folder = (job.folder or job.experiment).split("/")[0] if is_run else "qbert (spectrum)"
        key = (folder, job.spec.task if is_run else job.arguments["task"])
        row = rows.setdefault(key, {"jobs": 0, "finished": 0, "to run": 0, "partly trained": 0,
                                    "est. CPU h": None, "estimate": set()})
        row["jobs"] += 1
        if job.recorded():
            row["finished"] += 1
            continue
        row["to run"] += 1
        row["partly trained"] += is_run and any(snapshot_folder(job.spec, snapshots).glob("finetune-*.safetensors"))
        hours, how = None, "partly unknown"
        if is_run:
            dev = None if job.spec.protocol.max_eval_examples else dev_set_size(results, job.spec.task)
            for method, basis, pool in ((job.spec.method, "measured", finished),
                                        (job.spec.method, "earlier copy", earlier),
                                        ("fp32", "FP32 (lower bound)", finished),
                                        ("fp32", "sizing run (lower bound)", sizing)):
                alike = [(spec, r) for spec, r in pool if (spec.task, spec.method) == (job.spec.task, method)]
                hours = estimated_hours([r for _, r in alike], job.spec.protocol.max_train_examples, job.spec.passes,
                                        dev)
                if hours is not None:
                    random = job.spec.protocol.group_by_length and not any(
                        spec.protocol.group_by_length for spec, _ in alike)
                    how = basis + (", from random batches" if random else "")
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
