"""One GLUE run: fine-tune a BERT in FP32 or with quantization-aware training, evaluate, write the result files.

Methods: ``fp32``; ``qat`` (Q8BERT: 8-bit symmetric, EMA input ranges); ``qbert`` (Q-BERT: asymmetric weights at
``weight_bits``, embedding at ``embedding_bits``, optional groups and per-layer bits). An ``fp32`` run also
evaluates its trained weights under each post-training quantization in ``post_training``: ``dq`` (Q8BERT's
DQ column: 8-bit, input ranges per batch) and ``directq-w<b>`` (Q-BERT's DirectQ: b-bit weights, no
fine-tuning), so one training gives all those rows.
Results land in ``<results_dir>/<task>/<label>-seed<seed>.json``; a run whose files all exist is skipped.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from qlib.checkpoint import load_float, save_float, save_quantized
from qlib.config import BertQuantConfig, dynamic_config, q8bert_config, qbert_config
from qlib.convert import convert_bert
from qlib.data import get_task, glue_batches, glue_provenance
from qlib.metrics import glue_metrics
from qlib.models import DEFAULT_MODEL, load_classifier
from qlib.observers import Q8BERT_EMA_DECAY
from qlib.results import provenance, read_json, write_json
from qlib.train import finetune, predict, resolve_device, set_seed

METHODS = ("fp32", "qat", "qbert")

PROTOCOL: dict[str, dict[str, Any]] = {"sst2": {"epochs": 1, "lr": 5e-5}}
"""The CPU protocol's fixed per-task settings (all: whole train set, batch 32, max 128 tokens, warm-up 10 %,
weight decay 0.01, seeds 0-2). SST-2 gets one epoch: its 67 k sentences make it the protocol's longest job. The
small tasks of ``SWEEP_TASKS`` take theirs from their FP32 sweep; any other task, BERT's usual 3 epochs at 5e-5."""

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
    name = get_task(task).name
    if name not in SWEEP_TASKS:
        return dict(PROTOCOL.get(name, {"epochs": 3, "lr": 5e-5}))
    scores = sweep_scores(name, results)
    missing = [point for point, score in scores if score is None]
    if missing:
        raise FileNotFoundError(
            f"{name}'s FP32 protocol is picked by its sweep, and {len(missing)} of its {len(scores)} points are not "
            f"under {Path(results) / 'q8bert-sweep'} yet ({missing}); run `python -m qlib.protocol --only sweep`")
    return dict(max(scores, key=lambda item: item[1])[0])  # max keeps the first of equal scores


def run_label(method: str, weight_bits: int = 8, embedding_bits: int = 8, groups: int | str | None = None,
              layer_bits: Mapping[str, int] | None = None, ema_decay: float | None = None,
              percentile: float | None = None, init_from: str | Path | None = None, noise_rate: float = 1.0) -> str:
    """The name a run's result file starts with: ``fp32``, ``qat``, ``qbert-w3e8``, ``qbert-w3e8-per-row``,
    ``qbert-w2e8-g12-mp2-3`` (mixed precision, its bit widths), ``qbert-w3e8-g12-p99.9`` (weight ranges clipped to
    percentiles), ``qbert-w2e8-g12-p99.9-qn0.5`` (Quant-Noise at rate 0.5), ``qbert-w3e8-g12-p99.9-ft`` (QAT
    started from a fine-tuned FP32 model), ``qat-ema0.99`` (QAT, another EMA decay) …"""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {METHODS} (fp32 runs also give post-training rows)")
    if noise_rate != 1.0 and method != "qbert":
        raise ValueError(f"noise_rate={noise_rate!r} is for method 'qbert' (Quant-Noise on Q-BERT's grids), "
                         f"not {method!r}")
    if method == "qat" and ema_decay is not None and ema_decay != Q8BERT_EMA_DECAY:
        return f"qat-ema{ema_decay:g}"
    if method != "qbert":
        return method
    grouping = "-per-row" if groups == "row" else f"-g{groups}" if groups else ""
    clipping = f"-p{percentile:g}" if percentile is not None else ""
    mixed = "-mp" + "-".join(map(str, sorted({weight_bits, *layer_bits.values()}))) if layer_bits else ""
    noise = f"-qn{noise_rate:g}" if noise_rate != 1.0 else ""
    start = "-ft" if init_from is not None else ""
    return f"qbert-w{weight_bits}e{embedding_bits}{grouping}{clipping}{mixed}{noise}{start}"


