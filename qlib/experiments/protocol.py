"""The book's whole training protocol as one list of jobs, run without Jupyter: ``python -m qlib.experiments.protocol``.

Each job (``Job``: a ``RunSpec`` and what it serves) is the run a chapter's ``quick=False`` cell makes for one
grid point of its papermill batch (see each chapter's *Reproducing*): the same ``run``, the same result files. Jobs
run on Dask (``qlib.experiments.jobs``): a local cluster by default, sized to the cores, or an existing cluster::

    python -m qlib.experiments.protocol [--workers 1] [--threads 2] [--only q8bert] [--device cuda]
    python -m qlib.experiments.protocol --scheduler tcp://host:8786 --threads 8
    python -m qlib.experiments.protocol --list --jobs 'qbert/conll2003/*-seed0'   # what would run, and why not

``--jobs`` runs the jobs whose names match its shell-style patterns, with the jobs they need (``select_jobs``);
``--list`` prints the plan (``plan_lines``: done, to run, or trained again for a lost model) and runs nothing.

Three stages, each a graph of jobs whose edges are Dask futures: (1) the FP32 protocol sweep of the small tasks
(``--only sweep``), which picks their epochs and learning rates (``qlib.experiments.experiment.protocol_for``); (2) the
first chapter's main table (seed by seed, smallest task first: ``smallest_first``; the later seeds of
``ONE_SEED_FIRST``'s tasks join the next part instead), then the other chapters' jobs seed by seed (all of seed 0's
first, so that every table gets a first row before any gets its third seed): the FP32 Baselines (which keep their models
under ``--checkpoints``, as do the Q8BERT QAT runs of ``DEPLOY_TASKS``, each chapter in its folder:
``chapter_checkpoints``; one that is also a Q8BERT FP32 run trains once for both: ``share_fp32_runs``), the Hessian
spectrum of each Q-BERT task's seed-0 Baseline where its committed one is missing (Q-BERT I's job; a runner started
after it lands plans that task's mixed-precision rows in stage 2), Q-BERT's and Quant-Noise's QAT rows, each started as
soon as its seed's Baseline is written, the ablations, the "Beyond the papers" rows (``beyond_jobs``) and the
Quant-Noise study of p and block size (``noise_study_jobs``, seed 0); (3) the mixed-precision rows (plain and distilled)
of the tasks whose spectrum stage 2 measured (it sets their bits). Finished runs are skipped, so an interrupted protocol
resumes, and a job cut short goes on from its last training snapshot (``--snapshots``, every few minutes:
``qlib.experiments.snapshots``), a spectrum from the eigenvalues it kept there; a result that does not record its data
(one computed on the earlier, altered GLUE copy) is not finished: it is re-run, and its file replaced. A failing job is
named and the jobs that need it are reported as not started; the others still run, and the exit status is non-zero at
the end. A task whose sweep or spectrum is missing gets no rows that need it, and is named too."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from qlib.experiments.batch import NotebookJob, job_name
from qlib.experiments.experiment import (
    SWEEP_TASKS,
    checkpoint_path,
    evaluated_rows,
    protocol_for,
    run,
    sweep_folder,
    sweep_points,
)
from qlib.experiments.jobs import Report, close_client, execute, make_client, plan_lines, resources_for, select_jobs
from qlib.experiments.qbert import (
    MIXED_SETTINGS,
    SETTINGS,
    directq_specs,
    fp32_checkpoint,
    run_spectrum,
    setting_spec,
    spectrum_params,
    spectrum_snapshot_folder,
)
from qlib.experiments.results import read_json, records_its_data
from qlib.experiments.snapshots import Snapshots
from qlib.experiments.spec import RunSpec, TrainingProtocol

SEEDS = (0, 1, 2)
Q8BERT_TASKS = ("sst2", "cola", "rte", "mrpc", "stsb", "squad")  # Q8BERT's Table 1 without MNLI, QNLI, QQP (offline)
SMALLEST_FIRST = ("rte", "mrpc", "stsb", "cola", "sst2", "squad")
"""Q8BERT's tasks by the cost of one training run, cheapest first: stage 2 runs each seed's Q8BERT rows in this order
(``smallest_first``), so a protocol stopped part-way has finished the most paired FP32/QAT rows."""
ONE_SEED_FIRST = ("squad",)
"""Q8BERT tasks whose row needs one seed and gets three where the budget allows (a SQuAD run costs as much as several
GLUE runs on a CPU): their seeds after 0 run with the other chapters' jobs of the same seed, so that the GLUE rows get
their three seeds, and every other table its first row, before SQuAD gets its second."""
QBERT_TASKS = ("sst2", "conll2003", "squad")  # Q-BERT's own tasks but MNLI (not available offline)
EMA_ABLATION_TASKS = ("cola", "rte")
DEPLOY_TASKS = ("sst2",)  # their Q8BERT QAT models are kept: the int8 export's agreement (benchmarks/int8_agreement.py)
HEADS = 12  # the packaged model's and BERT-base's attention heads: Q-BERT's G for the main table
ABLATION_GROUPS: tuple[int | str, ...] = (1, 4 * HEADS, "row")  # with G = HEADS from the main table
ABLATION_SETTING = "Q-BERT 3/8"
ABLATION_TASKS = ("sst2", "conll2003")  # Q-BERT's group-wise ablation: SST-2 and CoNLL-03 (not SQuAD)
EMA_ABLATION_DECAY = 0.99
QUANT_NOISE_SETTINGS = {"sst2": ("Q-BERT 8/8", "Q-BERT 4/8"), "cola": ("Q-BERT 2/8", "Q-BERT 3/8")}
"""The Q-BERT rows each task trains with Quant-Noise: int8 and int4 on SST-2 (the paper compares training with and
without the noise at int8, int4 and iPQ), and on CoLA the 2 and 3 bits, where QAT (p = 1) loses the most."""
QUANT_NOISE_TASKS = tuple(QUANT_NOISE_SETTINGS)
NOISE_STUDY_SETTINGS = {"cola": ("Q-BERT 3/8", "Q-BERT 2/8")}
"""The study of p and block size, per task: the settings (each one of ``QUANT_NOISE_SETTINGS[task]``, whose main rows
give p = ``QUANT_NOISE_RATE`` and p = 1) it varies p on, and, on the first, the block size. CoLA's 3/8 first: plain
QAT keeps most of FP32's MCC there, so p has room to matter. The study began at 2/8, where the model can fall to the
constant answer (MCC 0) whatever p is; its p sweep stays, as the setting that shows why the study moved."""
QUANT_NOISE_RATE = 0.5
NOISE_STUDY_RATES = (0.1, 0.25, 0.75)  # with QUANT_NOISE_RATE and p = 1 from the main rows: the effect of p
NOISE_STUDY_BLOCKS = (4, 32)  # with the main rows' 8 inputs: the effect of the block size, at QUANT_NOISE_RATE
IPQ_TASKS = ("sst2",)  # iPQ and iPQ + int8 (Quant-Noise's 5 % row), from each seed's FP32 Baseline
IPQ_CENTROIDS = 256  # fairseq's k
IPQ_NOISE_RATE = 0.2
"""PQ noise before iPQ + int8: fairseq's README fine-tunes RoBERTa with ``--quant-noise-pq 0.2`` on blocks of 8 and
recommends 0.05 to 0.2."""
ROBUSTNESS_ARMS = ("baseline", "trained again without noise", "trained again with PQ noise")
"""The models ``benchmarks/pq_robustness.py`` scores, in its order (the names its result files use): the FP32
Baseline, the Baseline trained once more without noise, and trained once more with PQ noise at ``IPQ_NOISE_RATE``."""
BASELINE_ARM, WITHOUT_NOISE_ARM, WITH_NOISE_ARM = ROBUSTNESS_ARMS
INTEGER_TASKS = ("sst2", "mrpc")  # the beyond chapter's integer-only QAT: SST-2 and one more task
DISTILLATION_TASKS = ("sst2",)
DISTILLED_SETTINGS = ("Q-BERT 8/8", "Q-BERT 4/8", "Q-BERT 3/8", "Q-BERT 2/8", "Q-BERT_MP 2/3")  # MP: once spectrum
LOGITS_ONLY_SETTINGS = ("Q-BERT 2/8",)
"""The distillation ablation: these settings also distilled from the teacher's logits alone (TernaryBERT's L_pred
without its hidden-state and attention-map terms), beside their full (``hidden``) distillation."""
LONGER_SCHEDULE = {"epochs": 3, "lr": 2e-5}
"""The schedule ablation: TernaryBERT's released GLUE example (``TernaryBERT/README.md`` in
huawei-noah/Pretrained-Language-Model: three epochs at 2·10⁻⁵) for the settings of ``LONGER_SCHEDULE_SETTINGS``, plain
and distilled (TernaryBERT's full loss), seed 0, under ``SCHEDULE_FOLDER``: does distillation recover more of the 2-bit
drop with three times the steps than on the task's protocol?"""
LONGER_SCHEDULE_SETTINGS = ("Q-BERT 2/8",)
SCHEDULE_FOLDER = "beyond-schedule"
TERNARY_SETTINGS = ("Q-BERT 2/8",)
"""The quantizer ablation: these settings with TernaryBERT's own 2-bit quantizer, ternary weights by TWN with one
threshold and scale per matrix (``RunSpec.ternary``), in place of Q-BERT's 12 groups of clipped 4-level grids,
plain and distilled (TernaryBERT's full loss), every seed, under ``QUANTIZER_FOLDER``: does distillation recover more
of the 2-bit drop from the quantizer TernaryBERT distils than from Q-BERT's?"""
QUANTIZER_FOLDER = "beyond-quantizer"
LANDSCAPE_BLOCKS = ("encoder.layer.0", "encoder.layer.2", "encoder.layer.5")  # Q-BERT I's default, fig. 2's
HESSIAN_BATCH_SIZES = (8, 16, 32, 64)  # the batch-size study: the top λ of one block at each Hessian batch size
HESSIAN_MAX_LENGTH = {"squad": 256}
"""The Hessian's token length where ``run_spectrum``'s default does not fit the task: a SQuAD window must hold a
question and its passage, so its Hessian batches are the training windows (``PROTOCOL``'s length)."""


def hessian_length(task: str) -> dict[str, int]:
    """``run_spectrum``'s ``max_length`` for ``task`` as a keyword where ``HESSIAN_MAX_LENGTH`` sets one; {} where
    its default fits (a GLUE or CoNLL-03 sentence)."""
    return {"max_length": HESSIAN_MAX_LENGTH[task]} if task in HESSIAN_MAX_LENGTH else {}


@dataclass(frozen=True)
class Job:
    """One training job of the protocol: the run (``spec``), the rows its FP32 weights also give
    (``post_training``), the chapter it serves (``experiment``), the folder under ``results`` it writes to
    (``folder``, default the chapter's), where it keeps its model (``checkpoint_dir``: Q-BERT's Baselines, whose models
    the QAT rows start from), the jobs it ``needs`` first (by name), the ``device`` it trains on, and the rows it
    ``also`` writes for another chapter (``(folder under results, rows)``: Q8BERT's FP32 and DQ rows of a task whose
    Q-BERT Baseline is the same training, see ``share_fp32_runs``), and where it keeps its training snapshots
    (``snapshot_dir``: a killed job resumes from them, ``qlib.experiments.snapshots``). Calling it runs it
    (``qlib.experiments.experiment.run``); ``qlib.experiments.jobs.execute`` calls it on a Dask worker."""

    spec: RunSpec
    experiment: str
    post_training: tuple[RunSpec, ...] = ()
    folder: str | None = None
    checkpoint_dir: str | None = None
    needs: tuple[str, ...] = ()
    results: str = "results"
    device: str | None = None
    also: tuple[tuple[str, tuple[RunSpec, ...]], ...] = ()
    snapshot_dir: str | None = None

    @property
    def name(self) -> str:
        """The job as the result it writes: ``qbert/cola/qbert-w2e8-g12-p99.9-ft-seed1``."""
        return f"{self.folder or self.experiment}/{self.spec.task}/{self.spec.label}-seed{self.spec.seed}"

    @property
    def results_dir(self) -> Path:
        return Path(self.results) / (self.folder or self.experiment)

    @property
    def resources(self) -> dict[str, float]:
        return dict(resources_for(self.device))

    def recorded(self) -> bool:
        """Whether every result file of the job exists and records the data it read (a result on the earlier,
        altered copy is re-run: ``records_its_data``)."""
        results = [row.result_path(self.results_dir) for row in (self.spec, *self.post_training)]
        results += [row.result_path(folder) for folder, rows in self._also().items() for row in rows]
        return all(records_its_data(f) for f in results)

    @property
    def evaluations(self) -> int:
        """How many dev evaluations the job makes: its run's, and one per row ``evaluated_rows`` gives it."""
        return 1 + len(evaluated_rows(self.spec, self.post_training, self._also()))

    def done(self) -> bool:
        """Whether the job's results are ``recorded`` and, for a job that keeps its model, the model is there."""
        kept = [] if self.checkpoint_dir is None else [checkpoint_path(self.spec, self.checkpoint_dir)]
        return self.recorded() and all(f.is_file() for f in kept)

    def run(self) -> list[dict[str, Any]]:
        """Train and evaluate the job now (``qlib.experiments.experiment.run``); its records."""
        return run(self.spec, self.post_training, experiment=self.experiment, results_dir=self.results_dir,
                   device=self.device, progress=False, checkpoint_dir=self.checkpoint_dir, resume=False,
                   also=self._also(), snapshot_dir=self.snapshot_dir)

    def _also(self) -> dict[Path, tuple[RunSpec, ...]]:
        return {Path(self.results) / folder: rows for folder, rows in self.also}

    def __call__(self) -> str:
        return ", ".join(f"{r['method']} {r['main_metric']}={r['metrics'][r['main_metric']]:.4f}" for r in self.run())

    def to_json(self) -> str:
        """The job as JSON (a chapter's ``job`` parameter; ``from_json`` reads it back equal)."""
        return json.dumps({"spec": self.spec.to_dict(), "experiment": self.experiment,
                           "post_training": [row.to_dict() for row in self.post_training], "folder": self.folder,
                           "checkpoint_dir": self.checkpoint_dir, "needs": list(self.needs), "results": self.results,
                           "device": self.device, "snapshot_dir": self.snapshot_dir,
                           "also": [[folder, [row.to_dict() for row in rows]] for folder, rows in self.also]})

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        return cls(**(data | {"spec": RunSpec.from_dict(data["spec"]), "needs": tuple(data["needs"]),
                              "post_training": tuple(RunSpec.from_dict(row) for row in data["post_training"]),
                              "also": tuple((folder, tuple(RunSpec.from_dict(row) for row in rows))
                                            for folder, rows in data.get("also", []))}))

    def absolute(self) -> Job:
        """The same job with every path absolute (for a notebook that runs in the chapters' folder)."""
        spec = self.spec if self.spec.init_from is None else self.spec.with_(
            init_from=str(Path(self.spec.init_from).resolve()))
        return replace(self, spec=spec, results=str(Path(self.results).resolve()),
                       checkpoint_dir=None if self.checkpoint_dir is None else str(Path(self.checkpoint_dir).resolve()),
                       snapshot_dir=None if self.snapshot_dir is None else str(Path(self.snapshot_dir).resolve()))


CHAPTERS = {"q8bert": "q8bert.ipynb", "q8bert-sweep": "q8bert.ipynb", "qbert": "qbert_low_precision.ipynb",
            "quant-noise": "quant_noise.ipynb", "beyond": "integer_and_distilled.ipynb"}
"""The chapter whose ``job`` parameter runs a job of each experiment (``--via papermill``)."""


def via_papermill(job: Job, chapters: Path, notebooks: Path) -> NotebookJob:
    """``job`` as a papermill execution of its chapter (``CHAPTERS``) with ``quick=False`` and ``job`` = the job's
    JSON: the chapter makes the same ``run`` call and writes the same result files; its executed notebook is kept
    under ``notebooks``."""
    output = notebooks / f"{job_name({'job': job.name})}.ipynb"
    return NotebookJob(job.name, str(chapters / CHAPTERS[job.experiment]), str(output), str(chapters),
                       {"quick": False, "job": job.absolute().to_json()}, needs=job.needs, job=job)


@dataclass(frozen=True)
class SpectrumJob:
    """Q-BERT I's job: the Hessian spectrum of a task's seed-0 FP32 Baseline (``run_spectrum`` with ``arguments``,
    see ``spectrum_job``), after the Baseline it ``needs``; with ``snapshot_dir``, a killed job goes on with the
    measurements it kept there (``run_spectrum``'s)."""

    arguments: Mapping[str, Any] = field(hash=False)
    needs: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict, hash=False)  # the Hessian runs on the CPU
    snapshot_dir: str | None = None

    @property
    def name(self) -> str:
        return f"spectrum of {self.arguments['task']}"

    def recorded(self) -> bool:
        return records_its_data(self.arguments["results_path"])

    done = recorded

    def kept(self, snapshot_dir: str | Path) -> int:
        """How many measurements a killed run of the job kept under ``snapshot_dir`` for the Baseline model now on
        disk (0 while there is none)."""
        params = spectrum_params(self.arguments)
        if not Path(params["init_from"]).is_file():
            return 0
        return len(Snapshots(spectrum_snapshot_folder(params, snapshot_dir)).kept())

    def __call__(self) -> str:
        result = run_spectrum(**self.arguments, progress=False, resume=False, snapshot_dir=self.snapshot_dir)
        ranking = sorted(result["blocks"], key=lambda block: result["blocks"][block]["omega"], reverse=True)
        return f"Ω ranks {', '.join(ranking)}"


