"""One run: ``run(spec)`` fine-tunes a BERT on its task (GLUE, SQuAD or CoNLL-2003; ``qlib.experiments.tasks``) as its
``RunSpec`` says (FP32, Q8BERT QAT, Q-BERT QAT, Quant-Noise or iPQ), evaluates it, and writes the result files; the
protocol's per-task settings and FP32 sweep.

An ``fp32`` run also evaluates its trained weights under each post-training spec it is given (``dq``: Q8BERT's DQ
column; ``directq``: Q-BERT's DirectQ, no fine-tuning), so one training gives all those rows. Results land at each
spec's ``result_path`` (``<results_dir>/<task>/<label>-seed<seed>.json``); a run whose files all exist is skipped.
``run_glue`` is the same run with the spec's fields as keywords (the chapters' papermill parameters).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from qlib.bert.convert import convert_bert, find_bert
from qlib.bert.pq_modules import IPQ_STAGES, product_quantize
from qlib.bert.pq_noise import add_pq_noise, remove_pq_noise
from qlib.deploy.checkpoint import load_float, save_float, save_quantized
from qlib.experiments.data import get_task
from qlib.experiments.distill import distillation_loss
from qlib.experiments.results import provenance, read_json, write_json
from qlib.experiments.snapshots import Snapshots
from qlib.experiments.spec import RunSpec, TrainingProtocol
from qlib.experiments.tasks import RunTask, get_run_task
from qlib.experiments.train import finetune, resolve_device, set_seed

PROTOCOL: dict[str, dict[str, Any]] = {
    "sst2": {"epochs": 1, "lr": 5e-5},
    "squad": {"epochs": 1, "lr": 5e-5, "max_train_examples": 20_000, "max_length": 256, "doc_stride": 128},
}
"""The CPU protocol's fixed per-task settings (all: whole train set, batches of 32 grouped by length, max 128 tokens,
warm-up 10 %, weight decay 0.01, seeds 0-2, unless the task's entry says otherwise). SST-2 gets one epoch: its 67 k
sentences make it the longest GLUE job. SQuAD trains one epoch on a fixed random 20 k of the reconstructed train
file's questions (seeded by the run's seed), in windows of 256 tokens that overlap by 128, and is scored on the whole
official dev set; that size was chosen from the throughput of one measured FP32 run on random batches
(``results/squad-sizing``), so that an epoch takes a few hours on a 2-core CPU rather than a working day for all 88 k
questions. The small tasks of ``SWEEP_TASKS`` take theirs from their FP32 sweep; any other task (CoNLL-2003 among
them), BERT's usual 3 epochs at 5e-5."""

SWEEP_TASKS = ("rte", "mrpc", "stsb", "cola")
SWEEP_GRID: dict[str, tuple] = {"lr": (2e-5, 5e-5), "epochs": (3, 6)}
"""The FP32 protocol sweep: each small task fine-tuned at seed 0 at every learning rate and epoch count here; the
point with the best dev score (the task's main metric) is its protocol, used unchanged by its FP32, DQ and QAT rows
(as Q8BERT did)."""


def sweep_folder(lr: float, epochs: int) -> str:
    """Where one point of the FP32 sweep writes, under the results folder: ``q8bert-sweep/lr2e-05-ep3``."""
    return f"q8bert-sweep/lr{lr:g}-ep{epochs}"


def sweep_points() -> list[dict[str, Any]]:
    """The sweep's grid in order: fewer epochs first, then the smaller learning rate (the order ties go by)."""
    return [{"epochs": e, "lr": lr} for e in SWEEP_GRID["epochs"] for lr in SWEEP_GRID["lr"]]


def sweep_scores(task: str, results: str | Path = "results") -> list[tuple[dict[str, Any], float | None]]:
    """(grid point, dev main metric or None when not run yet) of ``task``'s FP32 sweep under ``results``."""
    info = get_task(task)
    scores = []
    for point in sweep_points():
        path = Path(results) / sweep_folder(point["lr"], point["epochs"]) / info.name / "fp32-seed0.json"
        scores.append((point, read_json(path)["metrics"][info.metrics[0]] if path.is_file() else None))
    return scores


