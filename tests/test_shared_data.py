"""The official data folder (CI has it in ../shared/data via QBOOK_DATA_DIR): every file loads with the row counts,
label balances and SHA-256 that its SOURCES.md documents. Without the folder these tests skip, saying why."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from qlib.experiments.conll import load_conll2003
from qlib.experiments.data import OFFICIAL_SHA256, file_sha256, load_glue, load_squad

DATA = os.environ.get("QBOOK_DATA_DIR")
pytestmark = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "SOURCES.md").is_file(),
    reason="the official data folder is absent: set QBOOK_DATA_DIR to a folder like ../shared/data "
           "(glue/, squad/, conll2003/ and SOURCES.md) to run these checks",
)

# (rows, label counts or (min, max, mean) of STS-B's scores) as SOURCES.md gives them; the SHA-256 it pins are
# qlib.experiments.data.OFFICIAL_SHA256. Label ids are the loaders': RTE/QNLI entailment = 0, not_entailment = 1.
GLUE = {
    ("sst2", "train"): (67349, {0: 29780, 1: 37569}),
    ("sst2", "dev"): (872, {0: 428, 1: 444}),
    ("mrpc", "train"): (3668, {1: 2474, 0: 1194}),
    ("mrpc", "dev"): (408, {1: 279, 0: 129}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),
    ("rte", "dev"): (277, {0: 146, 1: 131}),
    ("cola", "train"): (8551, {1: 6023, 0: 2528}),
    ("cola", "dev"): (1043, {1: 721, 0: 322}),
    ("stsb", "train"): (5749, (0.0, 5.0, 2.70)),
    ("stsb", "dev"): (1500, (0.0, 5.0, 2.36)),
    ("qnli", "dev"): (5463, {0: 2702, 1: 2761}),
    ("wnli", "train"): (635, {1: 312, 0: 323}),
    ("wnli", "dev"): (71, {0: 40, 1: 31}),
}


@pytest.mark.parametrize("task,split", list(GLUE))
def test_glue_file_loads_with_its_documented_counts(task, split):
    rows, labels = GLUE[(task, split)]
    relative = f"glue/{task}/{split}.tsv"
    assert file_sha256(Path(DATA) / relative) == OFFICIAL_SHA256[relative]
    ds = load_glue(task, split, source="local")
    assert len(ds) == rows
    if isinstance(labels, dict):
        assert dict(Counter(ds["label"])) == labels
    else:
        scores = ds["label"]
        assert (min(scores), max(scores), round(sum(scores) / len(scores), 2)) == labels
    assert all(isinstance(s, str) and s for s in ds["sentence1"])


def test_qnli_train_is_absent_and_said_so():
    with pytest.raises(FileNotFoundError, match="glue/qnli/train.tsv"):
        load_glue("qnli", "train", source="local")


# (questions, articles, paragraphs, answers, file)
SQUAD = {
    "dev": (10570, 48, 2067, 34726, "squad/v1.1/dev.json.gz"),
    "train": (87599, 442, 18896, 87599, "squad/v1.1/train.reconstructed.json.gz"),
}


@pytest.mark.parametrize("split", list(SQUAD))
def test_squad_loads_with_its_documented_counts(split):
    questions, articles, paragraphs, answers, relative = SQUAD[split]
    assert file_sha256(Path(DATA) / relative) == OFFICIAL_SHA256[relative]
    ds = load_squad(split, source="local")  # also checks every answer_start points at its answer text
    assert len(ds) == questions and len(set(ds["title"])) == articles
    assert sum(len(a["text"]) for a in ds["answers"]) == answers
    document = json.loads(gzip.decompress((Path(DATA) / relative).read_bytes()))
    assert sum(len(a["paragraphs"]) for a in document["data"]) == paragraphs
    assert all(i.startswith("recon-train-") for i in ds["id"]) == (split == "train")


# (sentences, documents, tokens)
CONLL = {
    "train": (14041, 946, 203621),
    "dev": (3250, 216, 51362),
    "test": (3453, 231, 46435),
}


@pytest.mark.parametrize("split", list(CONLL))
def test_conll2003_loads_with_its_documented_counts(split):
    sentences, documents, tokens = CONLL[split]
    assert file_sha256(Path(DATA) / f"conll2003/{split}.txt") == OFFICIAL_SHA256[f"conll2003/{split}.txt"]
    ds = load_conll2003(split, source="local")
    assert len(ds) == sentences and len(set(ds["document"])) == documents
    assert sum(map(len, ds["tokens"])) == tokens
    names = ds.features["ner_tags"].feature.names
    for tags in ds["ner_tags"]:  # IOB2: every entity opens with B-
        assert all(not names[t].startswith("I-") or names[p][2:] == names[t][2:] for p, t in zip([0, *tags], tags))


def test_every_official_file_is_pinned_and_present():
    assert {p.relative_to(DATA).as_posix() for p in Path(DATA).rglob("*") if p.is_file()} - {
        "SOURCES.md", "glue/stsb/LICENSE.txt"} == set(OFFICIAL_SHA256)
