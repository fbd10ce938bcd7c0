"""Task metrics as the papers report them, computed offline with scikit-learn and SciPy.

``evaluate.load("glue", ...)`` fetches its metric scripts from the hub and fails offline; the arithmetic below
is the same (GLUE's own metric script calls these very functions). SQuAD's EM/F1 follow the official v1.1
evaluation script (answer normalization, max over the reference answers); no offline library ships them.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from qlib.experiments.data import get_task

METRICS = {
    "accuracy": lambda p, y: float(accuracy_score(y, p)),
    "f1": lambda p, y: float(f1_score(y, p)),
    "mcc": lambda p, y: float(matthews_corrcoef(y, p)),
    "pearson": lambda p, y: float(pearsonr(p, y)[0]),
    "spearman": lambda p, y: float(spearmanr(p, y)[0]),
}


def glue_metrics(task: str, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The task's metrics (fractions, not percent), e.g. ``{"mcc": 0.52}`` for CoLA; first key = main metric."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(f"need equally many predictions and labels (> 0), got {predictions.shape} and {labels.shape}")
    return {name: METRICS[name](predictions, labels) for name in get_task(task).metrics}


def constant_answer(task: str, labels: Sequence[int]) -> dict[str, float]:
    """The task's metrics for the best constant answer, every example given the one label that scores highest on
    the main metric: the floor a model must clear to have learned anything (accuracy: the majority class's share;
    MCC: 0). ``labels``: (examples,) class ids."""
    info = get_task(task)
    if not info.label_names:
        raise ValueError(f"task {info.name!r} is a regression: a constant answer has no class to repeat")
    labels = np.asarray(labels)
    answers = [glue_metrics(task, np.full_like(labels, label), labels) for label in range(info.num_labels)]
    return max(answers, key=lambda scores: scores[info.metrics[0]])


def _normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD v1.1)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, reference: str) -> float:
    pred, ref = _normalize_answer(prediction).split(), _normalize_answer(reference).split()
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 (fractions), each the max over a question's reference answers, averaged."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and reference lists (> 0), got {len(predictions)} "
                         f"and {len(references)}")
    em = [max(_normalize_answer(p) == _normalize_answer(r) for r in refs) for p, refs in zip(predictions, references)]
    f1 = [max(_token_f1(p, r) for r in refs) for p, refs in zip(predictions, references)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1))}
