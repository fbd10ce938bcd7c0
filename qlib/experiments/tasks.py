"""What a run trains on and how it is scored: one ``RunTask`` per head the papers use.

* ``GlueTask``: sequence classification, or regression for STS-B (GLUE; ``qlib.experiments.data``), scored by
  ``qlib.experiments.metrics.glue_metrics``;
* ``SquadTask``: extractive QA on SQuAD v1.1 (``qlib.experiments.qa``): windows of ``max_length`` tokens overlapping by
  ``doc_stride``, the best start-end span over a question's windows, EM/F1 by the official v1.1 normalisation;
* ``ConllTask``: token classification on CoNLL-2003 NER (``qlib.experiments.ner``): each word's label on its first
  word piece, entity-level F1 by seqeval.

Each task gives its head (``load``), its training batches (the collator and the loss's inputs: ``labels``, or
``start_positions``/``end_positions``), its dev data, its scores (``score``, main metric first) and the data files
it reads (``provenance``), so ``qlib.experiments.experiment.run`` trains and scores any of them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorForTokenClassification, PreTrainedModel, PreTrainedTokenizerBase

from qlib.experiments.conll import NER_LABELS, load_conll2003
from qlib.experiments.data import (
    TASKS,
    data_provenance,
    get_task,
    glue_batches,
    glue_provenance,
    load_squad,
    loader,
    squad_provenance,
)
from qlib.experiments.metrics import glue_metrics
from qlib.experiments.models import load_bert
from qlib.experiments.ner import entity_scores, tokenize_ner, word_tags
from qlib.experiments.qa import decode_answers, qa_eval_features, qa_train_features, squad_scores
from qlib.experiments.train import predict

EVAL_BATCH = 64


class Settings(Protocol):
    """What a task reads of a run's ``TrainingProtocol``."""

    batch_size: int
    max_length: int
    doc_stride: int
    max_train_examples: int | None
    max_eval_examples: int | None
    source: str
    group_by_length: bool


class RunTask(Protocol):
    """A task as a run sees it (see the module docstring)."""

    name: str
    metrics: tuple[str, ...]

    def load(self, model: str, attn_implementation: str | None = None
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]: ...

    def train_batches(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int,
                      shuffle: bool = True) -> DataLoader: ...

    def eval_data(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int) -> Any: ...

    def score(self, model: PreTrainedModel, data: Any) -> tuple[dict[str, float], int]: ...

    def provenance(self, source: str) -> dict[str, Any]: ...