def protocol_for(task: str, results: str | Path = "results") -> dict[str, Any]:
    """The protocol's epochs and learning rate for ``task``: ``PROTOCOL``'s for SST-2, the best point of the FP32
    sweep under ``results`` for a task of ``SWEEP_TASKS`` (refused, saying what to run, until every point of it is
    there), and BERT's usual 3 epochs at 5e-5 for any other task."""
    name = get_run_task(task).name
    if name not in SWEEP_TASKS:
        return dict(PROTOCOL.get(name, {"epochs": 3, "lr": 5e-5}))
    scores = sweep_scores(name, results)
    missing = [point for point, score in scores if score is None]
    if missing:
        raise FileNotFoundError(
            f"{name}'s FP32 protocol is picked by its sweep, and {len(missing)} of its {len(scores)} points are not "
            f"under {Path(results) / 'q8bert-sweep'} yet ({missing}); run "
            "`python -m qlib.experiments.protocol --only sweep`")
    return dict(max(scores, key=lambda item: item[1])[0])  # max keeps the first of equal scores


def _evaluate(model: torch.nn.Module, task: RunTask, data: Any) -> dict[str, Any]:
    start = time.perf_counter()
    metrics, examples = task.score(model, data)
    return {"metrics": metrics, "examples": examples, "seconds": time.perf_counter() - start}


def _evaluate_rows(net: torch.nn.Module, spec: RunSpec, rows: Sequence[RunSpec], task: RunTask, data: Any,
                   device: torch.device, snapshots: Snapshots | None) -> dict[str, dict[str, Any]]:
    """The trained ``net`` evaluated as ``spec`` and under each post-training row (on a converted copy), by label.

    With ``snapshots``, each evaluation is kept beside them as it lands (``Snapshots.keep``, keyed by the
    row's whole settings), and a run killed during its evaluations reuses the kept ones when it resumes instead of
    evaluating them again; a reused evaluation names the process that made it (``made_by``: git commit and date).
    """
    kept = {} if snapshots is None else snapshots.kept()
    evaluations = {}
    for row in (spec, *rows):
        key = json.dumps(row.to_dict(), sort_keys=True)
        if key in kept:
            evaluations[row.label] = kept[key]
            continue
        model = net if row is spec else convert_bert(copy.deepcopy(net), row.quant_config()).to(device)
        evaluations[row.label] = _evaluate(model, task, data)
        if snapshots is not None:
            snapshots.keep(key, evaluations[row.label])
    return evaluations


def checkpoint_path(spec: RunSpec, checkpoint_dir: str | Path) -> Path:
    """Where ``run`` keeps the model of ``spec`` (``<checkpoint_dir>/<task>/<label>-seed<seed>.safetensors``): the
    FP32 file of an ``fp32`` run (what Q-BERT's QAT rows start from), else the bit-packed file with its ranges."""
    return Path(checkpoint_dir) / spec.task / f"{spec.label}-seed{spec.seed}.safetensors"


def snapshot_folder(spec: RunSpec, snapshot_dir: str | Path) -> Path:
    """Where ``run`` keeps the training snapshots of ``spec`` while it trains
    (``<snapshot_dir>/<task>/<label>-seed<seed>-<digest>``, the digest of the whole spec, protocol included, so
    that no other training ever resumes from them)."""
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return Path(snapshot_dir) / spec.task / f"{spec.label}-seed{spec.seed}-{digest}"


