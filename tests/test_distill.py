"""Distillation for QAT (TernaryBERT): the logits' soft cross-entropy against hand-computed values, the hidden-state
and attention-map terms, and a distilled QAT run from an FP32 teacher through run(spec)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from qlib.experiments.distill import distillation_loss, logit_loss


def test_the_logit_loss_is_the_tempered_kl_divergence():
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # softmax: (1/4, 3/4)
    student = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert logit_loss(student, teacher).item() == pytest.approx(expected)
    assert logit_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    tempered = 4 * (0.5 * math.log(0.5 / 0.5) + 0.5 * math.log(0.5 / 0.5))  # T = 2 on equal logits: 0
    assert logit_loss(student, student * 3, temperature=2.0).item() == pytest.approx(tempered, abs=1e-7)
    assert logit_loss(torch.tensor([[1.0]]), torch.tensor([[3.0]])).item() == pytest.approx(4.0)  # regression: MSE


def test_the_hidden_mode_adds_every_layers_states_and_attention_maps():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    config = tiny_config(attn_implementation="eager")
    teacher, student = BertForSequenceClassification(config), BertForSequenceClassification(config)
    batch = {"input_ids": torch.randint(5, 60, (2, 8)), "labels": torch.tensor([0, 1])}
    hidden, logits = distillation_loss(teacher, "hidden"), distillation_loss(teacher, "logits")
    assert hidden(student, batch) > logits(student, batch) > 0
    assert hidden(teacher, batch).item() == pytest.approx(0.0, abs=1e-6)  # a model taught by itself: nothing
    with pytest.raises(ValueError, match="unknown distillation mode 'attention'"):
        distillation_loss(teacher, "attention")
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher is frozen


@pytest.mark.slow
def test_a_distilled_qat_run_learns_from_its_fp32_teacher(glue_dir, tiny_model_dir, tmp_path):
    from qlib.experiments.experiment import checkpoint_path, run
    from qlib.experiments.spec import RunSpec, TrainingProtocol

    tiny = TrainingProtocol(model=str(tiny_model_dir), epochs=1, batch_size=4, max_length=16)
    fp32 = RunSpec("sst2", "fp32", protocol=tiny)
    run(fp32, results_dir=tmp_path / "r", checkpoint_dir=tmp_path / "c", progress=False)
    teacher = str(checkpoint_path(fp32, tmp_path / "c"))
    for mode in ("logits", "hidden"):
        spec = RunSpec("sst2", "qbert", weight_bits=2, groups=4, init_from=teacher, distillation=mode, protocol=tiny)
        record = run(spec, results_dir=tmp_path / "r", progress=False)[0]
        assert record["method"] == f"qbert-w2e8-g4-{'kd' if mode == 'logits' else 'kdh'}-ft"
        assert RunSpec.from_record(record) == spec and record["train"]["steps"] == 4
