"""GLUE, SQuAD and CoNLL-2003 loaders on tiny files in the exact official formats; layouts, labels, and errors."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import write_tsv
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoTokenizer

from qlib.experiments.conll import NER_LABELS, iob1_to_iob2, load_conll2003
from qlib.experiments.data import TASKS, file_sha256, get_task, glue_provenance, load_glue, load_squad, loader, tokenize


def test_sst2_as_glue_ships_it(glue_dir):
    ds = load_glue("sst2", "train")
    assert set(ds.column_names) == {"sentence1", "label"}
    assert len(ds) == 16 and set(ds["label"]) == {0, 1}
    assert 'not "good" ' in ds["sentence1"]  # a bare quote and the trailing space survive (quoting off)


def test_cola_headerless_first_row_is_data(glue_dir):
    ds = load_glue("cola", "dev")
    assert len(ds) == 16  # not 15: the first line is a sentence, not a header
    assert ds[0] == {"sentence1": "it was a great film", "label": 1}


def test_mrpc_bom_and_label_first(glue_dir):
    ds = load_glue("mrpc", "dev")
    assert len(ds) == 12 and ds["label"][:2] == [0, 1]
    assert ds[0]["sentence1"] == "the film was good" and ds[0]["sentence2"] == "it was a good movie"


def test_stsb_ten_columns_float_score(glue_dir):
    ds = load_glue("stsb", "train")
    assert ds.features["label"].dtype == "float32"
    assert ds["label"][:3] == [0.0, 1.0, 2.0] and ds[0]["sentence2"] == "a dull plot "


def test_rte_text_labels_map_to_glue_ids(glue_dir):
    ds = load_glue("rte", "dev")
    assert set(ds.column_names) == {"sentence1", "sentence2", "label"}
    assert ds["label"][:2] == [0, 1]  # entailment -> 0, not_entailment -> 1 (the hub's ids)


@pytest.mark.parametrize("task,header,row,expected", [
    ("cola", ["sentence", "label", "idx"], ["a dull plot", 0, 7], {"sentence1": "a dull plot", "label": 0}),
    ("mrpc", ["sentence1", "sentence2", "label", "idx"], ["a", "b", 1, 0], {"sentence1": "a", "sentence2": "b",
                                                                           "label": 1}),
    ("qnli", ["question", "sentence", "label", "idx"], ["q", "s", 1, 0], {"sentence1": "q", "sentence2": "s",
                                                                         "label": 1}),
    ("mnli", ["premise", "hypothesis", "label", "idx"], ["p", "h", 2, 0], {"sentence1": "p", "sentence2": "h",
                                                                          "label": 2}),
])
def test_a_datasets_export_layout_is_accepted(tmp_path, monkeypatch, task, header, row, expected):
    monkeypatch.setenv("QBOOK_DATA_DIR", str(tmp_path))
    write_tsv(tmp_path / get_task(task).file("dev"), header, [row])
    assert load_glue(task, "dev")[0] == expected


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


def test_length_grouped_batches_hold_every_example_once_with_less_padding_and_repeat_by_seed(tiny_model_dir):
    import datasets
    import torch

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = torch.randint(2, 60, (400,), generator=torch.Generator().manual_seed(0)).tolist()
    encoded = datasets.Dataset.from_dict({"input_ids": [[5 + i % 50] * n for i, n in enumerate(lengths)],
                                          "labels": list(range(400))})

    def epoch(batches):
        return [(batch["labels"].tolist(), batch["input_ids"].numel()) for batch in batches]

    grouped = loader(encoded, tokenizer, 8, shuffle=True, seed=1, group_by_length=True)
    first, second = epoch(grouped), epoch(grouped)
    for one in (first, second):
        assert sorted(i for labels, _ in one for i in labels) == list(range(400))  # each example once an epoch
    assert first != second  # a new order each epoch
    assert first == epoch(loader(encoded, tokenizer, 8, shuffle=True, seed=1, group_by_length=True))  # by the seed
    assert first != epoch(loader(encoded, tokenizer, 8, shuffle=True, seed=2, group_by_length=True))
    shuffled = epoch(loader(encoded, tokenizer, 8, shuffle=True, seed=1))
    assert sum(n for _, n in first) < 0.75 * sum(n for _, n in shuffled)  # padded tokens: far fewer than random
    ordered = loader(encoded, tokenizer, 8, shuffle=False, group_by_length=True)
    assert [i for labels, _ in epoch(ordered) for i in labels] == list(range(400))  # grouping needs shuffle


def test_all_glue_tasks_are_known():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_task("SST-2").name == "sst2" and get_task("stsb").num_labels == 1
    assert get_task("mnli").file("dev") == "glue/mnli/dev_matched.tsv"


def test_unknown_task_split_and_source():
    with pytest.raises(ValueError, match="unknown task 'imdb'; allowed: cola, sst2"):
        load_glue("imdb", "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_glue("sst2", "test")
    with pytest.raises(ValueError, match="unknown source 'web'; allowed"):
        load_glue("sst2", "dev", source="web")


def test_missing_data_dir_or_split_says_what_to_set(monkeypatch, tmp_path):
    monkeypatch.delenv("QBOOK_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="QBOOK_DATA_DIR is not set.*glue/sst2/train.tsv"):
        load_glue("sst2", "train")
    monkeypatch.setenv("QBOOK_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="set QBOOK_DATA_DIR to a folder holding glue/cola/dev.tsv"):
        load_glue("cola", "dev", source="local")


def test_wrong_columns_name_the_file_and_line(glue_dir):
    path = write_tsv(glue_dir / "glue" / "sst2" / "train.tsv", ["text", "target"], [["a", 1]])
    with pytest.raises(ValueError, match=rf"{path}:1: columns \['text', 'target'\] do not give"):
        load_glue("sst2", "train")
    path = write_tsv(glue_dir / "glue" / "rte" / "dev.tsv", ["index", "sentence1", "sentence2", "label"],
                     [[0, "a", "b", "entailment"], [1, "a", "b\tc", "entailment"]])
    with pytest.raises(ValueError, match=rf"{path}:3: 5 tab-separated columns, expected 4"):
        load_glue("rte", "dev")
    path = write_tsv(glue_dir / "glue" / "cola" / "dev.tsv", None, [["gj04", 1, "", "ok"], ["gj04", 1, "ok"]])
    with pytest.raises(ValueError, match=rf"{path}:2: 3 tab-separated columns, expected 4"):
        load_glue("cola", "dev")


def test_unknown_labels_name_the_file_and_line(glue_dir):
    path = write_tsv(glue_dir / "glue" / "sst2" / "dev.tsv", ["sentence", "label"], [["a", 1], ["b", 7]])
    with pytest.raises(ValueError, match=rf"{path}:3: label '7' not allowed for 'sst2'"):
        load_glue("sst2", "dev")
    write_tsv(glue_dir / "glue" / "rte" / "dev.tsv", ["sentence1", "sentence2", "label"], [["a", "b", "maybe"]])
    with pytest.raises(ValueError, match="label 'maybe' not allowed for 'rte'"):
        load_glue("rte", "dev")
    path = glue_dir / "glue" / "stsb" / "dev.tsv"
    path.write_text(path.read_text().replace("3.000", "high"))
    with pytest.raises(ValueError, match=rf"{path}:5: score 'high' is not a finite number"):
        load_glue("stsb", "dev")


def test_a_bom_only_where_glue_has_one(glue_dir):
    path = write_tsv(glue_dir / "glue" / "sst2" / "dev.tsv", ["sentence", "label"], [["a", 1]], bom=True)
    with pytest.raises(ValueError, match=rf"{path}:1: starts with a UTF-8 byte-order mark.*only MRPC"):
        load_glue("sst2", "dev")
    write_tsv(glue_dir / "glue" / "mrpc" / "dev.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
              [[1, 1, 2, "a", "b"]])  # MRPC without its BOM (re-saved by an editor) still reads
    assert load_glue("mrpc", "dev")["label"] == [1]


def test_empty_file_and_header_only(glue_dir):
    path = glue_dir / "glue" / "sst2" / "dev.tsv"
    path.write_text("")
    with pytest.raises(ValueError, match=f"{path}: the file is empty"):
        load_glue("sst2", "dev")
    path.write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match=f"{path}: no rows below the header"):
        load_glue("sst2", "dev")


def test_glue_provenance_hashes_the_files_read(glue_dir):
    record = glue_provenance("cola")
    assert record["source"] == "local" and record["folder"] == glue_dir.resolve().name
    assert record["files"] == {f"glue/cola/{s}.tsv": file_sha256(glue_dir / f"glue/cola/{s}.tsv")
                               for s in ("dev", "train")}
    assert len(record["files"]["glue/cola/dev.tsv"]) == 64
    assert "/" not in record["folder"]  # no path of this machine in a committed result


SQUAD = {"version": "1.1", "data": [{"title": "Cats", "paragraphs": [{"context": "The cat sat on the mat.", "qas": [
    {"id": "q1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0},
                                                     {"text": "cat", "answer_start": 4}]}]}]}]}


def write_squad(path, document=SQUAD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(document).encode(), mtime=0))


def test_squad_from_the_official_gzip_layout(glue_dir):
    write_squad(glue_dir / "squad" / "v1.1" / "dev.json.gz")
    ds = load_squad("dev")
    assert ds[0]["answers"] == {"text": ["The cat", "cat"], "answer_start": [0, 4]}
    assert ds[0]["question"] == "Who sat?" and ds[0]["title"] == "Cats"
    with pytest.raises(FileNotFoundError, match="squad/v1.1/train.reconstructed.json.gz or squad/train-v1.1.json"):
        load_squad("train")
    (glue_dir / "squad" / "train-v1.1.json").write_text(json.dumps(SQUAD))  # the official plain JSON also reads
    assert load_squad("train")["id"] == ["q1"]


def test_squad_truncated_gzip_and_misplaced_answer(glue_dir):
    path = glue_dir / "squad" / "v1.1" / "dev.json.gz"
    write_squad(path)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=f"{path}: not a complete gzip file"):
        load_squad("dev")
    bad = json.loads(json.dumps(SQUAD))
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][1]["answer_start"] = 5
    write_squad(path, bad)
    with pytest.raises(ValueError, match="question 'q1': answer 'cat' is not at answer_start=5"):
        load_squad("dev")


CONLL = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP I-NP I-LOC
"""