def _ipq_stages(net: torch.nn.Module, spec: RunSpec, batches: Any, device: torch.device, progress: bool,
                snapshots: Snapshots | None) -> dict[str, Any]:
    """iPQ (Quant-Noise sec. 4.1): for each of ``IPQ_STAGES`` in turn, product-quantize its layers
    (``product_quantize`` with the spec's centroids and centroid bits) and fine-tune for the protocol's epochs;
    with a ``noise_rate`` < 1, first a stage ``"noise"`` that fine-tunes the float model as long with PQ noise at
    that rate (``qlib.bert.pq_noise``). Returns the last stage's throughput figures with every stage's under
    ``stages``."""
    stages = {}
    if spec.noise_rate < 1.0:
        add_pq_noise(find_bert(net), spec.noise_rate, spec.centroids, spec.centroid_bits, seed=spec.seed)
        net.to(device)
        stages["noise"] = finetune(net, batches, spec.protocol.epochs, spec.protocol.lr, progress=progress,
                                   snapshots=snapshots)
        remove_pq_noise(find_bert(net))
    for stage in IPQ_STAGES:
        product_quantize(find_bert(net), stage, spec.centroids, centroid_bits=spec.centroid_bits, seed=spec.seed)
        net.to(device)
        stages[stage] = finetune(net, batches, spec.protocol.epochs, spec.protocol.lr, progress=progress,
                                 snapshots=snapshots)
    return stages[IPQ_STAGES[-1]] | {"stages": stages}


def _params(spec: RunSpec, post_training: Sequence[RunSpec]) -> dict[str, Any]:
    """The trained run's settings as a result record's ``params`` (the flat layout every result file has)."""
    flat = spec.to_dict()
    return flat | flat.pop("protocol") | {"layer_bits": flat["layer_bits"] or None,
                                          "post_training": [row.label for row in post_training]}


def evaluated_rows(spec: RunSpec, post_training: Sequence[RunSpec] = (),
                   also: Mapping[str | Path, Sequence[RunSpec]] | None = None) -> list[RunSpec]:
    """The post-training rows ``run`` evaluates on ``spec``'s trained weights, one per label: ``post_training``'s
    and those of ``also`` other than ``spec`` itself (a row two folders want is evaluated once)."""
    others = [row for rows in (also or {}).values() for row in rows if row != spec]
    return list({row.label: row for row in [*post_training, *others]}.values())


