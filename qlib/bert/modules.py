"""Fake-quantized layers for training and evaluation (torch.ao's QAT-module role).

Weights go through their weight quantizer (``qlib.core.weight_quantizer``; a uniform ``QuantSpec`` fits a fresh grid at
every forward, since their range is known); inputs take the range their observer gives (EMA during QAT, per batch for
dynamic quantization). Biases stay in float (int32 at export).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qlib.bert.config import LayerQuant
from qlib.core.observers import make_observer
from qlib.core.quant_noise import quant_noise
from qlib.core.quantizers import QuantGrid, QuantSpec
from qlib.core.weight_quantizer import WeightQuantizer


class QuantLinear(nn.Linear):
    """``y = Q_a(x) · Q_w(W)ᵀ + b`` with x [..., in], W [out, in], b [out] (Q8BERT eq. 2; Q-BERT sec. 3.1)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, quant: LayerQuant | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device)
        self.quant = quant or LayerQuant()
        act = self.quant.activation
        self.input_observer = (
            make_observer(self.quant.observer, act.symmetric, self.quant.ema_decay) if act is not None else None
        )

    @classmethod
    def from_float(cls, linear: nn.Linear, quant: LayerQuant) -> "QuantLinear":
        """Wrap ``linear``'s own parameters (shared, not copied), so optimizers and ties keep working."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, quant, device="meta")
        module.weight = linear.weight
        module.bias = linear.bias
        if module.input_observer is not None:
            module.input_observer.to(linear.weight.device)
        return module.train(linear.training)

    def weight_grid(self) -> QuantGrid | None:
        """The uniform grid the weight is quantized on now (``None`` when the weight stays float); only for a
        ``QuantSpec`` weight quantizer (the int8 export's)."""
        if self.quant.weight is None:
            return None
        if not isinstance(self.quant.weight, QuantSpec):
            raise TypeError(f"{type(self.quant.weight).__name__} quantizes on no uniform grid")
        return self.quant.weight.grid_for(self.weight)

    def input_grid(self, x: torch.Tensor) -> QuantGrid | None:
        """The per-tensor grid for input ``x`` (observer-updating in training mode)."""
        if self.input_observer is None:
            return None
        lo, hi = self.input_observer(x)
        return QuantGrid.from_range(lo, hi, self.quant.activation.bits, self.quant.activation.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_grid, quantizer = self.input_grid(x), self.quant.weight
        x = x if x_grid is None else x_grid.fake_quantize(x)
        weight = float_weight = self.weight  # read once: a parametrized weight (``qlib.bert.pq_noise``) draws anew
        if quantizer is not None:
            weight = quantizer.fake_quantize(float_weight)
            if self.training and self.quant.noise_rate < 1.0:
                weight = quant_noise(float_weight, weight, self.quant.noise_rate, self.quant.noise_block)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, quant={self.quant}"


class QuantEmbedding(nn.Embedding):
    """``E[i] = Q(W)[i]``: a lookup into the fake-quantized table W [num_embeddings, dim] (Q8BERT sec. 2)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, spec: WeightQuantizer | None = None,
                 padding_idx: int | None = None, device: torch.device | str | None = None) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx, device=device)
        self.spec = spec or QuantSpec()

    @classmethod
    def from_float(cls, embedding: nn.Embedding, spec: WeightQuantizer) -> "QuantEmbedding":
        """Wrap ``embedding``'s own table (shared, so a tied MLM decoder stays tied)."""
        module = cls(embedding.num_embeddings, embedding.embedding_dim, spec, embedding.padding_idx, device="meta")
        module.weight = embedding.weight
        return module.train(embedding.training)

    def weight_grid(self) -> QuantGrid:
        """The uniform grid of the table (a ``QuantSpec`` weight quantizer only: the int8 export's)."""
        if not isinstance(self.spec, QuantSpec):
            raise TypeError(f"{type(self.spec).__name__} quantizes on no uniform grid")
        return self.spec.grid_for(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.weight  # read once, as in QuantLinear
        rows = F.embedding(ids, weight, self.padding_idx)
        return self.spec.fake_quantize_rows(weight, rows, ids)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, spec={self.spec}"
