"""Every head the papers use, trained and scored through one ``run(spec)``: extractive QA (SQuAD v1.1) and token
classification (CoNLL-2003) beside GLUE's; each task's score checked against hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from qlib.experiments.conll import NER_LABELS
from qlib.experiments.data import file_sha256
from qlib.experiments.experiment import run
from qlib.experiments.spec import RunSpec, TrainingProtocol
from qlib.experiments.tasks import ConllTask, GlueTask, SquadTask, get_run_task


def tiny(model_dir, **overrides) -> TrainingProtocol:
    return TrainingProtocol(**{"model": str(model_dir), "epochs": 1, "batch_size": 4, "max_length": 16,
                               "doc_stride": 4} | overrides)


class WordLogits(nn.Module):
    """A stand-in model whose logits are set per vocabulary word, to score a task by hand."""

    def __init__(self, tokenizer, **per_word: torch.Tensor) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.tables = {name: torch.zeros(len(tokenizer), *next(iter(words.values())).shape)
                       for name, words in per_word.items()}
        for name, words in per_word.items():
            for word, value in words.items():
                self.tables[name][tokenizer.convert_tokens_to_ids(word)] = value

    def forward(self, input_ids, **_):
        return SimpleNamespace(**{name: table[input_ids].squeeze(-1) for name, table in self.tables.items()})


def test_the_registry_knows_every_head():
    assert get_run_task("SST-2") == GlueTask("sst2") and get_run_task("stsb").metrics == ("pearson", "spearman")
    assert get_run_task("squad") == SquadTask() and get_run_task("CoNLL2003") == ConllTask()
    with pytest.raises(ValueError, match="unknown task 'imdb'; allowed: cola, .*squad, conll2003"):
        get_run_task("imdb")
    assert RunSpec("squad", "qat").label == "qat" and RunSpec("conll2003").task == "conll2003"


def test_squad_is_scored_by_the_best_span_over_windows(task_data, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = SquadTask()
    data = task.eval_data(tokenizer, tiny(tiny_model_dir, max_length=12, doc_stride=4), seed=0)
    assert len(data.features) > len(data.examples) == 3  # the contexts overflow 12 tokens: several windows each
    one = torch.tensor([5.0])
    model = WordLogits(tokenizer, start_logits={"the": one, "dull": one, "movie": one},
                       end_logits={"film": one, "dull": one, "movie": one})
    metrics, examples = task.score(model, data)
    # q1 "the film" (EM 1, F1 1); q2 "dull" against "a dull plot"/"dull plot" (EM 0, F1 2/3); q3 "movie" (1, 1)
    assert examples == 3
    assert metrics == pytest.approx({"exact_match": 2 / 3, "f1": (1 + 2 / 3 + 1) / 3})


def test_conll_is_scored_by_entities_on_each_words_first_piece(task_data, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = ConllTask()
    data = task.eval_data(tokenizer, tiny(tiny_model_dir), seed=0)

    def tag(name):
        return torch.eye(len(NER_LABELS))[NER_LABELS.index(name)] * 5

    model = WordLogits(tokenizer, logits={"the": tag("B-MISC"), "movie": tag("I-MISC"), "good": tag("B-PER"),
                                          "it": tag("O"), "was": tag("O"), "plot": tag("O")})
    metrics, sentences = task.score(model, data)
    # references (IOB2): MISC "the movie", ORG "good"; predictions: MISC "the movie" (right), PER "good" (wrong type)
    assert sentences == 2 and metrics == pytest.approx({"f1": 0.5, "precision": 0.5, "recall": 0.5})


@pytest.mark.slow
def test_a_tiny_squad_run_trains_and_scores_through_run(task_data, tiny_model_dir, tmp_path):
    spec = RunSpec("squad", "fp32", protocol=tiny(tiny_model_dir))
    records = run(spec, [spec.with_(method="dq")], experiment="qbert", results_dir=tmp_path / "r", progress=False)
    assert [r["method"] for r in records] == ["fp32", "dq"] and records[0]["main_metric"] == "f1"
    for record in records:
        assert set(record["metrics"]) == {"exact_match", "f1"} and 0 <= record["metrics"]["f1"] <= 1
        assert record["eval"]["examples"] == 3 and record["train"]["train_examples"] >= 12  # windows
        assert record["provenance"]["data"]["files"] == {
            f"squad/v1.1/{n}": file_sha256(task_data / "squad" / "v1.1" / n)
            for n in ("dev.json.gz", "train.reconstructed.json.gz")}
    assert RunSpec.from_record(records[0]) == spec and spec.result_path(tmp_path / "r").is_file()


@pytest.mark.slow
def test_a_tiny_conll_qat_run_trains_and_scores_through_run(task_data, tiny_model_dir, tmp_path):
    spec = RunSpec("conll2003", "qbert", weight_bits=4, groups=4, protocol=tiny(tiny_model_dir, epochs=2))
    record = run(spec, experiment="qbert", results_dir=tmp_path / "r", progress=False)[0]
    assert record["method"] == "qbert-w4e8-g4" and set(record["metrics"]) == {"f1", "precision", "recall"}
    assert record["eval"]["examples"] == 2 and record["train"]["train_examples"] == 8
    assert set(record["provenance"]["data"]["files"]) == {"conll2003/train.txt", "conll2003/dev.txt"}
    assert RunSpec.from_record(record) == spec


@pytest.mark.slow
@pytest.mark.parametrize("task", ["squad", "conll2003"])
def test_q_bert_spectra_are_measured_on_the_qa_and_ner_heads(task_data, tiny_model_dir, tmp_path, task):
    from qlib.experiments.qbert import run_spectrum

    result = run_spectrum(task, str(tiny_model_dir), finetune_examples=4, subsets=2, subset_size=2, max_length=16,
                          max_iter=3, results_path=tmp_path / f"spectrum-{task}.json", progress=False)
    assert result["task"] == task and set(result["blocks"]) == {"embeddings", "encoder.layer.0", "encoder.layer.1"}
    assert all(len(block["top"]) == 2 and len(block["smallest"]) == 1 for block in result["blocks"].values())
    assert set(result["provenance"]["data"]["files"]) == set(get_run_task(task).provenance("auto")["files"])