def _protocol(task: str, results: str | Path) -> TrainingProtocol:
    return TrainingProtocol(**protocol_for(task, results))


def sweep_jobs(seed: int = 0, results: str | Path = "results") -> list[Job]:
    """The FP32 protocol sweep of the Q8BERT chapter: each task of ``SWEEP_TASKS`` fine-tuned at seed ``seed`` at
    every point of ``SWEEP_GRID`` (no post-training rows), task by task, so each task's choice is complete as early
    as possible."""
    return [Job(RunSpec(t, "fp32", seed, protocol=TrainingProtocol(**p)), "q8bert-sweep",
                folder=sweep_folder(p["lr"], p["epochs"]), results=str(results)) for t in SWEEP_TASKS for p in
                sweep_points()]


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


def q8bert_jobs(protocols: Mapping[str, dict[str, Any]], seeds: Sequence[int] = SEEDS,
                results: str | Path = "results", checkpoints: str | Path | None = None) -> tuple[list[Job], list[Job]]:
    """Q8BERT chapter, for each task of ``protocols`` (task -> its epochs and learning rate): (FP32 (+DQ) and QAT,
    the main table; QAT with a shorter EMA on the tasks of ``EMA_ABLATION_TASKS``, the ablation). With
    ``checkpoints``, the main table's QAT jobs of ``DEPLOY_TASKS`` keep their models there (bit-packed, with their
    ranges: what ``benchmarks/int8_agreement.py --checkpoint`` exports to int8)."""
    def job(task: str, method: str, seed: int, **knobs: Any) -> Job:
        spec = RunSpec(task, method, seed, protocol=TrainingProtocol(**protocols[task]), **knobs)
        return Job(spec, "q8bert", (spec.with_(method="dq"),) if method == "fp32" else (), results=str(results))

    def kept(job: Job) -> Job:
        deployed = checkpoints is not None and job.spec.task in DEPLOY_TASKS and job.spec.method == "qat"
        return replace(job, checkpoint_dir=str(checkpoints)) if deployed else job

    main = [kept(job(t, m, s)) for t in protocols for s in seeds for m in ("fp32", "qat")]
    ablation = [job(t, "qat", s, ema_decay=EMA_ABLATION_DECAY) for t in EMA_ABLATION_TASKS if t in protocols
                for s in seeds]
    return main, ablation