def test_conll_iob1_as_shipped_and_iob2(glue_dir):
    path = glue_dir / "conll2003" / "test.txt"
    path.parent.mkdir()
    path.write_text(CONLL)
    iob2, iob1 = load_conll2003("test"), load_conll2003("test", scheme="iob1")
    assert len(iob2) == 3 and iob2["document"] == [0, 0, 1]
    assert iob2[0]["tokens"] == ["EU", "rejects", "German", "call", "."]
    names = iob2.features["ner_tags"].feature.names
    assert [names[i] for i in iob2[1]["ner_tags"]] == ["B-PER", "I-PER", "B-PER"]
    assert [names[i] for i in iob1[1]["ner_tags"]] == ["I-PER", "I-PER", "B-PER"]
    assert iob2[0]["chunk_tags"][0] == "I-NP" and iob2[0]["pos_tags"][1] == "VBZ"


def test_conll_bad_lines_name_the_file_and_line(glue_dir):
    path = glue_dir / "conll2003" / "dev.txt"
    path.parent.mkdir()
    path.write_text(CONLL.replace("call NN I-NP O", "call NN O"))
    with pytest.raises(ValueError, match=f"{path}:6: 3 columns, expected 4"):
        load_conll2003("dev")
    path.write_text(CONLL.replace("I-LOC", "I-CITY"))
    with pytest.raises(ValueError, match=f"{path}:15: NER tag 'I-CITY' not allowed"):
        load_conll2003("dev")
    with pytest.raises(ValueError, match="unknown split 'validation'; allowed"):
        load_conll2003("validation")
    with pytest.raises(ValueError, match="unknown tagging scheme 'bio'"):
        load_conll2003("dev", scheme="bio")


