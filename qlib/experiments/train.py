"""Fine-tuning and evaluation loops (AdamW, linear warm-up and decay, as in BERT's GLUE recipe).

A plain loop rather than ``transformers.Trainer``: forty lines that show every step (fake quantization lives in
the modules, so QAT and FP32 share this loop), and no accelerate/TrainingArguments machinery to pin.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import replace
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from qlib.experiments.results import code_state
from qlib.experiments.snapshots import Progress, Snapshots, load_snapshot, save_snapshot


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (model head initialization, dropout, data order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | None) -> torch.device:
    """``None`` or ``"auto"``: the GPU when there is one, else the CPU; otherwise ``device`` as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:<n>'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use 'cpu' or 'auto'")
    return resolved


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def finetune(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], epochs: int, lr: float,
             warmup_ratio: float = 0.1, weight_decay: float = 0.01, progress: bool = True,
             loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
             snapshots: Snapshots | None = None) -> dict[str, Any]:
    """Train ``model`` on ``batches`` (a re-iterable loader) for ``epochs`` on the model's device; returns
    throughput figures. ``loss_fn(model, batch)``: the loss to minimize (default: the head's own, from the batch's
    labels), e.g. ``qlib.experiments.distill.distillation_loss``. With ``snapshots``, the training state is saved
    every ``snapshots.every_s`` seconds and at the end, and a call whose snapshot exists goes on from it
    (``qlib.experiments.snapshots``): the figures then also give the steps it ``resumed_at_steps`` (the last step
    where the call had finished and only its weights are loaded) and the ``commits`` of the processes that trained
    it."""
    if epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    # fused: AdamW's update in one kernel over all tensors (CPU and CUDA), several times faster than the per-parameter
    # or foreach loops here, where the optimizer is a fixed cost of every step; the same update, rounded differently.
    optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)
    total = epochs * len(batches)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    device = _device_of(model)
    identity = {"epochs": epochs, "steps_per_epoch": len(batches), "lr": lr}
    path = None if snapshots is None else snapshots.claim()
    done, data_state = Progress(), None
    if path is not None and path.is_file():
        done, data_state = load_snapshot(path, model, optimizer, schedule, identity)
        # a finished call replayed: taken over at its last step, so its figures name the process that trained it
        done.resumed_at.append(total if done.finished else done.epoch * len(batches) + done.step)
    if path is not None and not done.finished:
        done.commits.append(code_state()["git_commit"])  # each process that trains this call
    generator = getattr(batches, "generator", None)  # a DataLoader's: it draws each epoch's order
    model.train()
    start = saved = time.perf_counter()
    bar = tqdm(total=total, initial=done.epoch * len(batches) + done.step, desc="train", disable=not progress,
               mininterval=10)
    for epoch in range(done.epoch, epochs):
        if data_state is not None and generator is not None:  # resuming this epoch: its order again
            generator.set_state(data_state)
        data_state = None if generator is None else generator.get_state()
        for batch in itertools.islice(batches, done.step, None):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            done.step, done.examples = done.step + 1, done.examples + len(batch["input_ids"])
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if snapshots is not None and time.perf_counter() - saved >= snapshots.every_s:
                seconds = done.seconds + time.perf_counter() - start
                save_snapshot(path, model, optimizer, schedule, replace(done, seconds=seconds), data_state, identity)
                saved = time.perf_counter()
        done.epoch, done.step = epoch + 1, 0
    bar.close()
    if not done.finished:
        done.seconds, done.finished = done.seconds + time.perf_counter() - start, True
        if snapshots is not None:
            save_snapshot(path, model, optimizer, schedule, done, data_state, identity)
    figures = {"steps": total, "examples": done.examples, "seconds": done.seconds,
               "examples_per_s": done.examples / done.seconds}
    return figures | ({"resumed_at_steps": done.resumed_at, "commits": done.commits} if done.resumed_at else {})


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) over ``batches``: argmax of the logits, or the score for a regression head."""
    device = _device_of(model)
    model.eval()
    predictions, labels = [], []
    for batch in batches:
        logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.cpu()
        predictions.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
        labels.append(batch["labels"])
    return torch.cat(predictions).numpy(), torch.cat(labels).numpy()