def baseline_jobs(tasks: Sequence[str], checkpoints: str | Path, seeds: Sequence[int] = SEEDS,
                  results: str | Path = "results") -> list[Job]:
    """The FP32 Baselines of ``tasks`` (with their DirectQ rows at G = ``HEADS``): they keep the models that
    Q-BERT's and Quant-Noise's QAT rows start from under ``checkpoints``."""
    specs = [setting_spec("Baseline", t, s, HEADS, checkpoints, protocol=_protocol(t, results))
             for t in tasks for s in seeds]
    return [Job(spec, "qbert", directq_specs(spec, HEADS), checkpoint_dir=str(checkpoints), results=str(results))
            for spec in specs]


def baseline_name(task: str, seed: int) -> str:
    """The name of the Baseline job of ``task`` and ``seed``: what the QAT rows starting from its model need."""
    return Job(RunSpec(task, "fp32", seed), "qbert").name


def qbert_jobs(tasks: Sequence[str], checkpoints: str | Path, spectra: Mapping[str, dict[str, Any]] | None = None,
               seeds: Sequence[int] = SEEDS, results: str | Path = "results") -> tuple[list[Job], list[Job], list[Job]]:
    """Q-BERT II chapter, for ``tasks``: (the FP32 Baselines, which keep their models under ``checkpoints``; the QAT
    rows of the main table at G = heads, each from its seed's Baseline model, which it needs; the group-wise ablation
    at 3 bits on the tasks of ``ABLATION_TASKS``). The MP rows take their bits from the task's Hessian spectrum: a task
    without one in ``spectra`` gets none yet."""
    spectra = spectra or {}

    def job(setting: str, task: str, seed: int, groups: int | str) -> Job:
        spec = setting_spec(setting, task, seed, groups, checkpoints, spectra.get(task), _protocol(task, results))
        return Job(spec, "qbert", needs=(baseline_name(task, seed),), results=str(results))

    baselines = baseline_jobs(tasks, checkpoints, seeds, results)
    main = [job(name, t, s, HEADS) for t in tasks for name in [*SETTINGS, *MIXED_SETTINGS] for s in seeds
            if name not in MIXED_SETTINGS or t in spectra]
    ablation = [job(ABLATION_SETTING, t, s, g) for t in tasks if t in ABLATION_TASKS for g in ABLATION_GROUPS
                for s in seeds]
    return baselines, main, ablation