def training_config(method: str, weight_bits: int = 8, embedding_bits: int = 8, groups: int | str | None = None,
                    layer_bits: Mapping[str, int] | None = None, ema_decay: float | None = None,
                    percentile: float | None = None, noise_rate: float = 1.0) -> BertQuantConfig | None:
    """The quantization a ``method`` trains with: None for ``fp32``, Q8BERT's for ``qat``, Q-BERT's for ``qbert``
    (with Quant-Noise when ``noise_rate`` < 1)."""
    run_label(method, noise_rate=noise_rate)  # names a bad method or noise rate
    if method == "qat":
        return q8bert_config(8, Q8BERT_EMA_DECAY if ema_decay is None else ema_decay)
    if method == "qbert":
        return qbert_config(weight_bits, embedding_bits, groups=groups, layer_bits=layer_bits, percentile=percentile,
                            noise_rate=noise_rate)
    return None


def is_post_training(record: dict[str, Any]) -> bool:
    """Whether a result record is a post-training row (``dq``, ``directq-w<b>…``): written by an ``fp32`` run for
    its trained weights quantized with no further training."""
    return record["params"]["method"] == "fp32" and record["method"] != "fp32"


def record_config(record: Mapping[str, Any]) -> BertQuantConfig | None:
    """The quantization a result record's model was evaluated with (None: FP32): a post-training row's, else the
    one its method trained with."""
    params = record["params"]
    if is_post_training(record):
        return post_training_config(record["method"], params.get("groups"))
    return training_config(params["method"], params.get("weight_bits", 8), params.get("embedding_bits", 8),
                           params.get("groups"), params.get("layer_bits"), params.get("ema_decay"),
                           params.get("percentile"), params.get("noise_rate", 1.0))


def post_training_config(name: str, groups: int | str | None = None) -> BertQuantConfig:
    """The config of a post-training row: ``dq``, or ``directq-w<b>`` (b in 2..8) with min/max weight ranges, or
    ``directq-w<b>-p<p>`` with each group's range clipped to its [100 - p, p] percentiles."""
    if name == "dq":
        return dynamic_config(8)
    match = re.fullmatch(r"directq-w(\d)(?:-p(\d+(?:\.\d+)?))?", name)
    if match:
        percentile = float(match.group(2)) if match.group(2) else None
        return qbert_config(int(match.group(1)), groups=groups, observer="dynamic", percentile=percentile)
    raise ValueError(f"unknown post-training quantization {name!r}; allowed: 'dq', 'directq-w<bits>' (bits 2..8), "
                     "'directq-w<bits>-p<percentile>'")


def result_paths(results_dir: str | Path, task: str, label: str, seed: int,
                 post_training: Sequence[str] = ("dq",)) -> list[Path]:
    """The files a run writes: its own, plus one per post-training row for fp32 runs."""
    names = (label, *post_training) if label == "fp32" else (label,)
    return [Path(results_dir) / task / f"{name}-seed{seed}.json" for name in names]


def _evaluate(model: torch.nn.Module, batches, task: str) -> dict[str, Any]:
    start = time.perf_counter()
    predictions, labels = predict(model, batches)
    return {"metrics": glue_metrics(task, predictions, labels), "examples": len(labels),
            "seconds": time.perf_counter() - start}


