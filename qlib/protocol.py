"""The book's whole training protocol as one list of jobs, run without Jupyter: ``python -m qlib.protocol``.

Each job (``Job``: a ``RunSpec`` and what it serves) is the run a chapter's ``quick=False`` cell makes for one
grid point of its papermill batch (see each chapter's *Reproducing*): the same ``run``, the same result files. This
runner is for machines without Jupyter (a GPU box, a cluster node) and runs several jobs at once, each in its own
process:

    python -m qlib.protocol --workers 8 --results results [--only q8bert] [--device cuda]

Four stages: the FP32 protocol sweep of the small tasks (``--only sweep``), which picks their epochs and learning
rates (``qlib.experiment.protocol_for``); the first chapter's main table and the FP32 Baselines (which keep their
models under ``--checkpoints``); the Hessian spectrum of each Q-BERT task's seed-0 Baseline, on the CPU, where its
committed one is missing (Q-BERT I's job: it sets the task's MP bits); then Q-BERT's and Quant-Noise's QAT rows seed
by seed (each starts from its seed's Baseline model), then the ablations. Finished runs are skipped, so an
interrupted protocol resumes. A failing job is named; the others still run, and the exit status is non-zero at the
end. A task whose sweep, Baseline or spectrum is missing gets no rows that need it, and is named too.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from qlib.experiment import SWEEP_TASKS, protocol_for, run, sweep_folder, sweep_points
from qlib.qbert import MIXED_SETTINGS, SETTINGS, directq_specs, fp32_checkpoint, run_spectrum, setting_spec
from qlib.results import read_json
from qlib.spec import RunSpec, TrainingProtocol

SEEDS = (0, 1, 2)
Q8BERT_TASKS = ("sst2", "cola", "rte", "mrpc", "stsb")
EMA_ABLATION_TASKS = ("cola", "rte")
HEADS = 12  # the packaged model's and BERT-base's attention heads: Q-BERT's G for the main table
ABLATION_GROUPS: tuple[int | str, ...] = (1, 4 * HEADS, "row")  # with G = HEADS from the main table
ABLATION_SETTING = "Q-BERT 3/8"
EMA_ABLATION_DECAY = 0.99
QUANT_NOISE_TASKS = ("cola",)
QUANT_NOISE_SETTINGS = ("Q-BERT 2/8", "Q-BERT 3/8")  # where QAT (p = 1) loses the most
QUANT_NOISE_RATE = 0.5
LANDSCAPE_BLOCKS = ("encoder.layer.0", "encoder.layer.2", "encoder.layer.5")  # Q-BERT I's default, fig. 2's


@dataclass(frozen=True)
class Job:
    """One training job of the protocol: the run (``spec``), the rows its FP32 weights also give
    (``post_training``), the chapter it serves (``experiment``) and the folder under the results it writes to
    (``folder``, default the chapter's), and whether it keeps its model where later jobs start from it
    (``keep_model``: Q-BERT's Baselines)."""

    spec: RunSpec
    experiment: str
    post_training: tuple[RunSpec, ...] = ()
    folder: str | None = None
    keep_model: bool = False

    @property
    def name(self) -> str:
        """The job as the result it writes: ``qbert/cola/qbert-w2e8-g12-p99.9-ft-seed1``."""
        return f"{self.folder or self.experiment}/{self.spec.task}/{self.spec.label}-seed{self.spec.seed}"


def _protocol(task: str, results: str | Path) -> TrainingProtocol:
    return TrainingProtocol(**protocol_for(task, results))


def sweep_jobs(seed: int = 0) -> list[Job]:
    """The FP32 protocol sweep of the Q8BERT chapter: each task of ``SWEEP_TASKS`` fine-tuned at seed ``seed`` at
    every point of ``SWEEP_GRID`` (no post-training rows), task by task, so each task's choice is complete as early
    as possible."""
    return [Job(RunSpec(t, "fp32", seed, protocol=TrainingProtocol(**p)), "q8bert-sweep",
                folder=sweep_folder(p["lr"], p["epochs"])) for t in SWEEP_TASKS for p in sweep_points()]


def picked_protocols(tasks: Sequence[str], results: str | Path = "results",
                     ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(task -> its epochs and learning rate, the tasks whose protocol is not picked yet: a sweep task whose FP32
    sweep under ``results`` is incomplete; see ``protocol_for``)."""
    picked, waiting = {}, []
    for task in dict.fromkeys(tasks):
        try:
            picked[task] = protocol_for(task, results)
        except FileNotFoundError:
            waiting.append(task)
    return picked, waiting


def q8bert_jobs(protocols: Mapping[str, dict[str, Any]], seeds=SEEDS) -> tuple[list[Job], list[Job]]:
    """Q8BERT chapter, for each task of ``protocols`` (task -> its epochs and learning rate): (FP32 (+DQ) and QAT,
    the main table; QAT with a shorter EMA on the tasks of ``EMA_ABLATION_TASKS``, the ablation)."""
    def job(task: str, method: str, seed: int, **knobs: Any) -> Job:
        spec = RunSpec(task, method, seed, protocol=TrainingProtocol(**protocols[task]), **knobs)
        return Job(spec, "q8bert", (spec.with_(method="dq"),) if method == "fp32" else ())

    main = [job(t, m, s) for t in protocols for s in seeds for m in ("fp32", "qat")]
    ablation = [job(t, "qat", s, ema_decay=EMA_ABLATION_DECAY) for t in EMA_ABLATION_TASKS if t in protocols
                for s in seeds]
    return main, ablation


def baseline_jobs(tasks: Sequence[str], checkpoints: str | Path, seeds=SEEDS,
                  results: str | Path = "results") -> list[Job]:
    """The FP32 Baselines of ``tasks`` (with their DirectQ rows at G = ``HEADS``): they keep the models that
    Q-BERT's and Quant-Noise's QAT rows start from under ``checkpoints``."""
    specs = [setting_spec("Baseline", t, s, HEADS, checkpoints, protocol=_protocol(t, results))
             for t in tasks for s in seeds]
    return [Job(spec, "qbert", directq_specs(spec, HEADS), keep_model=True) for spec in specs]


def qbert_jobs(spectra: Mapping[str, dict[str, Any]], checkpoints: str | Path, seeds=SEEDS,
               results: str | Path = "results") -> tuple[list[Job], list[Job], list[Job]]:
    """Q-BERT II chapter, for each task of ``spectra`` (task -> its Hessian spectrum, which sets its MP rows'
    bits): (the FP32 Baselines, which keep their models under ``checkpoints``; the QAT rows of the main table at
    G = heads, each from its seed's Baseline model; the group-wise ablation at 3 bits)."""
    def job(setting: str, task: str, seed: int, groups: int | str) -> Job:
        return Job(setting_spec(setting, task, seed, groups, checkpoints, spectra[task], _protocol(task, results)),
                   "qbert")

    tasks = list(spectra)
    baselines = baseline_jobs(tasks, checkpoints, seeds, results)
    main = [job(name, t, s, HEADS) for t in tasks for name in [*SETTINGS, *MIXED_SETTINGS] for s in seeds]
    ablation = [job(ABLATION_SETTING, t, s, g) for t in tasks for g in ABLATION_GROUPS for s in seeds]
    return baselines, main, ablation


def quant_noise_jobs(checkpoints: str | Path, seeds=SEEDS, results: str | Path = "results",
                     tasks: Sequence[str] = QUANT_NOISE_TASKS) -> list[Job]:
    """Quant-Noise chapter: Q-BERT's rows of ``QUANT_NOISE_SETTINGS`` trained at noise rate ``QUANT_NOISE_RATE``
    on ``QUANT_NOISE_TASKS``, each from its seed's FP32 Baseline."""
    return [Job(setting_spec(name, t, s, HEADS, checkpoints, protocol=_protocol(t, results)).with_(
                    noise_rate=QUANT_NOISE_RATE), "quant-noise")
            for t in tasks for name in QUANT_NOISE_SETTINGS for s in seeds]


def read_spectra(folder: Path, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each task's committed spectrum, ``<folder>/spectrum-<task>.json`` (measured on the task's seed-0 FP32
    Baseline); a missing one is named with the run that writes it."""
    missing = [str(folder / f"spectrum-{t}.json") for t in tasks if not (folder / f"spectrum-{t}.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no Hessian spectrum at {', '.join(missing)}: the Q-BERT rows take their MP bits "
                                "from it; run chapters/qbert_sensitivity.ipynb with quick=false for that task first "
                                "(it measures the task's seed-0 FP32 Baseline, so the Baseline runs come before it)")
    return {t: read_json(folder / f"spectrum-{t}.json") for t in tasks}


def spectrum_job(task: str, checkpoints: str | Path, results: str | Path) -> dict[str, Any]:
    """Q-BERT I's ``quick=False`` run for ``task`` (``run_spectrum`` arguments): the Hessian spectrum of the task's
    seed-0 FP32 Baseline, written to ``<results>/qbert/spectrum-<task>.json``, where ``read_spectra`` finds it."""
    return dict(task=task, init_from=str(fp32_checkpoint(checkpoints, task, 0)), landscape_blocks=LANDSCAPE_BLOCKS,
                results_path=str(Path(results) / "qbert" / f"spectrum-{task}.json"))


def _by_seed(jobs: list[Job]) -> list[Job]:
    """Seed 0 of every row first, then seed 1, …: a partial run still fills every row (stable within a seed)."""
    return sorted(jobs, key=lambda job: job.spec.seed)


def _run(job: Job, results: str, device: str | None, threads: int, checkpoints: Path,
         keep_models: str | None) -> tuple[str, float]:
    torch.set_num_threads(threads)
    keep = checkpoints if job.keep_model else keep_models  # a Baseline keeps its model where the QAT rows look
    start = time.perf_counter()
    records = run(job.spec, job.post_training, experiment=job.experiment,
                  results_dir=Path(results) / (job.folder or job.experiment), device=device, progress=False,
                  checkpoint_dir=keep)
    summary = ", ".join(f"{r['method']} {r['main_metric']}={r['metrics'][r['main_metric']]:.4f}" for r in records)
    return summary, time.perf_counter() - start


def _spectrum(job: dict[str, Any], threads: int) -> tuple[str, float]:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = run_spectrum(**job, progress=False)
    ranking = sorted(result["blocks"], key=lambda block: result["blocks"][block]["omega"], reverse=True)
    return f"spectrum {job['task']}: Ω ranks {', '.join(ranking)}", time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results",
                        help="folder holding q8bert/, qbert/ and quant-noise/ (default: results)")
    parser.add_argument("--only", choices=("q8bert", "qbert", "quant-noise", "sweep"),
                        help="run one chapter's jobs (sweep: the FP32 protocol sweep of the small tasks)")
    parser.add_argument("--qbert-tasks", default="sst2",
                        help="comma-separated tasks of the Q-BERT table; a task's missing "
                             "<results>/qbert/spectrum-<task>.json is measured after the Baselines")
    parser.add_argument("--workers", type=int, default=1, help="jobs at once, each its own process")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per job")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    parser.add_argument("--checkpoints", default="runs/checkpoints",
                        help="Q-BERT's FP32 Baseline models, the QAT rows' starting points (default: runs/checkpoints)")
    parser.add_argument("--keep-models", default=None, help="also keep every other trained model under this folder")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        parser.error(f"--workers and --threads must be positive, got {args.workers} and {args.threads}")

    checkpoints = Path(args.checkpoints) / "qbert"
    failures: list[str] = []
    wanted = {"q8bert": Q8BERT_TASKS, "qbert": args.qbert_tasks.split(","), "quant-noise": QUANT_NOISE_TASKS}
    wanted = {chapter: tasks if args.only in (None, chapter) else () for chapter, tasks in wanted.items()}
    train = partial(_run, results=args.results, device=args.device, threads=args.threads, checkpoints=checkpoints,
                    keep_models=args.keep_models)
    plan: dict[str, Any] = {}  # what the later stages share, filled once the sweep has run

    def sweep_stage() -> list[tuple[Callable, dict[str, Any]]]:
        return [(train, job) for job in (sweep_jobs() if args.only in (None, "sweep") else [])]

    def baseline_stage() -> list[tuple[Callable, dict[str, Any]]]:  # the sweep has picked the small tasks' protocols
        protocols, waiting = picked_protocols([t for tasks in wanted.values() for t in tasks], args.results)
        failures.extend(f"the rows of {t} (its FP32 sweep is incomplete: no protocol picked)" for t in waiting)
        q8_main, plan["q8_ablation"] = q8bert_jobs({t: protocols[t] for t in wanted["q8bert"] if t in protocols})
        plan["qbert_tasks"] = [t for t in wanted["qbert"] if t in protocols]
        plan["noise"] = quant_noise_jobs(checkpoints, results=args.results,
                                         tasks=[t for t in wanted["quant-noise"] if t in protocols])
        baselines = baseline_jobs(plan["qbert_tasks"], checkpoints, results=args.results) + baseline_jobs(
            sorted({j.spec.task for j in plan["noise"]} - set(plan["qbert_tasks"])), checkpoints, results=args.results)
        return [(train, job) for job in q8_main + _by_seed(baselines)]

    def spectrum_stage() -> list[tuple[Callable, dict[str, Any]]]:
        jobs = [spectrum_job(t, checkpoints, args.results) for t in plan["qbert_tasks"]]
        return [(partial(_spectrum, threads=args.threads), job) for job in jobs
                if not Path(job["results_path"]).is_file()]

    def qat_stage() -> list[tuple[Callable, dict[str, Any]]]:  # built once the spectra exist: they set the MP bits
        tasks = plan["qbert_tasks"]
        ready = [t for t in tasks if Path(spectrum_job(t, checkpoints, args.results)["results_path"]).is_file()]
        failures.extend(f"the Q-BERT rows of {t} (no spectrum)" for t in tasks if t not in ready)
        _, qb_main, qb_ablation = qbert_jobs(read_spectra(Path(args.results) / "qbert", ready), checkpoints,
                                             results=args.results)
        return [(train, job) for job in _by_seed(qb_main + plan["noise"])
                + _by_seed(plan["q8_ablation"] + qb_ablation)]

    stages = [sweep_stage, baseline_stage, spectrum_stage, qat_stage]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked workers
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        for number, stage in enumerate(stages, 1):  # a stage ends before the next starts: each needs the last's
            futures = {pool.submit(run, job): job for run, job in stage()}
            for done, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                try:
                    summary, seconds = future.result()
                    print(f"[stage {number}: {done}/{len(futures)}] {summary} ({seconds:.0f} s)", flush=True)
                except Exception as error:  # name the job, keep the others running
                    name = job.name if isinstance(job, Job) else f"spectrum of {job['task']}"
                    failures.append(name)
                    print(f"[stage {number}: {done}/{len(futures)}] FAILED {name}: "
                          f"{type(error).__name__}: {error}", flush=True)
    if failures:
        print(f"{len(failures)} job(s) failed or not started: " + "; ".join(failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
