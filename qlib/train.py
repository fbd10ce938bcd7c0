"""Fine-tuning and evaluation loops (AdamW, linear warm-up and decay, as in BERT's GLUE recipe).

A plain loop rather than ``transformers.Trainer``: forty lines that show every step (fake quantization lives in
the modules, so QAT and FP32 share this loop), and no accelerate/TrainingArguments machinery to pin.
"""

from __future__ import annotations

import random
import time
from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (model head initialization, dropout, data order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def finetune(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], epochs: int, lr: float,
             warmup_ratio: float = 0.1, weight_decay: float = 0.01, progress: bool = True) -> dict[str, float]:
    """Train ``model`` on ``batches`` (a re-iterable loader) for ``epochs``; returns throughput figures."""
    if epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    total = epochs * len(batches)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total), total)
    model.train()
    examples, start = 0, time.perf_counter()
    bar = tqdm(total=total, desc="train", disable=not progress, mininterval=10)
    for _ in range(epochs):
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            examples += len(batch["labels"])
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    return {"steps": total, "examples": examples, "seconds": seconds, "examples_per_s": examples / seconds}


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) over ``batches``: argmax of the logits, or the score for a regression head."""
    model.eval()
    predictions, labels = [], []
    for batch in batches:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
        labels.append(batch["labels"])
    return torch.cat(predictions).numpy(), torch.cat(labels).numpy()