def quant_noise_jobs(checkpoints: str | Path, seeds: Sequence[int] = SEEDS, results: str | Path = "results",
                     tasks: Sequence[str] = QUANT_NOISE_TASKS) -> list[Job]:
    """Quant-Noise chapter: each task's Q-BERT rows of ``QUANT_NOISE_SETTINGS`` trained at noise rate
    ``QUANT_NOISE_RATE``, and the same rows at p = 1 (Q-BERT's QAT, written with the Q-BERT chapter's results)
    that the chapter compares them with; each from its seed's FP32 Baseline, which it needs. A p = 1 row the Q-BERT
    jobs also make is the same job (same name): the runner keeps one."""
    jobs = []
    for t in tasks:
        for name in QUANT_NOISE_SETTINGS[t]:
            for s in seeds:
                spec = setting_spec(name, t, s, HEADS, checkpoints, protocol=_protocol(t, results))
                needs = (baseline_name(t, s),)
                jobs += [Job(spec.with_(noise_rate=QUANT_NOISE_RATE), "quant-noise", needs=needs, results=str(results)),
                         Job(spec, "qbert", needs=needs, results=str(results))]
    return jobs


def ipq_jobs(checkpoints: str | Path, seeds: Sequence[int] = SEEDS, results: str | Path = "results",
             tasks: Sequence[str] = IPQ_TASKS) -> list[Job]:
    """Quant-Noise chapter: iPQ with ``IPQ_CENTROIDS`` centroids, in float and with int8 centroids and inputs, and
    iPQ + int8 after training with PQ noise at ``IPQ_NOISE_RATE`` (the paper's combination), each quantizing its
    seed's FP32 Baseline in stages (so it needs that Baseline), on ``tasks``."""
    return [Job(RunSpec(t, "ipq", s, centroids=IPQ_CENTROIDS, centroid_bits=bits, noise_rate=rate,
                        init_from=str(fp32_checkpoint(checkpoints, t, s)), protocol=_protocol(t, results)),
                "quant-noise", needs=(baseline_name(t, s),), results=str(results))
            for t in tasks for bits, rate in ((None, 1.0), (8, 1.0), (8, IPQ_NOISE_RATE)) for s in seeds]


