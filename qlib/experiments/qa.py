"""Extractive question answering (SQuAD v1.1): a long context cut into overlapping windows, answer spans as token
positions, and the best span of each question decoded back to text.

A context longer than ``max_length`` is split into windows that overlap by ``stride`` tokens (the question repeated in
each), as BERT's SQuAD recipe does. Training marks the answer's first and last token in each window that holds the
whole answer, and points a window without it at ``[CLS]`` (position 0). Evaluation keeps each window's character
offsets and scores every span ``(i, j)``, ``i ≤ j < i + max_answer_length``, by ``start_logit[i] + end_logit[j]``
over all of a question's windows; the best span's characters are the prediction (scored by
``qlib.experiments.metrics.squad_metrics``). Needs a fast tokenizer (offset mappings).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from qlib.experiments.metrics import squad_metrics


def _windows(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, stride: int) -> dict:
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: SQuAD windows need offset mappings")
    if not 0 <= stride < max_length:
        raise ValueError(f"stride must be in [0, max_length={max_length}), got {stride}")
    return tokenizer(list(ds["question"]), list(ds["context"]), truncation="only_second", max_length=max_length,
                     stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)


def qa_train_features(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 256,
                      stride: int = 128) -> datasets.Dataset:
    """Training windows of SQuAD questions (columns id, question, context, answers): token ids and the
    ``start_positions`` / ``end_positions`` of each question's first answer, (0, 0) where a window lacks it.

    Shapes: one row per window; ids (window tokens,), positions scalar."""
    encoded = _windows(ds, tokenizer, max_length, stride)
    starts, ends = [], []
    for window, offsets in enumerate(encoded["offset_mapping"]):
        answers = ds[encoded["overflow_to_sample_mapping"][window]]["answers"]
        first = answers["answer_start"][0]
        last = first + len(answers["text"][0])
        context = [i for i, s in enumerate(encoded.sequence_ids(window)) if s == 1]
        inside = offsets[context[0]][0] <= first and offsets[context[-1]][1] >= last
        start = next((i for i in context if offsets[i][1] > first), 0) if inside else 0
        end = next((i for i in reversed(context) if offsets[i][0] < last), 0) if inside else 0
        starts.append(start)
        ends.append(end)
    columns = {k: encoded[k] for k in encoded if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    return datasets.Dataset.from_dict(columns | {"start_positions": starts, "end_positions": ends})


def qa_eval_features(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 256,
                     stride: int = 128) -> datasets.Dataset:
    """Evaluation windows: token ids, the ``example_id`` each window comes from, and its ``offset_mapping`` with
    [-1, -1] for every token outside the context (question, special tokens), which no answer may use."""
    encoded = _windows(ds, tokenizer, max_length, stride)
    offsets = [[list(o) if s == 1 else [-1, -1] for o, s in zip(window, encoded.sequence_ids(i))]
               for i, window in enumerate(encoded["offset_mapping"])]
    ids = [ds[i]["id"] for i in encoded["overflow_to_sample_mapping"]]
    columns = {k: encoded[k] for k in encoded if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    return datasets.Dataset.from_dict(columns | {"example_id": ids, "offset_mapping": offsets})


def decode_answers(start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
                   features: datasets.Dataset, contexts: Mapping[str, str], max_answer_length: int = 30,
                   n_best: int = 20) -> dict[str, str]:
    """The best answer text of each question: the span maximizing ``start_logit[i] + end_logit[j]`` over its
    windows, among the ``n_best`` top starts and ends of each window, inside the context, ``i ≤ j`` and at most
    ``max_answer_length`` tokens long ("" when no window has such a span).

    Args:
        start_logits, end_logits: per window, (window tokens,) scores.
        features: ``qa_eval_features`` of the same questions, in the same order.
        contexts: question id -> its context.
    Returns:
        question id -> predicted answer text."""
    if not len(start_logits) == len(end_logits) == len(features):
        raise ValueError(f"need one start and end logit vector per window: got {len(start_logits)}, "
                         f"{len(end_logits)} for {len(features)} windows")
    best: dict[str, tuple[float, str]] = {}
    for starts, ends, window in zip(start_logits, end_logits, features):
        offsets, question = window["offset_mapping"], window["example_id"]
        best.setdefault(question, (-np.inf, ""))
        for i in np.argsort(starts)[::-1][:n_best]:
            for j in np.argsort(ends)[::-1][:n_best]:
                if offsets[i][0] < 0 or offsets[j][0] < 0 or not i <= j < i + max_answer_length:
                    continue
                score = float(starts[i] + ends[j])
                if score > best[question][0]:
                    best[question] = (score, contexts[question][offsets[i][0]:offsets[j][1]])
    return {question: text for question, (_, text) in best.items()}


def reference_answers(ds: datasets.Dataset) -> dict[str, list[str]]:
    """question id -> its reference answer texts (SQuAD's dev set has up to three per question)."""
    return {row["id"]: list(row["answers"]["text"]) for row in ds}


def squad_scores(predictions: Mapping[str, str], ds: datasets.Dataset) -> dict[str, Any]:
    """Exact match and F1 (fractions) of ``predictions`` against ``ds``'s answers, by the official v1.1 rules."""
    references = reference_answers(ds)
    missing = sorted(set(references) - set(predictions))
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[:3]}")
    return squad_metrics([predictions[q] for q in references], list(references.values()))