def _subset(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of ``n`` rows (all of them when ``n`` is None or not smaller)."""
    return ds if n is None or n >= len(ds) else ds.shuffle(seed=seed).select(range(n))


@dataclass(frozen=True)
class GlueTask:
    """A GLUE task: one label per sentence (pair), or a score (STS-B, a regression head)."""

    name: str

    @property
    def metrics(self) -> tuple[str, ...]:
        return get_task(self.name).metrics

    def load(self, model: str, attn_implementation: str | None = None
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_bert(model, "sequence", get_task(self.name).num_labels, attn_implementation)

    def train_batches(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int,
                      shuffle: bool = True) -> DataLoader:
        return glue_batches(self.name, tokenizer, "train", settings.batch_size, settings.max_length,
                            settings.max_train_examples, seed, settings.source, shuffle=shuffle,
                            group_by_length=settings.group_by_length)

    def eval_data(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int) -> DataLoader:
        return glue_batches(self.name, tokenizer, "dev", EVAL_BATCH, settings.max_length, settings.max_eval_examples,
                            seed, settings.source)

    def score(self, model: PreTrainedModel, data: DataLoader) -> tuple[dict[str, float], int]:
        predictions, labels = predict(model, data)
        return glue_metrics(self.name, predictions, labels), len(labels)

    def provenance(self, source: str) -> dict[str, Any]:
        return glue_provenance(self.name, source=source)


@dataclass(frozen=True)
class _SquadDev:
    """SQuAD's dev data as ``SquadTask.score`` reads it: the questions, their windows, and the windows' batches."""

    examples: datasets.Dataset
    features: datasets.Dataset
    batches: DataLoader


@dataclass(frozen=True)
class SquadTask:
    """SQuAD v1.1 extractive QA: a start and an end logit per token; EM and F1 per question (fractions)."""

    name: str = "squad"
    metrics: tuple[str, ...] = ("f1", "exact_match")

    def load(self, model: str, attn_implementation: str | None = None
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_bert(model, "qa", attn_implementation=attn_implementation)

    def train_batches(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int,
                      shuffle: bool = True) -> DataLoader:
        questions = _subset(load_squad("train", settings.source), settings.max_train_examples, seed)
        windows = qa_train_features(questions, tokenizer, settings.max_length, settings.doc_stride)
        return loader(windows, tokenizer, settings.batch_size, shuffle=shuffle, seed=seed,
                      group_by_length=settings.group_by_length)

    def eval_data(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int) -> _SquadDev:
        questions = _subset(load_squad("dev", settings.source), settings.max_eval_examples, seed)
        windows = qa_eval_features(questions, tokenizer, settings.max_length, settings.doc_stride)
        inputs = windows.remove_columns(["example_id", "offset_mapping"])
        return _SquadDev(questions, windows, loader(inputs, tokenizer, EVAL_BATCH, shuffle=False))

    @torch.no_grad()
    def score(self, model: PreTrainedModel, data: _SquadDev) -> tuple[dict[str, float], int]:
        device = next(model.parameters()).device
        model.eval()
        starts, ends = [], []
        for batch in data.batches:
            out = model(**{k: v.to(device) for k, v in batch.items()})
            lengths = batch["attention_mask"].sum(dim=1).tolist()  # dynamic padding: each window's own tokens
            starts += [row[:n].numpy() for row, n in zip(out.start_logits.cpu(), lengths)]
            ends += [row[:n].numpy() for row, n in zip(out.end_logits.cpu(), lengths)]
        contexts = dict(zip(data.examples["id"], data.examples["context"]))
        answers = decode_answers(starts, ends, data.features, contexts)
        return squad_scores(answers, data.examples), len(data.examples)

    def provenance(self, source: str) -> dict[str, Any]:
        return squad_provenance(source)


@dataclass(frozen=True)
class ConllTask:
    """CoNLL-2003 English NER: one of ``NER_LABELS`` per word (IOB2), on its first word piece; entity-level scores."""

    name: str = "conll2003"
    metrics: tuple[str, ...] = ("f1", "precision", "recall")

    def load(self, model: str, attn_implementation: str | None = None
             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_bert(model, "token", len(NER_LABELS), attn_implementation)

    def _batches(self, split: str, tokenizer: PreTrainedTokenizerBase, settings: Settings, batch_size: int,
                 limit: int | None, seed: int, shuffle: bool) -> DataLoader:
        sentences = _subset(load_conll2003(split, source=settings.source), limit, seed)
        encoded = tokenize_ner(sentences, tokenizer, settings.max_length)
        return loader(encoded, tokenizer, batch_size, shuffle, seed, settings.group_by_length,
                      DataCollatorForTokenClassification(tokenizer))

    def train_batches(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int,
                      shuffle: bool = True) -> DataLoader:
        return self._batches("train", tokenizer, settings, settings.batch_size, settings.max_train_examples, seed,
                             shuffle)

    def eval_data(self, tokenizer: PreTrainedTokenizerBase, settings: Settings, seed: int) -> DataLoader:
        return self._batches("dev", tokenizer, settings, EVAL_BATCH, settings.max_eval_examples, seed, False)

    @torch.no_grad()
    def score(self, model: PreTrainedModel, data: DataLoader) -> tuple[dict[str, float], int]:
        device = next(model.parameters()).device
        model.eval()
        predictions, labels = [], []
        for batch in data:
            logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.cpu()
            predictions += list(logits.argmax(-1).numpy())
            labels += list(batch["labels"].numpy())  # padding is IGNORE, like the pieces after a word's first
        predicted, reference = word_tags(predictions, labels, NER_LABELS)
        return entity_scores(predicted, reference), len(labels)

    def provenance(self, source: str) -> dict[str, Any]:
        return data_provenance(["conll2003/train.txt", "conll2003/dev.txt"], source)


OTHER_TASKS: dict[str, RunTask] = {"squad": SquadTask(), "conll2003": ConllTask()}


def get_run_task(name: str) -> RunTask:
    """The task called ``name``: a GLUE task (``sst2``, ``SST-2``…), ``squad`` or ``conll2003``."""
    key = name.lower().replace("-", "")
    if key in OTHER_TASKS:
        return OTHER_TASKS[key]
    if key in TASKS:
        return GlueTask(TASKS[key].name)
    raise ValueError(f"unknown task {name!r}; allowed: {', '.join([*TASKS, *OTHER_TASKS])}")
