"""One Q8BERT run: fine-tune a BERT on a GLUE task in FP32 or with 8-bit QAT, evaluate, write the result files.

An ``fp32`` run also evaluates its trained weights under dynamic quantization (Q8BERT's DQ column: the FP32
model quantized after training, input ranges taken per batch), so one training gives both rows.
Results land in ``<results_dir>/<task>/<method>-seed<seed>.json``; a run whose files exist is skipped.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from qlib.config import dynamic_config, q8bert_config
from qlib.convert import convert_bert
from qlib.data import get_task, glue_batches
from qlib.metrics import glue_metrics
from qlib.models import DEFAULT_MODEL, load_classifier
from qlib.results import provenance, read_json, write_json
from qlib.train import finetune, predict, set_seed

METHODS = ("fp32", "qat")

PROTOCOL: dict[str, dict[str, Any]] = {
    "sst2": {"epochs": 1, "lr": 5e-5},
    "cola": {"epochs": 3, "lr": 5e-5},
    "rte": {"epochs": 3, "lr": 5e-5},
}
"""The CPU protocol's per-task settings (all: whole train set, batch 32, max 128 tokens, warm-up 10 %,
weight decay 0.01, seeds 0-2). SST-2 gets one epoch: 67 k sentences take ~27 min an epoch on 2 cores."""


def result_paths(results_dir: str | Path, task: str, method: str, seed: int) -> list[Path]:
    """The files a run writes: fp32 runs write ``fp32-`` and ``dq-`` files, qat runs a ``qat-`` file."""
    names = ("fp32", "dq") if method == "fp32" else (method,)
    return [Path(results_dir) / task / f"{name}-seed{seed}.json" for name in names]


def _evaluate(model: torch.nn.Module, batches, task: str) -> dict[str, Any]:
    start = time.perf_counter()
    predictions, labels = predict(model, batches)
    return {"metrics": glue_metrics(task, predictions, labels), "examples": len(labels),
            "seconds": time.perf_counter() - start}


def run_q8bert(task: str, method: str, seed: int, model: str = DEFAULT_MODEL, epochs: int = 3, lr: float = 5e-5,
               batch_size: int = 32, max_length: int = 128, max_train_examples: int | None = None,
               max_eval_examples: int | None = None, source: str = "auto", bits: int = 8,
               results_dir: str | Path = "results/q8bert", resume: bool = True,
               progress: bool = True) -> list[dict[str, Any]]:
    """Run one (task, method, seed) job and return its result records (read back from disk when resuming)."""
    info = get_task(task)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {METHODS} (fp32 runs also give the DQ result)")
    params = dict(task=info.name, method=method, seed=seed, model=model, epochs=epochs, lr=lr, batch_size=batch_size,
                  max_length=max_length, max_train_examples=max_train_examples,
                  max_eval_examples=max_eval_examples, source=source, bits=bits)
    paths = result_paths(results_dir, info.name, method, seed)
    if resume and all(p.is_file() for p in paths):
        return [read_json(p) for p in paths]

    start = time.perf_counter()
    set_seed(seed)
    net, tokenizer = load_classifier(model, info.num_labels)
    if method == "qat":
        convert_bert(net, q8bert_config(bits))
    train_batches = glue_batches(info.name, tokenizer, "train", batch_size, max_length, max_train_examples, seed,
                                 source, shuffle=True)
    dev_batches = glue_batches(info.name, tokenizer, "dev", 64, max_length, max_eval_examples, seed, source)
    training = finetune(net, train_batches, epochs, lr, progress=progress)
    evaluations = {method: _evaluate(net, dev_batches, info.name)}
    if method == "fp32":
        quantized = convert_bert(copy.deepcopy(net), dynamic_config(bits))
        evaluations["dq"] = _evaluate(quantized, dev_batches, info.name)
    wall = time.perf_counter() - start

    records = []
    for path, (name, evaluation) in zip(paths, evaluations.items()):
        record = {
            "experiment": "q8bert", "task": info.name, "method": name, "seed": seed,
            "metrics": evaluation["metrics"], "main_metric": info.metrics[0],
            "params": params, "train": {**training, "train_examples": len(train_batches.dataset)},
            "eval": {"examples": evaluation["examples"], "seconds": evaluation["seconds"]},
            "provenance": provenance(wall),
        }
        write_json(path, record)
        records.append(record)
    return records
