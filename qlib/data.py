"""GLUE and SQuAD v1.1 loaders: a local data directory offline, the Hugging Face hub online.

Offline, tasks are read from ``$QBOOK_DATA_DIR/glue/<task>/{train,dev}.tsv`` (tab-separated, one header row,
no quoting) in any of the column layouts GLUE and ``datasets`` use; online they come from ``nyu-mll/glue``.
Every split is returned as a ``datasets.Dataset`` with columns ``sentence1`` (``sentence2``) and ``label``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

DATA_DIR_ENV = "QBOOK_DATA_DIR"
SPLITS = ("train", "dev")


@dataclass(frozen=True)
class Task:
    """A GLUE task: its text columns, labels, metrics (the first is the one papers report) and hub names."""

    name: str
    pair: bool
    label_names: tuple[str, ...]  # empty for regression (STS-B)
    metrics: tuple[str, ...]
    dev_split: str = "validation"
    aliases: dict[str, str] = field(default_factory=dict)  # file column -> canonical column

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def text_columns(self) -> tuple[str, ...]:
        return ("sentence1", "sentence2") if self.pair else ("sentence1",)


_SINGLE = {"sentence": "sentence1"}
_NLI = ("entailment", "not_entailment")
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("cola", False, ("unacceptable", "acceptable"), ("mcc",), aliases=_SINGLE),
        Task("sst2", False, ("negative", "positive"), ("accuracy",), aliases=_SINGLE),
        Task("mrpc", True, ("not_equivalent", "equivalent"), ("f1", "accuracy"),
             aliases={"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"}),
        Task("stsb", True, (), ("pearson", "spearman"), aliases={"score": "label"}),
        Task("qqp", True, ("not_duplicate", "duplicate"), ("f1", "accuracy"),
             aliases={"question1": "sentence1", "question2": "sentence2", "is_duplicate": "label"}),
        Task("mnli", True, ("entailment", "neutral", "contradiction"), ("accuracy",),
             dev_split="validation_matched", aliases={"premise": "sentence1", "hypothesis": "sentence2",
                                                      "gold_label": "label"}),
        Task("qnli", True, _NLI, ("accuracy",), aliases={"question": "sentence1", "sentence": "sentence2"}),
        Task("rte", True, _NLI, ("accuracy",)),
        Task("wnli", True, ("not_entailment", "entailment"), ("accuracy",)),
    ]
}


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive; ``sst-2`` and ``sst2`` both work)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(TASKS)} (and 'squad' via load_squad)")
    return TASKS[key]


def data_dir(required_file: str | None = None) -> Path:
    """The offline data directory from ``$QBOOK_DATA_DIR``; raises ``FileNotFoundError`` saying what to set."""
    value = os.environ.get(DATA_DIR_ENV)
    path = Path(value) if value else None
    if path is None or not path.is_dir() or (required_file and not (path / required_file).is_file()):
        where = f"{DATA_DIR_ENV}={value!r}" if value else f"{DATA_DIR_ENV} is not set"
        wanted = f" holding {required_file}" if required_file else ""
        raise FileNotFoundError(
            f"offline data not found ({where}): set {DATA_DIR_ENV} to a folder{wanted}, laid out like "
            "glue/<task>/{train,dev}.tsv, or use source='hub' on a machine that can reach the Hugging Face hub"
        )
    return path


def _local_file(relative: str) -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value) / relative if value and (Path(value) / relative).is_file() else None


def _offline() -> bool:
    return any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _read_tsv(path: Path, task: Task) -> datasets.Dataset:
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), [])
    renamed = {column: task.aliases.get(column, column) for column in header}
    needed = set(task.text_columns) | {"label"}
    if not needed <= set(renamed.values()):
        raise ValueError(
            f"{path}: columns {header} do not give {sorted(needed)} for task {task.name!r} "
            f"(accepted names: {sorted(needed | set(task.aliases))})"
        )
    features = datasets.Features({c: datasets.Value("string") for c in header})
    ds = datasets.load_dataset("csv", data_files=str(path), delimiter="\t", quoting=csv.QUOTE_NONE,
                               features=features, split="train")
    ds = ds.rename_columns({k: v for k, v in renamed.items() if k != v})
    return ds.remove_columns([c for c in ds.column_names if c not in needed])


def _labels_to_ids(ds: datasets.Dataset, task: Task, origin: str) -> datasets.Dataset:
    """Map label strings ("1", "entailment", "2.5") to ints (floats for STS-B), rejecting anything else."""
    if ds.features["label"].dtype not in ("string", "large_string"):
        values = set(ds.unique("label"))
        allowed = set(range(task.num_labels)) if task.label_names else None
        if allowed is not None and not values <= allowed:
            raise ValueError(f"{origin}: labels {sorted(values - allowed)} not in {sorted(allowed)} for {task.name!r}")
        return ds
    names = {name: i for i, name in enumerate(task.label_names)} | {str(i): i for i in range(len(task.label_names))}

    def convert(label: str) -> int | float:
        if not task.label_names:
            try:
                return float(label)
            except ValueError:
                raise ValueError(f"{origin}: label {label!r} is not a number (task {task.name!r} is a regression)")
        if label not in names:
            raise ValueError(f"{origin}: label {label!r} not allowed for {task.name!r}; allowed: {sorted(names)}")
        return names[label]

    dtype = "float32" if not task.label_names else "int64"
    return ds.map(lambda b: {"label": [convert(x) for x in b["label"]]}, batched=True,
                  features=datasets.Features({**ds.features, "label": datasets.Value(dtype)}))


def load_glue(task: str, split: str, source: str = "auto", max_examples: int | None = None,
              seed: int = 0) -> datasets.Dataset:
    """One split (``train`` or ``dev``) of a GLUE task, optionally a seeded random subset of ``max_examples``.

    ``source``: ``"local"`` ($QBOOK_DATA_DIR), ``"hub"`` (nyu-mll/glue) or ``"auto"`` (local when present).
    """
    info = get_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {SPLITS}")
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"unknown source {source!r}; allowed: 'auto', 'local', 'hub'")
    relative = f"glue/{info.name}/{split}.tsv"
    use_local = source == "local" or (source == "auto" and (_offline() or _local_file(relative) is not None))
    if use_local:
        path = data_dir(relative) / relative
        ds = _labels_to_ids(_read_tsv(path, info), info, str(path))
    else:
        hub_split = "train" if split == "train" else info.dev_split
        ds = datasets.load_dataset("nyu-mll/glue", info.name, split=hub_split)
        ds = ds.rename_columns({k: v for k, v in info.aliases.items() if k in ds.column_names})
        ds = ds.remove_columns([c for c in ds.column_names if c not in (*info.text_columns, "label")])
    if max_examples is not None and max_examples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_examples))
    return ds


def load_squad(split: str, source: str = "auto") -> datasets.Dataset:
    """SQuAD v1.1 (``train`` or ``dev``) with columns id, context, question, answers{text, answer_start}.

    Offline it reads the official JSON ``$QBOOK_DATA_DIR/squad/{train,dev}-v1.1.json``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {SPLITS}")
    relative = f"squad/{split}-v1.1.json"
    if source == "local" or (source == "auto" and (_offline() or _local_file(relative) is not None)):
        articles = json.loads((data_dir(relative) / relative).read_text(encoding="utf-8"))["data"]
        rows = [
            {"id": qa["id"], "context": par["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in articles for par in article["paragraphs"] for qa in par["qas"]
        ]
        return datasets.Dataset.from_list(rows)
    return datasets.load_dataset("rajpurkar/squad", split="train" if split == "train" else "validation")


def tokenize(ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, task: str,
             max_length: int = 128) -> datasets.Dataset:
    """Token ids (unpadded; batches are padded dynamically) and ``labels`` for a GLUE split."""
    columns = get_task(task).text_columns

    def encode(batch: dict) -> dict:
        texts = [batch[c] for c in columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    encoded = ds.map(encode, batched=True, remove_columns=list(columns))
    return encoded.rename_column("label", "labels")


def loader(encoded: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, batch_size: int, shuffle: bool,
           seed: int = 0) -> DataLoader:
    """Batches padded to their own longest sequence (dynamic padding)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(encoded.with_format("torch"), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def glue_batches(task: str, tokenizer: PreTrainedTokenizerBase, split: str, batch_size: int, max_length: int = 128,
                 max_examples: int | None = None, seed: int = 0, source: str = "auto",
                 shuffle: bool = False) -> DataLoader:
    """Load, tokenize and batch one GLUE split in one call (the pipeline every experiment starts with)."""
    encoded = tokenize(load_glue(task, split, source, max_examples, seed), tokenizer, task, max_length)
    return loader(encoded, tokenizer, batch_size, shuffle=shuffle, seed=seed)