def run_glue(task: str, method: str, seed: int, model: str = DEFAULT_MODEL, epochs: int = 3, lr: float = 5e-5,
             batch_size: int = 32, max_length: int = 128, max_train_examples: int | None = None,
             max_eval_examples: int | None = None, source: str = "auto", weight_bits: int = 8,
             embedding_bits: int = 8, groups: int | str | None = None, layer_bits: Mapping[str, int] | None = None,
             post_training: Sequence[str] = ("dq",), experiment: str = "q8bert",
             results_dir: str | Path = "results/q8bert", resume: bool = True, progress: bool = True,
             device: str | None = None, ema_decay: float | None = None,
             checkpoint_dir: str | Path | None = None, init_from: str | Path | None = None,
             percentile: float | None = None, noise_rate: float = 1.0) -> list[dict[str, Any]]:
    """Run one (task, method, seed) job and return its result records (read back from disk when resuming).

    ``device``: where to train and evaluate (``None``/``"auto"``: the GPU when there is one); the result's
    provenance names it. The protocol is the same on any device. ``ema_decay``: the QAT input ranges' EMA decay
    (None: Q8BERT's 0.9999). ``checkpoint_dir``: also keep the trained model as
    ``<checkpoint_dir>/<task>/<label>-seed<seed>.safetensors`` (FP32 file, or bit-packed with its ranges).
    ``init_from``: start from this FP32 checkpoint of ``model`` (a ``save_float`` file, e.g. the FP32 run of the
    same task and seed kept with ``checkpoint_dir``) instead of the pretrained weights, as Q-BERT's QAT starts
    from the fine-tuned FP32 model. ``percentile``: Q-BERT weight ranges clipped to each group's [100 - p, p]
    percentiles instead of min/max. ``noise_rate``: Quant-Noise (``qbert`` only): each training step quantizes a
    random fraction ``noise_rate`` of every Linear's weight blocks; evaluation quantizes them all."""
    info = get_task(task)
    target = resolve_device(device)
    label = run_label(method, weight_bits, embedding_bits, groups, layer_bits, ema_decay, percentile, init_from,
                      noise_rate)
    post_training = tuple(post_training) if method == "fp32" else ()
    configs = {name: post_training_config(name, groups) for name in post_training}
    params = dict(task=info.name, method=method, seed=seed, model=model, epochs=epochs, lr=lr, batch_size=batch_size,
                  max_length=max_length, max_train_examples=max_train_examples,
                  max_eval_examples=max_eval_examples, source=source, weight_bits=weight_bits,
                  embedding_bits=embedding_bits, groups=groups, layer_bits=dict(layer_bits or {}) or None,
                  post_training=list(post_training), ema_decay=ema_decay,
                  init_from=None if init_from is None else str(init_from), percentile=percentile,
                  noise_rate=noise_rate)
    paths = result_paths(results_dir, info.name, label, seed, post_training)
    if resume and all(p.is_file() for p in paths):
        return [read_json(p) for p in paths]

    start = time.perf_counter()
    set_seed(seed)
    net, tokenizer = load_classifier(model, info.num_labels)
    if init_from is not None:
        load_float(net, init_from)
    config = training_config(method, weight_bits, embedding_bits, groups, layer_bits, ema_decay, percentile,
                             noise_rate)
    if config is not None:
        convert_bert(net, config)
    net.to(target)
    train_batches = glue_batches(info.name, tokenizer, "train", batch_size, max_length, max_train_examples, seed,
                                 source, shuffle=True)
    dev_batches = glue_batches(info.name, tokenizer, "dev", 64, max_length, max_eval_examples, seed, source)
    training = finetune(net, train_batches, epochs, lr, progress=progress)
    evaluations = {label: _evaluate(net, dev_batches, info.name)}
    for name, config in configs.items():
        evaluations[name] = _evaluate(convert_bert(copy.deepcopy(net), config).to(target), dev_batches, info.name)
    if checkpoint_dir is not None:
        checkpoint = Path(checkpoint_dir) / info.name / f"{label}-seed{seed}.safetensors"
        (save_float if method == "fp32" else save_quantized)(net.cpu(), checkpoint)
    wall = time.perf_counter() - start
    data = glue_provenance(info.name, source=source)

    records = []
    for path, (name, evaluation) in zip(paths, evaluations.items()):
        record = {
            "experiment": experiment, "task": info.name, "method": name, "seed": seed,
            "metrics": evaluation["metrics"], "main_metric": info.metrics[0],
            "params": params, "train": {**training, "train_examples": len(train_batches.dataset)},
            "eval": {"examples": evaluation["examples"], "seconds": evaluation["seconds"]},
            "provenance": provenance(wall, target, data=data),
        }
        write_json(path, record)
        records.append(record)
    return records
