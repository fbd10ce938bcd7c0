"""GLUE loaders: layouts, label mapping, subsets, tokenization with dynamic padding, and their errors."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from conftest import write_tsv
from qlib.data import TASKS, get_task, load_glue, loader, tokenize


def test_single_sentence_layout(glue_dir):
    ds = load_glue("sst2", "train")
    assert ds.column_names == ["sentence1", "label"] or set(ds.column_names) == {"sentence1", "label"}
    assert len(ds) == 16 and set(ds["label"]) == {0, 1}
    assert 'not "good"' in ds["sentence1"]  # a bare quote survives (no CSV quoting)


def test_pair_layout_with_label_names(glue_dir):
    ds = load_glue("rte", "dev")
    assert set(ds.column_names) == {"sentence1", "sentence2", "label"}
    assert ds["label"][:2] == [0, 1]  # entailment -> 0, not_entailment -> 1 (GLUE's ids)


def test_seeded_subset_is_reproducible(glue_dir):
    a, b = load_glue("sst2", "train", max_examples=5, seed=3), load_glue("sst2", "train", max_examples=5, seed=3)
    assert len(a) == 5 and a["sentence1"] == b["sentence1"]


def test_tokenize_and_dynamic_padding(glue_dir, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoded = tokenize(load_glue("rte", "train"), tokenizer, "rte", max_length=32)
    batch = next(iter(loader(encoded, tokenizer, batch_size=4, shuffle=False)))
    assert set(batch) >= {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # padded to the longest only
    assert batch["token_type_ids"].max() == 1  # a sentence pair


def test_all_glue_tasks_are_known():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_task("SST-2").name == "sst2" and get_task("stsb").num_labels == 1


def test_unknown_task_and_split():
    with pytest.raises(ValueError, match="unknown task 'imdb'; allowed: cola, sst2"):
        load_glue("imdb", "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_glue("sst2", "test")


def test_missing_data_dir_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("QBOOK_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="QBOOK_DATA_DIR is not set.*glue/sst2/train.tsv"):
        load_glue("sst2", "train")
    monkeypatch.setenv("QBOOK_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="set QBOOK_DATA_DIR to a folder holding glue/cola/dev.tsv"):
        load_glue("cola", "dev", source="local")


def test_wrong_columns(glue_dir):
    write_tsv(glue_dir / "glue" / "sst2" / "train.tsv", ["text", "target"], [["a", 1]])
    with pytest.raises(ValueError, match=r"columns \['text', 'target'\] do not give \['label', 'sentence1'\]"):
        load_glue("sst2", "train")


def test_wrong_labels(glue_dir):
    write_tsv(glue_dir / "glue" / "sst2" / "dev.tsv", ["sentence", "label"], [["a", 1], ["b", 7]])
    with pytest.raises(ValueError, match="label '7' not allowed for 'sst2'"):
        load_glue("sst2", "dev")
    write_tsv(glue_dir / "glue" / "rte" / "dev.tsv", ["sentence1", "sentence2", "label"], [["a", "b", "maybe"]])
    with pytest.raises(ValueError, match="label 'maybe' not allowed for 'rte'"):
        load_glue("rte", "dev")


def test_squad_from_the_official_json_layout(glue_dir):
    import json

    from qlib.data import load_squad

    article = {"title": "t", "paragraphs": [{"context": "The cat sat.", "qas": [
        {"id": "q1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]}]}]}
    (glue_dir / "squad").mkdir()
    (glue_dir / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": [article], "version": "1.1"}))
    ds = load_squad("dev")
    assert ds[0]["answers"] == {"text": ["The cat"], "answer_start": [0]} and ds[0]["question"] == "Who sat?"
    with pytest.raises(FileNotFoundError, match="squad/train-v1.1.json"):
        load_squad("train")