def noise_study_jobs(checkpoints: str | Path, results: str | Path = "results",
                     settings: Mapping[str, Sequence[str]] = NOISE_STUDY_SETTINGS) -> list[Job]:
    """The Quant-Noise chapter's study of p and of the block size on the ``settings`` of each task (seed 0, the
    task's protocol): p at each of ``NOISE_STUDY_RATES`` on blocks of 8 inputs on every setting, and blocks of each of
    ``NOISE_STUDY_BLOCKS`` at ``QUANT_NOISE_RATE`` on the task's first setting, written under
    ``<results>/quant-noise-study``; the chapter's main rows give p = ``QUANT_NOISE_RATE`` on blocks of 8 and p = 1.

    Raises:
        ValueError: a setting that is not one of ``QUANT_NOISE_SETTINGS[task]`` (the study needs its main rows).
    """
    jobs = []
    for t, names in settings.items():
        for position, name in enumerate(names):
            if name not in QUANT_NOISE_SETTINGS.get(t, ()):
                raise ValueError(f"noise study setting {name!r} on {t!r} has no Quant-Noise main rows; allowed: "
                                 f"{QUANT_NOISE_SETTINGS.get(t, ())}")
            spec = setting_spec(name, t, 0, HEADS, checkpoints, protocol=_protocol(t, results))
            variants = [{"noise_rate": p} for p in NOISE_STUDY_RATES]
            if position == 0:
                variants += [{"noise_rate": QUANT_NOISE_RATE, "noise_block": b} for b in NOISE_STUDY_BLOCKS]
            jobs += [Job(spec.with_(**v), "quant-noise", folder="quant-noise-study", needs=(baseline_name(t, 0),),
                         results=str(results)) for v in variants]
    return jobs


def beyond_jobs(checkpoints: str | Path, seeds: Sequence[int] = SEEDS, results: str | Path = "results",
                integer_tasks: Sequence[str] = INTEGER_TASKS,
                distillation_tasks: Sequence[str] = DISTILLATION_TASKS,
                spectra: Mapping[str, Mapping[str, Any]] | None = None) -> list[Job]:
    """The "Beyond the papers" chapter: Q8BERT's QAT with I-BERT's integer GELU, softmax and LayerNorm on
    ``integer_tasks`` (against the Q8BERT chapter's QAT and FP32 rows of the same seeds), and Q-BERT's QAT rows of
    ``DISTILLED_SETTINGS`` distilled from their seed's FP32 Baseline (TernaryBERT's logits, hidden states and
    attention maps), each after that Baseline, on ``distillation_tasks``, and those of ``LOGITS_ONLY_SETTINGS``
    distilled from the logits alone; a mixed-precision setting only on a task of ``spectra`` (its bits come from the
    task's spectrum, as in the Q-BERT table). Last, the schedule ablation: ``LONGER_SCHEDULE_SETTINGS`` plain and
    distilled on ``LONGER_SCHEDULE`` instead of the task's protocol, on the first of ``seeds``, in
    ``SCHEDULE_FOLDER``; and the quantizer ablation: ``TERNARY_SETTINGS`` with ternary weights, plain and
    distilled, on every seed, in ``QUANTIZER_FOLDER``."""
    spectra = spectra or {}
    integer = [Job(RunSpec(t, "qat", s, integer_nonlinearities=True, protocol=_protocol(t, results)), "beyond",
                   results=str(results)) for t in integer_tasks for s in seeds]
    modes = [(name, "hidden") for name in DISTILLED_SETTINGS] + [(name, "logits") for name in LOGITS_ONLY_SETTINGS]
    distilled = [Job(setting_spec(name, t, s, HEADS, checkpoints, spectra.get(t), _protocol(t, results)).with_(
                         distillation=mode), "beyond", needs=(baseline_name(t, s),), results=str(results))
                 for t in distillation_tasks for name, mode in modes for s in seeds
                 if name not in MIXED_SETTINGS or t in spectra]
    longer = [Job(setting_spec(name, t, s, HEADS, checkpoints, spectra.get(t),
                               replace(_protocol(t, results), **LONGER_SCHEDULE)).with_(distillation=mode),
                  "beyond", folder=SCHEDULE_FOLDER, needs=(baseline_name(t, s),), results=str(results))
              for t in distillation_tasks for name in LONGER_SCHEDULE_SETTINGS for mode in (None, "hidden")
              for s in seeds[:1]]
    ternary = [Job(ternary_spec(setting_spec(name, t, s, HEADS, checkpoints, spectra.get(t),
                                             _protocol(t, results))).with_(distillation=mode),
                   "beyond", folder=QUANTIZER_FOLDER, needs=(baseline_name(t, s),), results=str(results))
               for t in distillation_tasks for name in TERNARY_SETTINGS for mode in (None, "hidden") for s in seeds]
    return integer + distilled + longer + ternary


