"""The book's whole training protocol as one list of jobs, run without Jupyter: ``python -m qlib.protocol``.

Each job is the ``run_glue`` call a chapter's ``quick=False`` cell makes for one grid point of its papermill
batch (see each chapter's *Reproducing*): same function, same arguments, same result files. This runner is for
machines without Jupyter (a GPU box, a cluster node) and runs several jobs at once, each in its own process:

    python -m qlib.protocol --workers 8 --results results [--only q8bert] [--device cuda]

The first chapter's main table runs first, then the other main table seed by seed, then the ablations. Finished runs are skipped, so an interrupted
protocol resumes. A failing job is named; the others still run,
and the exit status is non-zero at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from qlib.experiment import protocol_for, run_glue
from qlib.qbert import MIXED_SETTINGS, SETTINGS, setting_job
from qlib.results import read_json

SEEDS = (0, 1, 2)
Q8BERT_TASKS = ("sst2", "cola", "rte")
HEADS = 12  # the packaged model's and BERT-base's attention heads: Q-BERT's G for the main table
ABLATION_GROUPS: tuple[int | str, ...] = (1, 4 * HEADS, "row")  # with G = HEADS from the main table
ABLATION_SETTING = "Q-BERT 3/8"
EMA_ABLATION_DECAY = 0.99


def q8bert_jobs(seeds=SEEDS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Q8BERT chapter: (FP32 (+DQ) and QAT on SST-2, CoLA and RTE; QAT with a shorter EMA, the ablation)."""
    main = [dict(experiment="q8bert", task=t, method=m, seed=s, **protocol_for(t))
            for t in Q8BERT_TASKS for s in seeds for m in ("fp32", "qat")]
    ablation = [dict(experiment="q8bert", task=t, method="qat", seed=s, ema_decay=EMA_ABLATION_DECAY,
                     **protocol_for(t)) for t in Q8BERT_TASKS for s in seeds]
    return main, ablation


def qbert_jobs(spectrum: dict[str, Any], tasks=("sst2",),
               seeds=SEEDS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Q-BERT II chapter: (every row of the main table at G = heads; the group-wise ablation at 3 bits)."""
    settings = ["Baseline", *SETTINGS, *MIXED_SETTINGS]
    main = [dict(experiment="qbert", task=t, seed=s, groups=HEADS, **setting_job(name, spectrum), **protocol_for(t))
            for t in tasks for name in settings for s in seeds]
    ablation = [dict(experiment="qbert", task=t, seed=s, groups=g, **setting_job(ABLATION_SETTING),
                     **protocol_for(t)) for t in tasks for g in ABLATION_GROUPS for s in seeds]
    return main, ablation


def _by_seed(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed 0 of every row first, then seed 1, …: a partial run still fills every row (stable within a seed)."""
    return sorted(jobs, key=lambda job: job["seed"])


def _run(job: dict[str, Any], results: str, device: str | None, threads: int,
         checkpoints: str | None) -> tuple[str, float]:
    torch.set_num_threads(threads)
    job = dict(job)
    experiment = job.pop("experiment")
    start = time.perf_counter()
    records = run_glue(**job, experiment=experiment, results_dir=Path(results) / experiment, device=device,
                       progress=False, checkpoint_dir=checkpoints)
    summary = ", ".join(f"{r['method']} {r['main_metric']}={r['metrics'][r['main_metric']]:.4f}" for r in records)
    return summary, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="folder holding q8bert/ and qbert/ (default: results)")
    parser.add_argument("--only", choices=("q8bert", "qbert"), help="run one chapter's jobs")
    parser.add_argument("--qbert-tasks", default="sst2", help="comma-separated tasks of the Q-BERT table")
    parser.add_argument("--workers", type=int, default=1, help="jobs at once, each its own process")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per job")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    parser.add_argument("--checkpoints", default=None, help="also keep every trained model under this folder")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        parser.error(f"--workers and --threads must be positive, got {args.workers} and {args.threads}")

    q8_main, q8_ablation = q8bert_jobs() if args.only != "qbert" else ([], [])
    qb_main, qb_ablation = ([], []) if args.only == "q8bert" else qbert_jobs(
        read_json(Path(args.results) / "qbert" / "spectrum-sst2.json"), tuple(args.qbert_tasks.split(",")))
    jobs = q8_main + _by_seed(qb_main) + _by_seed(q8_ablation + qb_ablation)
    failures = []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked workers
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = {pool.submit(_run, job, args.results, args.device, args.threads, args.checkpoints): job
                   for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                summary, seconds = future.result()
                print(f"[{done}/{len(jobs)}] {summary} ({seconds:.0f} s)", flush=True)
            except Exception as error:  # name the job, keep the others running
                failures.append(job)
                print(f"[{done}/{len(jobs)}] FAILED {job}: {type(error).__name__}: {error}", flush=True)
    if failures:
        print(f"{len(failures)} of {len(jobs)} jobs failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
