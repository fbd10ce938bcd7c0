"""Token classification (CoNLL-2003 NER): word labels aligned to word pieces, and entity-level scores.

A word split into several word pieces is labelled once, on its first piece; its other pieces and the special tokens
take ``IGNORE`` (-100), which the loss skips, so a model is trained and scored per word, as the shared task scores
it. Scores are entity-level precision, recall and F1 over IOB2 tags (an entity counts only when its type and both
boundaries are right), computed by seqeval, the standard implementation of the CoNLL evaluation.
"""

from __future__ import annotations

from typing import Sequence

import datasets
import numpy as np
from seqeval.metrics import f1_score, precision_score, recall_score
from transformers import PreTrainedTokenizerBase

IGNORE = -100


def align_labels(word_labels: Sequence[int], word_ids: Sequence[int | None]) -> list[int]:
    """Per-token labels from per-word ones: the first piece of word w takes ``word_labels[w]``, every other piece and
    special token (``word_ids`` None) takes ``IGNORE``.

    Args:
        word_labels: (words,) label ids.
        word_ids: (tokens,) the word each token belongs to (a fast tokenizer's ``word_ids()``).
    Returns:
        (tokens,) label ids."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else word_labels[word])
        previous = word
    return labels


def tokenize_ner(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int = 128) -> datasets.Dataset:
    """Token ids and aligned ``labels`` of a CoNLL-2003 split (columns tokens, ner_tags; ``qlib.experiments.conll``)."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: aligning labels needs word ids")

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        encoded["labels"] = [align_labels(tags, encoded.word_ids(i)) for i, tags in enumerate(batch["ner_tags"])]
        return encoded

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def word_tags(token_predictions: Sequence[Sequence[int]], token_labels: Sequence[Sequence[int]],
              names: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(predicted, reference) tag names per sentence, read at the tokens whose label is not ``IGNORE``.

    Args:
        token_predictions, token_labels: per sentence, (tokens,) label ids (argmax of the logits; aligned labels).
        names: tag name of each id (``qlib.experiments.conll.NER_LABELS``)."""
    predicted, reference = [], []
    for prediction, labels in zip(token_predictions, token_labels):
        keep = np.asarray(labels) != IGNORE
        predicted.append([names[i] for i in np.asarray(prediction)[keep]])
        reference.append([names[i] for i in np.asarray(labels)[keep]])
    return predicted, reference


def entity_scores(predicted: Sequence[Sequence[str]], reference: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (fractions) of IOB2 tag sequences, as the CoNLL evaluation counts them."""
    if len(predicted) != len(reference) or any(len(p) != len(r) for p, r in zip(predicted, reference)):
        raise ValueError("need one predicted tag per reference tag, sentence by sentence")
    predicted, reference = [list(p) for p in predicted], [list(r) for r in reference]
    return {"f1": float(f1_score(reference, predicted)), "precision": float(precision_score(reference, predicted)),
            "recall": float(recall_score(reference, predicted))}