def run(spec: RunSpec, post_training: Sequence[RunSpec] = (), experiment: str = "q8bert",
        results_dir: str | Path = "results/q8bert", resume: bool = True, progress: bool = True,
        device: str | None = None, checkpoint_dir: str | Path | None = None,
        also: Mapping[str | Path, Sequence[RunSpec]] | None = None,
        snapshot_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Train and evaluate the run ``spec`` names, and write its result file (and one per ``post_training`` row).

    Args:
        spec: a trained run (``fp32``, ``qat`` or ``qbert``); a post-training spec is refused with its
            ``trained_spec`` named.
        post_training: ``dq`` / ``directq`` specs of the same task, seed and protocol, evaluated on an ``fp32``
            run's trained weights.
        experiment: the chapter the records belong to (their ``experiment`` field).
        results_dir: the folder the result files go under (``spec.result_path(results_dir)``).
        resume: return the records already on disk when every file of the run exists.
        device: where to train and evaluate (None/``"auto"``: the GPU when there is one); the provenance names it.
        checkpoint_dir: also keep the trained model at ``checkpoint_path(spec, checkpoint_dir)``.
        also: rows also written under another results folder (folder -> rows): ``spec`` itself, or post-training
            rows of it evaluated for that folder only. One training then serves two chapters (Q-BERT's FP32
            Baseline is Q8BERT's FP32 run, and gives its DQ row).
        snapshot_dir: save the training state every few minutes under ``snapshot_folder(spec, snapshot_dir)``, and
            each evaluation as it lands, and go on from them if they are there (a killed run resumes:
            ``qlib.experiments.snapshots``); removed once the results are written.

    Returns:
        The run's records, its own first, read back from disk when resuming.
    """
    if spec.is_post_training:
        raise ValueError(f"{spec.label} trains nothing: run its trained spec ({spec.trained_spec.label}) with it "
                         "in post_training")
    elsewhere = [(row, row.result_path(folder)) for folder, rows in (also or {}).items() for row in rows]
    evaluated = evaluated_rows(spec, post_training, also)
    foreign = [row.label for row in evaluated
               if not row.is_post_training or row.trained_spec != spec.with_(init_from=None)]
    if foreign or (evaluated and spec.method != "fp32"):
        raise ValueError(f"post_training rows {foreign or [r.label for r in evaluated]} do not belong to "
                         f"{spec.label}: they must be dq/directq specs of an fp32 run of the same task, seed and "
                         "protocol")
    written = [(row, row.result_path(results_dir)) for row in (spec, *post_training)] + elsewhere
    if resume and all(path.is_file() for _, path in written):
        return [read_json(path) for _, path in written]

    task, protocol, target = get_run_task(spec.task), spec.protocol, resolve_device(device)
    start = time.perf_counter()
    set_seed(spec.seed)
    attention = "eager" if spec.distillation == "hidden" else None  # eager attention returns the attention maps
    net, tokenizer = task.load(protocol.model, attention)
    if spec.init_from is not None:
        load_float(net, spec.init_from)
    config = spec.quant_config()
    if config is not None:
        convert_bert(net, config)
    net.to(target)
    train_batches = task.train_batches(tokenizer, protocol, spec.seed)
    dev = task.eval_data(tokenizer, protocol, spec.seed)
    loss = None
    if spec.distillation is not None:  # the teacher: the FP32 model the student starts from
        teacher = load_float(task.load(protocol.model, attention)[0], spec.init_from).to(target)
        loss = distillation_loss(teacher, spec.distillation)
    snapshots = None if snapshot_dir is None else Snapshots(snapshot_folder(spec, snapshot_dir))
    if spec.method == "ipq":
        training = _ipq_stages(net, spec, train_batches, target, progress, snapshots)
    else:
        training = finetune(net, train_batches, protocol.epochs, protocol.lr, progress=progress, loss_fn=loss,
                            snapshots=snapshots)
    evaluations = _evaluate_rows(net, spec, evaluated, task, dev, target, snapshots)
    if checkpoint_dir is not None:
        (save_float if spec.method == "fp32" else save_quantized)(net.cpu(), checkpoint_path(spec, checkpoint_dir))
    wall = time.perf_counter() - start
    data = task.provenance(protocol.source)

    params, origin = _params(spec, evaluated), provenance(wall, target, data=data)  # one run: one provenance
    records = []
    for row, path in written:
        evaluation = evaluations[row.label]
        record = {
            "experiment": experiment, "task": task.name, "method": row.label, "seed": spec.seed,
            "spec": row.to_dict(), "metrics": evaluation["metrics"], "main_metric": task.metrics[0],
            "params": params, "train": {**training, "train_examples": len(train_batches.dataset)},
            "eval": {key: evaluation[key] for key in ("examples", "seconds", "made_by") if key in evaluation},
            "provenance": origin,
        }
        write_json(path, record)
        records.append(record)
    if snapshots is not None:
        snapshots.clear()
    return records


RUN_OPTIONS = ("experiment", "results_dir", "resume", "progress", "device", "checkpoint_dir", "snapshot_dir")
"""``run``'s keywords that are not part of a run's identity."""


def run_glue(task: str, method: str, seed: int, model: str | None = None, *,
             post_training: Sequence[str] = ("dq",), **knobs: Any) -> list[dict[str, Any]]:
    """``run`` with the spec as keywords, as the chapters' parameters give it: ``knobs`` are ``RunSpec`` and
    ``TrainingProtocol`` fields (``epochs``, ``lr``, ``weight_bits``, ``groups``, ``init_from``…) and ``run``'s
    options (``results_dir``, ``checkpoint_dir``, ``device``…). ``post_training`` names the rows an ``fp32`` run
    also evaluates by their labels (``dq``, ``directq-w3-p99.9``); an ``fp32`` run's ``groups`` are its DirectQ
    rows' G. A knob its method does not have is refused, naming it."""
    options = {name: knobs.pop(name) for name in RUN_OPTIONS if name in knobs}
    if model is not None:
        knobs["model"] = model
    groups = knobs.pop("groups", None) if method == "fp32" else knobs.get("groups")
    protocol_fields = {f.name for f in fields(TrainingProtocol)}
    protocol = TrainingProtocol(**{k: knobs.pop(k) for k in list(knobs) if k in protocol_fields})
    spec = RunSpec(task, method, seed, **knobs, protocol=protocol)
    rows = [RunSpec.from_label(name, task, seed, protocol=spec.protocol,
                               groups=groups if name.startswith("directq") else None)
            for name in (post_training if method == "fp32" else ())]
    return run(spec, rows, **options)
