"""Extractive QA windows and span decoding, NER label alignment and entity scores, on a tiny WordPiece vocabulary."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from qlib.experiments.conll import NER_LABELS
from qlib.experiments.ner import IGNORE, align_labels, entity_scores, tokenize_ner, word_tags
from qlib.experiments.qa import decode_answers, qa_eval_features, qa_train_features, squad_scores

CONTEXT = "the movie was good and the plot was dull it was not fun"
QUESTIONS = datasets.Dataset.from_list([
    {"id": "q1", "question": "what was dull", "context": CONTEXT,
     "answers": {"text": ["the plot"], "answer_start": [CONTEXT.index("the plot")]}},
    {"id": "q2", "question": "was it fun", "context": CONTEXT,
     "answers": {"text": ["not fun"], "answer_start": [CONTEXT.index("not fun")]}},
])


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _span_text(tokenizer, features, row):
    ids = features[row]["input_ids"][features[row]["start_positions"]:features[row]["end_positions"] + 1]
    return tokenizer.decode(ids)


def test_train_windows_mark_the_answer_where_the_window_holds_it(tokenizer):
    whole = qa_train_features(QUESTIONS, tokenizer, max_length=64, stride=8)
    assert len(whole) == 2 and [_span_text(tokenizer, whole, i) for i in range(2)] == ["the plot", "not fun"]
    windows = qa_train_features(QUESTIONS, tokenizer, max_length=12, stride=3)
    assert len(windows) > 2  # the context no longer fits one window
    texts = [_span_text(tokenizer, windows, i) for i in range(len(windows)) if windows[i]["start_positions"]]
    assert set(texts) == {"the plot", "not fun"}
    assert all(windows[i]["end_positions"] == 0 for i in range(len(windows)) if not windows[i]["start_positions"])


def test_decoding_takes_the_best_legal_span_over_all_windows(tokenizer):
    features = qa_eval_features(QUESTIONS, tokenizer, max_length=12, stride=3)
    train = qa_train_features(QUESTIONS, tokenizer, max_length=12, stride=3)
    starts, ends = [], []
    for i in range(len(features)):  # logits that peak at the reference span wherever a window holds it
        n = len(features[i]["input_ids"])
        start, end = np.zeros(n), np.zeros(n)
        if train[i]["start_positions"]:
            start[train[i]["start_positions"]], end[train[i]["end_positions"]] = 5.0, 5.0
        start[0] = end[0] = 9.0  # [CLS] scores highest but lies outside the context: never an answer
        starts.append(start)
        ends.append(end)
    contexts = {row["id"]: row["context"] for row in QUESTIONS}
    predictions = decode_answers(starts, ends, features, contexts)
    assert predictions == {"q1": "the plot", "q2": "not fun"}
    assert squad_scores(predictions, QUESTIONS) == {"exact_match": 1.0, "f1": 1.0}
    assert decode_answers(starts, ends, features, contexts, max_answer_length=1)["q1"] != "the plot"
    with pytest.raises(ValueError, match="no prediction for 1 question"):
        squad_scores({"q1": "the plot"}, QUESTIONS)
    with pytest.raises(ValueError, match="stride must be in"):
        qa_eval_features(QUESTIONS, tokenizer, max_length=12, stride=12)


def test_labels_go_on_each_words_first_piece():
    assert align_labels([1, 0, 5], [None, 0, 0, 1, 2, 2, None]) == [IGNORE, 1, IGNORE, 0, 5, IGNORE, IGNORE]


def test_tokenize_ner_aligns_and_word_tags_reads_back(tokenizer):
    ds = datasets.Dataset.from_list([{"tokens": ["Fun", "Film", "was", "good"], "ner_tags": [7, 8, 0, 0]}])
    encoded = tokenize_ner(ds, tokenizer)
    labels = encoded[0]["labels"]
    assert labels[0] == IGNORE and labels[-1] == IGNORE and [x for x in labels if x != IGNORE] == [7, 8, 0, 0]
    predicted, reference = word_tags([labels], [labels], NER_LABELS)
    assert reference == [["B-MISC", "I-MISC", "O", "O"]] == predicted


def test_entity_scores_count_whole_entities():
    reference = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
    scores = entity_scores(predicted, reference)  # 2 of 3 predicted entities right, 2 of 3 references found
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert entity_scores([["B-PER", "O"]], [["B-PER", "I-PER"]])["f1"] == 0.0  # a wrong boundary is wrong
    with pytest.raises(ValueError, match="one predicted tag per reference tag"):
        entity_scores([["O"]], [["O", "O"]])
