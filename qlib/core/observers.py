"""Range observers for activations (torch.ao's observer role): they see tensors and say which range to quantize.

* ``EMAObserver`` — Q8BERT's activations: ``r_t = d·r_{t-1} + (1 - d)·max|x_t|`` while training (the first
  batch sets ``r_1 = max|x_1|``), frozen at inference; asymmetric grids track min and max the same way.
* ``DynamicObserver`` — dynamic quantization (Q8BERT's DQ): the range of each batch, computed at every call.
* ``MinMaxObserver`` — calibration: the running min and max of everything seen while in training mode.

Every observer returns per-tensor ranges ``(lo [1], hi [1])``.
"""

from __future__ import annotations

import torch
from torch import nn

from qlib.core.quantizers import tensor_ranges

Q8BERT_EMA_DECAY = 0.9999  # nlp-architect's QuantizationConfig default, the Q8BERT authors' code


class RangeObserver(nn.Module):
    """Base class: ``forward(x)`` returns the range to quantize ``x`` with; stateful observers keep it in buffers."""

    def __init__(self, symmetric: bool = True) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.register_buffer("lo", torch.zeros(1))
        self.register_buffer("hi", torch.zeros(1))
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))

    def batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range of ``x`` alone: (min, max), or (-max|x|, max|x|) for a symmetric grid.

        Shapes:
            x [...] → lo [1], hi [1].
        """
        lo, hi = tensor_ranges(x)
        if self.symmetric:
            max_abs = torch.maximum(lo.abs(), hi.abs())
            return -max_abs, max_abs
        return lo, hi

    def stored_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range kept so far, (lo [1], hi [1]); a ``RuntimeError`` saying what to do if nothing was observed."""
        if int(self.observed) == 0:
            raise RuntimeError(
                f"{type(self).__name__} has never observed a batch, so it has no range; run the model in "
                "training mode (QAT) or calibrate it with qlib.calibrate(model, batches) first"
            )
        return self.lo, self.hi

    def extra_repr(self) -> str:
        return f"symmetric={self.symmetric}, observed={int(self.observed)}"


class EMAObserver(RangeObserver):
    """Exponential moving average of the range: ``r ← d·r + (1 - d)·r_batch`` in training mode."""

    def __init__(self, symmetric: bool = True, decay: float = Q8BERT_EMA_DECAY) -> None:
        super().__init__(symmetric)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = decay

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            lo, hi = self.batch_range(x)
            with torch.no_grad():
                if int(self.observed) == 0:
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                else:
                    self.lo.mul_(self.decay).add_((1 - self.decay) * lo)
                    self.hi.mul_(self.decay).add_((1 - self.decay) * hi)
                self.observed += 1
        return self.stored_range()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, decay={self.decay}"


class MinMaxObserver(RangeObserver):
    """Running min and max over all batches seen in training mode (post-training calibration)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            lo, hi = self.batch_range(x)
            with torch.no_grad():
                first = int(self.observed) == 0
                self.lo.copy_(lo if first else torch.minimum(self.lo, lo))
                self.hi.copy_(hi if first else torch.maximum(self.hi, hi))
                self.observed += 1
        return self.stored_range()


class DynamicObserver(RangeObserver):
    """The range of the current batch, in training and at inference alike (no state is kept)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch_range(x)


OBSERVERS = {"ema": EMAObserver, "minmax": MinMaxObserver, "dynamic": DynamicObserver}


def make_observer(kind: str, symmetric: bool, ema_decay: float = Q8BERT_EMA_DECAY) -> RangeObserver:
    """The observer named ``kind``.

    Args:
        kind: ``ema`` (QAT: ``r ← d·r + (1 - d)·r_batch``), ``minmax`` (calibration) or ``dynamic`` (per batch).
        symmetric: track max|x| (a symmetric grid) rather than min and max.
        ema_decay: d, for ``ema`` (Q8BERT's 0.9999 by default).

    Returns:
        A fresh ``RangeObserver``; an unknown ``kind`` is refused, naming the allowed ones.
    """
    if kind not in OBSERVERS:
        raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {kind!r}")
    if kind == "ema":
        return EMAObserver(symmetric, ema_decay)
    return OBSERVERS[kind](symmetric)
