"""CoNLL-2003 English NER: the shared task's files as shipped (IOB1), converted to IOB2 for metrics and ``datasets``.

Offline it reads ``$QBOOK_DATA_DIR/conll2003/{train,dev,test}.txt``: one token a line (word, POS, chunk, NER),
blank lines between sentences, ``-DOCSTART-`` lines between documents. The original tags are **IOB1**: ``I-X``
opens an entity, ``B-X`` only marks an entity that directly follows another of the same type. seqeval and
``datasets``' ``conll2003`` use **IOB2** (every entity opens with ``B-X``); ``iob1_to_iob2`` converts, keeping the
entity spans. Online the splits come from ``eriktks/conll2003``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import datasets

from qlib.experiments.data import _use_local, data_dir

CONLL_SPLITS = ("train", "dev", "test")
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
"""NER tag ids in ``datasets``' ``conll2003`` order."""
SCHEMES = ("iob2", "iob1")


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """One sentence's IOB1 tags as IOB2: an ``I-X`` that does not continue an entity of type X becomes ``B-X``.

    Args:
        tags: (tokens,) tags in ``NER_LABELS``.
    Returns:
        (tokens,) tags naming the same entity spans, each span opened by ``B-``.
    """
    out, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def read_conll(path: str | os.PathLike, scheme: str = "iob2") -> list[dict]:
    """The sentences of a CoNLL-2003 file: id, document (index of its ``-DOCSTART-`` block), tokens, pos_tags,
    chunk_tags (strings) and ner_tags (ids in ``NER_LABELS``, in ``scheme``).

    Raises ``ValueError`` naming the file and line of a line without four columns or with an unknown NER tag."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; allowed: {SCHEMES}")
    path, ids = Path(path), {name: i for i, name in enumerate(NER_LABELS)}
    sentences: list[dict] = []
    document, current = -1, {"tokens": [], "pos_tags": [], "chunk_tags": [], "ner": []}

    def close() -> None:
        nonlocal current
        if current["tokens"]:
            ner = iob1_to_iob2(current.pop("ner")) if scheme == "iob2" else current.pop("ner")
            sentences.append({"id": len(sentences), "document": max(document, 0), **current,
                              "ner_tags": [ids[t] for t in ner]})
        current = {"tokens": [], "pos_tags": [], "chunk_tags": [], "ner": []}

    with path.open(encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                close()
                continue
            if len(fields) != 4:
                raise ValueError(f"{path}:{number}: {len(fields)} columns, expected 4 (word, POS, chunk, NER)")
            if fields[0] == "-DOCSTART-":
                close()
                document += 1
                continue
            if fields[3] not in ids:
                raise ValueError(f"{path}:{number}: NER tag {fields[3]!r} not allowed; allowed: {NER_LABELS}")
            for key, value in zip(("tokens", "pos_tags", "chunk_tags", "ner"), fields):
                current[key].append(value)
    close()
    if not sentences:
        raise ValueError(f"{path}: no sentences; expected a CoNLL-2003 file")
    return sentences


def load_conll2003(split: str, scheme: str = "iob2", source: str = "auto") -> datasets.Dataset:
    """One split (``train``, ``dev``, ``test``) of CoNLL-2003 English NER; ``ner_tags`` is a ``ClassLabel`` over
    ``NER_LABELS``. Offline from ``$QBOOK_DATA_DIR/conll2003/<split>.txt``; online ``eriktks/conll2003`` (IOB2)."""
    if split not in CONLL_SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {CONLL_SPLITS}")
    relative = f"conll2003/{split}.txt"
    if not _use_local(source, (relative,)):
        if scheme != "iob2":
            raise ValueError(f"scheme={scheme!r}: the hub copy is IOB2 only; read the original files for IOB1")
        return datasets.load_dataset("eriktks/conll2003", split="validation" if split == "dev" else split)
    features = datasets.Features({
        "id": datasets.Value("int64"), "document": datasets.Value("int64"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "pos_tags": datasets.Sequence(datasets.Value("string")),
        "chunk_tags": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(NER_LABELS))),
    })
    return datasets.Dataset.from_list(read_conll(data_dir(relative) / relative, scheme), features=features)
