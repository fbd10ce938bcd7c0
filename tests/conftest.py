"""Shared fixtures: offline settings, a tiny random BERT with its own tokenizer, tiny GLUE, SQuAD and CoNLL-2003 files
in their official layouts."""

from __future__ import annotations

import gzip
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # noqa: E402

WORDS = ["good", "bad", "great", "awful", "movie", "film", "plot", "fun", "dull", "it", "was", "a", "the", "not"]


def tiny_config(**overrides) -> BertConfig:
    settings = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    return BertConfig(**(settings | overrides))


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config()).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny random BERT classifier and a WordPiece tokenizer over a 64-token vocabulary."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab += [f"[unused{i}]" for i in range(64 - len(vocab))]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.tokenize("The movie") == ["the", "movie"]  # the vocabulary is the one written here
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config()).save_pretrained(path)
    return path


class Killed(Exception):
    """Stands for the process being killed."""


def killed_after(steps: int):
    """A loss that raises once ``steps`` steps have been taken."""
    calls = {"n": 0}

    def loss(net, batch):
        if calls["n"] == steps:
            raise Killed
        calls["n"] += 1
        return net(**batch).loss
    return loss


def write_tsv(path: Path, header: list[str] | None, rows: list[list[object]], bom: bool = False) -> Path:
    """A tab-separated file as GLUE writes them: no quoting, ``\\n`` line ends, optional header and UTF-8 BOM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header, *rows] if header is not None else rows
    text = "\n".join("\t".join(map(str, r)) for r in lines) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


SENTENCES = [["it was a great film ", 1], ["a dull plot ", 0], ["the movie was fun ", 1], ['not "good" ', 0]] * 4


def write_official_glue(root: Path) -> Path:
    """Tiny train/dev files of SST-2, CoLA, RTE, MRPC and STS-B in the exact layouts of GLUE's download:
    SST-2 with its trailing spaces, CoLA headerless (source, label, annotation, sentence), RTE with text labels,
    MRPC behind a UTF-8 BOM with its label first, STS-B with ten columns and a float score."""
    glue = root / "glue"
    for split in ("train", "dev"):
        write_tsv(glue / "sst2" / f"{split}.tsv", ["sentence", "label"], SENTENCES)
        write_tsv(glue / "cola" / f"{split}.tsv", None,
                  [["gj04", label, "" if label else "*", text.strip()] for text, label in SENTENCES])
        write_tsv(glue / "rte" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
                  [[i, "it was a film", "it was a movie", ["entailment", "not_entailment"][i % 2]]
                   for i in range(12)])
        write_tsv(glue / "mrpc" / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  [[i % 2, 1000 + i, 2000 + i, "the film was good", "it was a good movie"] for i in range(12)],
                  bom=True)
        write_tsv(glue / "stsb" / f"{split}.tsv",
                  ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                   "sentence2", "score"],
                  [[i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", SENTENCES[i][0],
                    SENTENCES[i + 1][0], f"{i % 6:.3f}"] for i in range(12)])
    return root


@pytest.fixture
def glue_dir(tmp_path, monkeypatch) -> Path:
    """A data directory (``QBOOK_DATA_DIR``) of tiny GLUE files in their official layouts."""
    monkeypatch.setenv("QBOOK_DATA_DIR", str(write_official_glue(tmp_path)))
    return tmp_path


RESULT_TEMPLATE = Path(__file__).parent / "data" / "result_template.json"
"""The template of ``write_run``'s files: a copy of a real result record (``results/qbert/sst2/fp32-seed0.json`` as
the protocol wrote it at 3fba983, before the protocol grouped batches by length), so its provenance and protocol fields
are real and the table tests do not depend on what ``results/`` holds today."""


def write_run(folder: Path, task: str, method: str, seed: int, accuracy: float, **params) -> Path:
    """A result file as ``run`` writes it, at ``folder/task/<method>-seed<seed>.json``: ``RESULT_TEMPLATE`` with its
    task, method (the result's label), seed, accuracy and any ``params`` set (``trained``: the params' method)."""
    import copy
    import json

    record = copy.deepcopy(json.loads(RESULT_TEMPLATE.read_text()))
    record.update(task=task, method=method, seed=seed, main_metric="accuracy", metrics={"accuracy": accuracy})
    record.pop("spec", None)  # the spec is rebuilt from the params set here (RunSpec.from_record)
    record["provenance"]["data"] = None  # as on the earlier copy, whatever the template read; a test sets its own
    record["params"].update({"method" if key == "trained" else key: value for key, value in params.items()})
    path = folder / task / f"{method}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


QUESTIONS = [  # the tiny tokenizer's words only, so no answer hides behind [UNK]
    ("q1", "it was good it was the film", "what was good", [("the film", 19)]),
    ("q2", "it was not good it was a dull plot", "what was dull", [("a dull plot", 23), ("dull plot", 25)]),
    ("q3", "it was not good it was a fun movie", "what was fun", [("movie", 29)]),
]
CONLL = """-DOCSTART- -X- -X- O

it PRP B-NP O
was VBD B-VP O
the DT B-NP I-MISC
movie NN I-NP I-MISC

good JJ B-NP I-ORG
plot NN I-NP O
"""


def squad_document(questions) -> dict:
    """SQuAD v1.1 JSON, one paragraph per question, as the official files lay it out."""
    return {"version": "1.1", "data": [{"title": "Films", "paragraphs": [
        {"context": context, "qas": [{"id": qid, "question": question,
                                      "answers": [{"text": t, "answer_start": s} for t, s in answers]}]}
        for qid, context, question, answers in questions]}]}


@pytest.fixture
def task_data(glue_dir):
    """SQuAD (gzip, official layout) and CoNLL-2003 (IOB1, with -DOCSTART-) files beside the tiny GLUE ones."""
    for name in ("dev.json.gz", "train.reconstructed.json.gz"):
        path = glue_dir / "squad" / "v1.1" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(json.dumps(squad_document(QUESTIONS * (1 if "dev" in name else 4))).encode(),
                                       mtime=0))
    for split in ("train", "dev", "test"):
        path = glue_dir / "conll2003" / f"{split}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(CONLL if split != "train" else "\n".join([CONLL] + [CONLL.split("\n", 2)[2]] * 3))
    return glue_dir
