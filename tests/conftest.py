"""Shared fixtures: offline settings, a tiny random BERT with its own tokenizer, tiny GLUE files."""

from __future__ import annotations

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
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config()).save_pretrained(path)
    return path


def write_tsv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def glue_dir(tmp_path, monkeypatch) -> Path:
    """A data directory with tiny SST-2 (sentence, label), RTE (datasets layout, "string" labels) and CoLA files."""
    sentences = [["it was a great film", 1], ["a dull plot", 0], ["the movie was fun", 1], ['not "good"', 0]] * 4
    for split in ("train", "dev"):
        write_tsv(tmp_path / "glue" / "sst2" / f"{split}.tsv", ["sentence", "label"], sentences)
        write_tsv(tmp_path / "glue" / "cola" / f"{split}.tsv", ["sentence", "label"], sentences)
        write_tsv(tmp_path / "glue" / "rte" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
                  [[i, "it was a film", "it was a movie", ["entailment", "not_entailment"][i % 2]]
                   for i in range(12)])
    monkeypatch.setenv("QBOOK_DATA_DIR", str(tmp_path))
    return tmp_path
