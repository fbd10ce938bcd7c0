"""What do length-grouped batches save? Padding and training-step time, random against grouped batches.

    python benchmarks/batching.py [--tasks sst2,cola,mrpc,stsb,rte,conll2003,squad] [--steps 12] [--model M]
                                  [--out FILE]

For each task the script builds the protocol's training batches at seed 0 twice: uniformly random
(``TrainingProtocol(group_by_length=False)``, how every result before the protocol grouped them was trained) and
grouped by length (the protocol's default), and counts over one whole epoch the tokens the batches hold once padded
against the tokens their inputs hold. It then times training steps (forward, backward, AdamW) of the task's model in
FP32 and with Q8BERT's fake quantization on ``--steps`` batches of each order, spread evenly over the epoch (a grouped
epoch runs long to short within each run of 50 batches), a random and a grouped step in turn on one model, and
reports the mean seconds a step and their ratio. Run it on a quiet CPU: the protocol runner paused.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from statistics import mean
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from qlib.bert.config import q8bert_config  # noqa: E402
from qlib.bert.convert import convert_bert  # noqa: E402
from qlib.experiments.data import data_provenance  # noqa: E402
from qlib.experiments.experiment import PROTOCOL  # noqa: E402
from qlib.experiments.models import DEFAULT_MODEL, model_path  # noqa: E402
from qlib.experiments.results import benchmark_path, provenance, write_json  # noqa: E402
from qlib.experiments.spec import TrainingProtocol  # noqa: E402
from qlib.experiments.tasks import get_run_task  # noqa: E402

ORDERS = {"random": False, "grouped": True}
"""The two batch orders measured, as ``TrainingProtocol.group_by_length``."""


def epoch_batches(task: str, tokenizer: Any, group_by_length: bool, steps: int
                  ) -> tuple[dict[str, int], list[dict[str, torch.Tensor]]]:
    """One epoch of ``task``'s protocol batches at seed 0: (token counts: ``batches``, ``padded_tokens``,
    ``input_tokens``; the ``steps`` batches at evenly spread positions of the epoch)."""
    protocol = TrainingProtocol(**PROTOCOL.get(task, {}), group_by_length=group_by_length)
    batches = get_run_task(task).train_batches(tokenizer, protocol, seed=0)
    keep = set(np.linspace(0, len(batches) - 1, steps).round().astype(int).tolist())
    counts, kept = {"batches": 0, "padded_tokens": 0, "input_tokens": 0}, []
    for index, batch in enumerate(batches):
        counts["batches"] += 1
        counts["padded_tokens"] += batch["input_ids"].numel()
        counts["input_tokens"] += int(batch["attention_mask"].sum())
        if index in keep:
            kept.append(batch)
    return counts, kept


def step_seconds(task: str, model: str, quantized: bool, batches: dict[str, list[dict[str, torch.Tensor]]]
                 ) -> dict[str, list[float]]:
    """Seconds of one training step on each batch of each order, a step of each order in turn on one model."""
    net, _ = get_run_task(task).load(model)
    if quantized:
        convert_bert(net, q8bert_config())
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, foreach=True)
    net.train()
    seconds: dict[str, list[float]] = {order: [] for order in batches}
    for step in zip(*batches.values()):
        for order, batch in zip(batches, step):
            start = time.perf_counter()
            net(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[order].append(time.perf_counter() - start)
    return seconds


def measure(task: str, steps: int, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """``task``'s padding and step times under both orders, and the grouped order's savings."""
    tokenizer = AutoTokenizer.from_pretrained(model_path(model))
    counts, batches = {}, {}
    for order, grouped in ORDERS.items():
        counts[order], batches[order] = epoch_batches(task, tokenizer, grouped, steps)
    row: dict[str, Any] = {order: dict(counts[order]) for order in ORDERS}
    for method, quantized in (("fp32", False), ("qat", True)):
        seconds = step_seconds(task, model, quantized, batches)
        for order in ORDERS:
            row[order][f"{method}_s_per_step"] = mean(seconds[order])
        row[f"{method}_speedup"] = row["random"][f"{method}_s_per_step"] / row["grouped"][f"{method}_s_per_step"]
    row["padding_ratio"] = row["random"]["padded_tokens"] / row["grouped"]["padded_tokens"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,cola,mrpc,stsb,rte,conll2003,squad")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per order, method and task")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a BERT name or path (default: the packaged model)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/benchmarks/batching-<class>-<time>")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    tasks = [get_run_task(name).name for name in args.tasks.split(",")]
    out = args.out or benchmark_path("batching")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start, rows = time.perf_counter(), {}
    for task in tasks:
        rows[task] = measure(task, args.steps, args.model)
        print(f"{task}: padded tokens random/grouped {rows[task]['padding_ratio']:.2f}x, step time "
              f"FP32 {rows[task]['fp32_speedup']:.2f}x, QAT {rows[task]['qat_speedup']:.2f}x", flush=True)
    files = sorted({file for task in tasks for file in get_run_task(task).provenance("local")["files"]})
    write_json(out, {"experiment": "batching", "params": {"tasks": tasks, "steps": args.steps,
                                                          "model": args.model, "seed": 0},
                     "tasks": rows, "provenance": provenance(time.perf_counter() - start, data=data_provenance(files))})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