def _spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """Entity spans (start, end, type): one opens at ``B-X`` or where the type changes (IOB1's and IOB2's rule)."""
    spans, start = set(), None
    for i, tag in enumerate([*tags, "O"]):
        opens = tag != "O" and (tag.startswith("B-") or i == 0 or tags[i - 1][2:] != tag[2:])
        if start is not None and (tag == "O" or opens):
            spans.add((start, i, tags[start][2:]))
            start = None
        if tag != "O" and start is None:
            start = i
    return spans


@given(st.lists(st.sampled_from(NER_LABELS), max_size=30))
def test_iob1_to_iob2_keeps_the_spans_and_opens_each_with_b(tags):
    converted = iob1_to_iob2(tags)
    assert _spans(converted) == _spans(tags)
    for previous, tag in zip(["O", *converted], converted):
        assert not tag.startswith("I-") or previous[2:] == tag[2:]  # every I-X continues an X


def test_the_packaged_models_tokenizer_knows_its_words():
    from qlib.experiments.models import DEFAULT_MODEL, model_path

    tokenizer = AutoTokenizer.from_pretrained(model_path(DEFAULT_MODEL))
    ids = tokenizer("The sailors rode the breeze clear of the rocks.")["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.convert_ids_to_tokens(ids)[1:3] == ["the", "sailors"]
