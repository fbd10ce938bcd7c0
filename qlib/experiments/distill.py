"""Knowledge distillation for QAT: the task's FP32 model teaches its quantized copy (TernaryBERT, Zhang et al. 2020).

* ``logits``: the soft cross-entropy of the student's logits against the teacher's at temperature T,
  ``L_pred = T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`` (Hinton et al. 2015; mean squared error for a regression head);
* ``hidden``: ``L_pred`` plus TernaryBERT's ``L_trm = Σ_l MSE(H_s^l, H_t^l) + Σ_l MSE(A_s^l, A_t^l)`` over every
  layer's hidden states (embedding output included) and attention maps.

The teacher is frozen (eval mode, no gradient) and the task's labels are not used: TernaryBERT trains on the teacher's
outputs alone. ``distillation_loss`` gives the loss function ``qlib.experiments.train.finetune`` calls per batch."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

MODES = {"logits": "the logits alone", "hidden": "the logits, hidden states and attention maps"}
"""Each distillation mode and what the student learns from the teacher in it."""
TEMPERATURE = 1.0
"""TernaryBERT's temperature for the logits' soft cross-entropy."""


def logit_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`` averaged over the batch; MSE for a one-output (regression) head.

    Shapes:
        student, teacher [batch, labels] (or [batch, tokens, labels], [batch, tokens]) → scalar.
    """
    if student.shape[-1] == 1:
        return F.mse_loss(student, teacher)
    log_p = F.log_softmax(student / temperature, dim=-1).reshape(-1, student.shape[-1])
    log_q = F.log_softmax(teacher / temperature, dim=-1).reshape(-1, student.shape[-1])
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2


def _logits(output) -> torch.Tensor:
    """A head's logits: one tensor, or a QA head's start and end logits side by side."""
    if getattr(output, "logits", None) is not None:
        return output.logits
    return torch.stack([output.start_logits, output.end_logits], dim=-1).transpose(-1, -2)


def distillation_loss(teacher: nn.Module, mode: str = "logits", temperature: float = TEMPERATURE,
                      ) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """The per-batch loss of a student distilled from ``teacher`` (frozen here) in ``mode`` (one of ``MODES``).

    Args:
        teacher: the FP32 model, same architecture and head as the student.
        mode: ``logits`` (L_pred) or ``hidden`` (L_pred + L_trm; the models need eager or integer attention, which
            return attention maps).
        temperature: T of the logits' soft cross-entropy.

    Returns:
        ``loss(student, batch)``; the batch's labels are dropped.
    """
    if mode not in MODES:
        raise ValueError(f"unknown distillation mode {mode!r}; allowed: {tuple(MODES)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    teacher.eval().requires_grad_(False)
    hidden = mode == "hidden"
    targets = ("labels", "start_positions", "end_positions")

    def loss(student: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in targets}
        with torch.no_grad():
            taught = teacher(**inputs, output_hidden_states=hidden, output_attentions=hidden)
        learned = student(**inputs, output_hidden_states=hidden, output_attentions=hidden)
        total = logit_loss(_logits(learned), _logits(taught), temperature)
        if hidden:
            if learned.attentions is None or taught.attentions is None or None in learned.attentions:
                raise ValueError("mode 'hidden' needs attention maps: load both models with eager attention")
            total = total + sum(F.mse_loss(s, t) for s, t in zip(learned.hidden_states, taught.hidden_states))
            total = total + sum(F.mse_loss(s, t) for s, t in zip(learned.attentions, taught.attentions))
        return total

    return loss