def ternary_spec(grid: RunSpec) -> RunSpec:
    """The quantizer ablation's row of a Q-BERT ``grid`` row: the same run with ternary weights (TWN, one threshold
    and scale per matrix, as TernaryBERT) in place of the grid's groups and clipping."""
    return grid.with_(groups=None, percentile=None, ternary=True)


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
    seed-0 FP32 Baseline, written to ``<results>/qbert/spectrum-<task>.json``, where ``read_spectra`` finds it, with
    the landscapes of ``LANDSCAPE_BLOCKS``, one block's top λ at each of ``HESSIAN_BATCH_SIZES``, and SQuAD's batches
    at its windows' length (``HESSIAN_MAX_LENGTH``)."""
    return dict(task=task, init_from=str(fp32_checkpoint(checkpoints, task, 0)), landscape_blocks=LANDSCAPE_BLOCKS,
                batch_sizes=HESSIAN_BATCH_SIZES, results_path=str(Path(results) / "qbert" / f"spectrum-{task}.json"),
                **hessian_length(task))


def _by_seed(jobs: list[Any]) -> list[Any]:
    """Seed 0 of every row first, then seed 1, …: a partial run still fills every row (stable within a seed; a
    spectrum job counts as seed 0, whose Baseline it measures)."""
    return sorted(jobs, key=lambda job: job.spec.seed if isinstance(job, Job) else 0)


def smallest_first(jobs: list[Job]) -> list[Job]:
    """Seed 0 of every task first, then seed 1, …; within a seed, the tasks of ``SMALLEST_FIRST`` in its order (any
    other task after them), FP32 before QAT: the order stage 2 runs Q8BERT's main table in."""
    rank = {task: i for i, task in enumerate(SMALLEST_FIRST)}
    return _by_seed(sorted(jobs, key=lambda job: rank.get(job.spec.task, len(rank))))


def share_fp32_runs(q8bert_rows: list[Job], baselines: list[Job]) -> tuple[list[Job], list[Job]]:
    """One training for each FP32 run two chapters need: a Q-BERT Baseline whose spec is a Q8BERT FP32 job's (same
    task, seed and protocol) takes that job's place in ``q8bert_rows`` and also writes its FP32 and DQ rows under
    the Q8BERT chapter's folder; it keeps its name, so the QAT rows that need it still find it. Returns (the Q8BERT
    rows, the Baselines left)."""
    shared = {}
    for baseline in baselines:
        twin = next((j for j in q8bert_rows if j.spec == baseline.spec and j.experiment == "q8bert"), None)
        if twin is not None:
            rows = (twin.spec, *twin.post_training)
            shared[twin.name] = replace(baseline, also=((twin.folder or twin.experiment, rows),))
    merged = {job.name for job in shared.values()}
    return [shared.get(j.name, j) for j in q8bert_rows], [b for b in baselines if b.name not in merged]


def baseline_job(task: str, seed: int, results: str | Path = "results",
                 checkpoint_root: str | Path = "runs/checkpoints") -> Job:
    """The Baseline job of ``task`` and ``seed`` as stage 2 plans it: on a task of ``Q8BERT_TASKS`` whose protocol is
    picked, the same training also gives Q8BERT's FP32 and DQ rows (``share_fp32_runs``), so it makes one dev
    evaluation more (``Job.evaluations``)."""
    baseline = baseline_jobs([task], chapter_checkpoints(checkpoint_root, "qbert"), seeds=(seed,), results=results)
    protocols, _ = picked_protocols([task] if task in Q8BERT_TASKS else [], results)
    q8bert_rows, left = share_fp32_runs(q8bert_jobs(protocols, seeds=(seed,), results=results)[0], baseline)
    return left[0] if left else next(j for j in q8bert_rows if j.name == baseline[0].name)


def _present_spectra(folder: Path, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The spectra of ``tasks`` that are measured and record their data (one on the altered copy is re-measured)."""
    return read_spectra(folder, [t for t in tasks if records_its_data(folder / f"spectrum-{t}.json")])


def wanted_tasks(only: str | None = None, qbert_tasks: Sequence[str] = QBERT_TASKS) -> dict[str, Sequence[str]]:
    """Each chapter's tasks in the protocol (``only``: one chapter's, the others none; ``ipq``: the Quant-Noise
    chapter's iPQ rows)."""
    wanted: dict[str, Sequence[str]] = {
        "q8bert": Q8BERT_TASKS, "qbert": tuple(qbert_tasks), "quant-noise": QUANT_NOISE_TASKS,
        "beyond": tuple(dict.fromkeys(INTEGER_TASKS + DISTILLATION_TASKS))}
    wanted = {chapter: tasks if only in (None, chapter) else () for chapter, tasks in wanted.items()}
    return wanted | {"ipq": IPQ_TASKS if only in (None, "quant-noise") else ()}


def chapter_checkpoints(checkpoint_root: str | Path, chapter: str) -> Path:
    """The folder under ``--checkpoints`` where a chapter's jobs keep their models: ``q8bert/`` (the QAT models of
    ``DEPLOY_TASKS``) and ``qbert/`` (the FP32 Baselines, which Q-BERT's, Quant-Noise's and the beyond chapter's QAT
    rows start from), each laid out as ``checkpoint_path`` says."""
    return Path(checkpoint_root) / chapter


def second_stage(wanted: Mapping[str, Sequence[str]], results: str | Path, checkpoint_root: str | Path,
                 ) -> tuple[list[Any], list[str], list[str]]:
    """Stage 2 as it stands under ``results`` (see the module docstring): its jobs in the order they run, the tasks
    left out because their FP32 sweep is incomplete, and the Q-BERT tasks whose spectrum it measures (stage 3 then
    runs their MP rows). Each chapter keeps its models in its own folder under ``checkpoint_root``
    (``chapter_checkpoints``)."""
    checkpoints = chapter_checkpoints(checkpoint_root, "qbert")
    spectra_folder = Path(results) / "qbert"
    protocols, waiting = picked_protocols([t for tasks in wanted.values() for t in tasks], results)
    q8_main, q8_ablation = q8bert_jobs({t: protocols[t] for t in wanted["q8bert"] if t in protocols},
                                       results=results, checkpoints=chapter_checkpoints(checkpoint_root, "q8bert"))
    qbert_tasks = [t for t in wanted["qbert"] if t in protocols]
    noise = quant_noise_jobs(checkpoints, results=results,
                             tasks=[t for t in wanted["quant-noise"] if t in protocols])
    noise += ipq_jobs(checkpoints, results=results, tasks=[t for t in wanted["ipq"] if t in protocols])
    study = noise_study_jobs(checkpoints, results=results,
                             settings={t: names for t, names in NOISE_STUDY_SETTINGS.items()
                                       if t in wanted["quant-noise"] and t in protocols})
    measured = _present_spectra(spectra_folder, qbert_tasks)
    beyond = beyond_jobs(checkpoints, results=results,
                         integer_tasks=[t for t in INTEGER_TASKS if t in protocols and t in wanted["beyond"]],
                         distillation_tasks=[t for t in DISTILLATION_TASKS
                                             if t in protocols and t in wanted["beyond"]], spectra=measured)
    baselines, qb_main, qb_ablation = qbert_jobs(qbert_tasks, checkpoints, measured, results=results)
    baselines += baseline_jobs(sorted({j.spec.task for j in noise + study + beyond if j.needs} - set(qbert_tasks)),
                               checkpoints, results=results)
    spectra = [SpectrumJob(spectrum_job(t, checkpoints, results), needs=(baseline_name(t, 0),))
               for t in qbert_tasks if t not in measured]
    noise = [j for j in noise if j.name not in {q.name for q in qb_main}]  # a p = 1 row both chapters need
    q8_main, baselines = share_fp32_runs(smallest_first(q8_main), _by_seed(baselines))
    later = [j for j in q8_main if j.spec.task in ONE_SEED_FIRST and j.spec.seed > 0]
    q8_main = [j for j in q8_main if j not in later]
    rest = later + baselines + spectra + qb_main + noise + q8_ablation + qb_ablation + beyond + study
    jobs = q8_main + _by_seed(rest)
    return jobs, waiting, [t for t in qbert_tasks if t not in measured]


def unmatched_patterns(patterns: Sequence[str], missed_by_stage: Sequence[Sequence[str]]) -> list[str]:
    """The ``--jobs`` patterns that matched no job in any stage (each stage's misses from ``select_jobs``), each as the
    line that reports it, in the order given."""
    missed = set(patterns).intersection(*missed_by_stage)
    return [f"--jobs {p!r}: no job of the protocol has a matching name" for p in patterns if p in missed]


def list_plan(results: str | Path, checkpoint_root: str | Path, only: str | None, qbert_tasks: Sequence[str],
              patterns: Sequence[str] | None) -> int:
    """``--list``: print stages 1 and 2 as a run would find them under ``results`` (``plan_lines``), then what waits
    for a stage-2 job (a sweep or a spectrum); returns 1 where a ``--jobs`` pattern matches no job, else 0."""
    sweep = sweep_jobs(results=results) if only in (None, "sweep") else []
    jobs, waiting, unmeasured = second_stage(wanted_tasks(only, qbert_tasks), results, checkpoint_root)
    missed: list[str] = []
    if patterns is not None:
        (sweep, missed_sweep), (jobs, missed_main) = select_jobs(sweep, patterns), select_jobs(jobs, patterns)
        missed = unmatched_patterns(patterns, [missed_sweep, missed_main])
    for number, stage_jobs in ((1, sweep), (2, jobs)):
        lines = plan_lines(stage_jobs)
        print(f"stage {number}: {len(lines)} job(s), {sum(not line.startswith('done') for line in lines)} to run")
        for line in lines:
            print(f"  {line}")
    for task in waiting:
        print(f"{task}: its rows wait for its FP32 sweep (stage 1)")
    for task in unmeasured:
        print(f"{task}: its Q-BERT MP rows wait for its Hessian spectrum (stage 3, after the spectrum job)")
    for line in missed:
        print(line, file=sys.stderr)
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results",
                        help="folder holding q8bert/, qbert/ and quant-noise/ (default: results)")
    parser.add_argument("--only", choices=("q8bert", "qbert", "quant-noise", "beyond", "sweep"),
                        help="run one chapter's jobs (sweep: the FP32 protocol sweep of the small tasks)")
    parser.add_argument("--qbert-tasks", default=",".join(QBERT_TASKS),
                        help="comma-separated tasks of the Q-BERT table; a task's missing "
                             "<results>/qbert/spectrum-<task>.json is measured after its seed-0 Baseline")
    parser.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler (tcp://host:8786); default: a local cluster")
    parser.add_argument("--workers", type=int, default=None,
                        help="local cluster: worker processes, one job each at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per job (default: the cores shared out among the local workers)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda (a cuda job asks for a GPU worker)")
    parser.add_argument("--checkpoints", default="runs/checkpoints",
                        help="the models the protocol keeps: Q-BERT's FP32 Baselines (the QAT rows' starting "
                             "points) under its qbert/, and the Q8BERT QAT models of the int8 export's agreement "
                             "benchmark under its q8bert/ (default: runs/checkpoints)")
    parser.add_argument("--keep-models", default=None, help="also keep every other trained model under this folder")
    parser.add_argument("--snapshots", default="runs/snapshots",
                        help="where each job saves its training state every few minutes (a spectrum: each "
                             "eigenvalue); a killed job resumes from it (default: runs/snapshots; 'none': no "
                             "snapshots)")
    parser.add_argument("--via", choices=("direct", "papermill"), default="direct",
                        help="run each training job as a direct call (default) or as a papermill execution of its "
                             "chapter, keeping the executed notebook under --notebooks; both write the same results")
    parser.add_argument("--notebooks", default="runs/notebooks", help="where --via papermill keeps the notebooks")
    parser.add_argument("--jobs", nargs="+", metavar="PATTERN", default=None,
                        help="run only the jobs whose names match these shell-style patterns (quoted: "
                             "'qbert/conll2003/*-seed0', 'spectrum of sst2'), with the jobs they need")
    parser.add_argument("--list", action="store_true",
                        help="print each job of stages 1 and 2 (after --only and --jobs) with what a run would do "
                             "with it (done, to run, rerun), and run nothing")
    args = parser.parse_args(argv)
    if args.list:
        return list_plan(args.results, args.checkpoints, args.only, args.qbert_tasks.split(","), args.jobs)
    try:
        client, threads = make_client(args.scheduler, args.workers, args.threads,
                                      gpus=0 if args.device == "cpu" else None)
    except ValueError as err:
        parser.error(str(err))

    results, checkpoints = args.results, chapter_checkpoints(args.checkpoints, "qbert")
    spectra_folder = Path(results) / "qbert"
    wanted = wanted_tasks(args.only, args.qbert_tasks.split(","))
    failures: list[str] = []
    reports: list[Report] = []

    missed_by_stage: list[list[str]] = []  # the --jobs patterns each stage did not match

    def stage(number: int, jobs: list[Any]) -> None:
        """Run one stage's jobs (those --jobs selects) on the cluster, each after the jobs it needs."""
        if args.jobs is not None:
            jobs, missed = select_jobs(jobs, args.jobs)
            missed_by_stage.append(missed)
        snapshots = None if args.snapshots == "none" else args.snapshots
        jobs = [replace(j, device=args.device, checkpoint_dir=j.checkpoint_dir or args.keep_models,
                        snapshot_dir=snapshots) if isinstance(j, Job) else replace(j, snapshot_dir=snapshots)
                for j in jobs]
        if args.via == "papermill":
            chapters = Path(__file__).resolve().parents[2] / "chapters"
            jobs = [via_papermill(j, chapters, Path(args.notebooks).resolve()) if isinstance(j, Job) else j
                    for j in jobs]
        print(f"stage {number}: {len(jobs)} job(s) on {client.scheduler.address if client.scheduler else client}",
              flush=True)
        report = execute(jobs, client, threads, progress=lambda line: print(f"[stage {number}] {line}", flush=True))
        failures.extend(o.name for o in report.outcomes if o.status in ("failed", "not started"))
        reports.append(report)

    try:
        if args.only in (None, "sweep"):  # 1: the FP32 sweep picks the small tasks' protocols
            stage(1, sweep_jobs(results=results))
        jobs, waiting, unmeasured = second_stage(wanted, results, args.checkpoints)
        failures.extend(f"the rows of {t} (its FP32 sweep is incomplete: no protocol picked)" for t in waiting)
        stage(2, jobs)  # everything that needs no new spectrum; each QAT row starts once its Baseline is written
        new = _present_spectra(spectra_folder, unmeasured)
        failures.extend(f"the Q-BERT MP rows of {t} (no spectrum)" for t in unmeasured if t not in new)
        if new:  # 3: the MP rows of the tasks whose spectrum stage 2 measured
            new_baselines, new_main, _ = qbert_jobs(list(new), checkpoints, new, results=results)
            distilled = beyond_jobs(checkpoints, results=results, integer_tasks=(), spectra=new,
                                    distillation_tasks=[t for t in DISTILLATION_TASKS if t in new
                                                        and t in wanted["beyond"]])
            stage(3, _by_seed(new_baselines) + _by_seed([j for j in new_main + distilled if j.spec.layer_bits]))
    finally:
        close_client(client)
    failures.extend(unmatched_patterns(args.jobs or (), missed_by_stage))
    print("\n".join(report.summary() for report in reports), flush=True)
    if failures:
        print(f"{len(failures)} job(s) failed or not started: " + "; ".join(failures), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
