"""BERT's nonlinearities in integer arithmetic, trainable: GELU, softmax and LayerNorm as I-BERT computes them.

Each module quantizes its input on a symmetric per-tensor grid of ``bits`` (16 by default, standing in for the int32
accumulators that feed these operations in I-BERT), with the range an EMA observer keeps (I-BERT's momentum 0.95;
frozen at inference), runs the integer kernel of ``qlib.core.integer_ops``, and returns the dequantized result. Training
goes through the straight-through estimator: the forward value is the integer kernel's, the gradient is the float
function's, ``y = f(x) + (f_int(x) - f(x)).detach()``; where no gradient is recorded (inference, evaluation) the
float function is not computed at all and ``y = f_int(x)``.

``use_integer_nonlinearities(model)`` puts them into a BERT in place: every ``BertIntermediate``'s GELU, every
LayerNorm of the embeddings and encoder, and the attention softmax (an attention function registered with
transformers' ``AttentionInterface``, reading each layer's ``IntegerSoftmax``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

from qlib.core.integer_ops import i_gelu, i_layernorm, i_softmax
from qlib.core.observers import EMAObserver

IBERT_EMA_DECAY = 0.95
"""I-BERT's activation-range momentum (``QuantAct``'s ``act_range_momentum``)."""
ATTENTION = "qbook_integer_softmax"
"""The name the integer-softmax attention function is registered under (``config._attn_implementation``)."""


class IntegerNonlinearity(nn.Module):
    """An input grid of ``bits`` whose range an EMA observer keeps (``decay``), and the straight-through estimator."""

    def __init__(self, bits: int = 16, decay: float = IBERT_EMA_DECAY) -> None:
        super().__init__()
        if not 8 <= bits <= 24:
            raise ValueError(f"bits must be in 8..24 (the integer kernels' inputs), got {bits!r}")
        self.bits = bits
        self.observer = EMAObserver(symmetric=True, decay=decay)

    def codes(self, x: torch.Tensor, observed: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """(int64 codes, scale S) of ``x`` on the grid [-max, max] the observer keeps (updated from ``observed``,
        default ``x``, in training mode)."""
        _, hi = self.observer((x if observed is None else observed).detach())
        qmax = 2 ** (self.bits - 1) - 1
        scale = max(float(hi), torch.finfo(torch.float32).tiny) / qmax
        codes = x.detach().to(torch.float64, copy=True).div_(scale).round_().clamp_(-qmax, qmax)
        return codes.to(torch.int64), scale

    @staticmethod
    def straight_through(reference: Callable[[], torch.Tensor], integer: torch.Tensor,
                         dtype: torch.dtype) -> torch.Tensor:
        """``integer``'s value (in ``dtype``) with the gradient of the float function ``reference()``, which is
        computed only where a gradient is recorded."""
        if not torch.is_grad_enabled():
            return integer.to(dtype)
        exact = reference()
        return exact + (integer.to(exact.dtype) - exact).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, decay={self.observer.decay}"


class IntegerGELU(IntegerNonlinearity):
    """``i_gelu`` (I-BERT's second-order erf): GELU(x) with an error under 0.02 (``tests/test_integer_ops.py``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self.codes(x)
        codes, out_scale = i_gelu(q, scale)
        return self.straight_through(lambda: F.gelu(x), codes.double().mul_(out_scale), x.dtype)


class IntegerSoftmax(IntegerNonlinearity):
    """``i_softmax`` over the last dimension, ``out_bits``-bit probabilities; masked scores get probability 0."""

    def __init__(self, bits: int = 16, decay: float = IBERT_EMA_DECAY, out_bits: int = 8) -> None:
        super().__init__(bits, decay)
        self.out_bits = out_bits

    def forward(self, scores: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        kept = scores if masked is None else scores.masked_select(~masked.expand_as(scores))
        q, scale = self.codes(scores.masked_fill(masked, 0.0) if masked is not None else scores, kept)
        codes, out_scale = i_softmax(q, scale, dim=-1, out_bits=self.out_bits, mask=masked)
        return self.straight_through(
            lambda: F.softmax(scores if masked is None else scores.masked_fill(masked, float("-inf")), dim=-1),
            codes.double().mul_(out_scale), scores.dtype)


class IntegerLayerNorm(IntegerNonlinearity):
    """``i_layernorm`` then LayerNorm's affine map in integers: ``y = w·(n + ⌊b / (w·S_n)⌋)·S_n``, the weight ``w``
    and bias ``b`` shared with the float LayerNorm it replaces."""

    def __init__(self, normalized_shape: int, bits: int = 16, decay: float = IBERT_EMA_DECAY) -> None:
        super().__init__(bits, decay)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = 1e-12

    @classmethod
    def from_float(cls, layer_norm: nn.LayerNorm, bits: int = 16) -> "IntegerLayerNorm":
        module = cls(layer_norm.normalized_shape[0], bits)
        module.weight, module.bias, module.eps = layer_norm.weight, layer_norm.bias, layer_norm.eps
        return module.to(layer_norm.weight.device).train(layer_norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self.codes(x)
        codes, out_scale = i_layernorm(q, scale)
        weight = self.weight.detach().double()
        safe = torch.where(weight.abs() > 1e-12, weight, torch.full_like(weight, 1e-12))
        bias_codes = torch.floor(self.bias.detach().double() / (safe * out_scale)).to(torch.int64)
        integer = codes.add_(bias_codes).double().mul_(out_scale).mul_(weight)
        return self.straight_through(lambda: F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps),
                                     integer, x.dtype)


def integer_softmax_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention with ``module.integer_softmax`` in place of the float softmax.

    Shapes:
        query, key, value [batch, heads, tokens, head dim]; attention_mask additive [batch, 1, tokens, tokens]
        (or boolean, True = attend) → output [batch, tokens, heads, head dim], probabilities [b, h, t, t].
    """
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    masked = None
    if attention_mask is not None:
        masked = ~attention_mask if attention_mask.dtype == torch.bool else attention_mask < -1e4
        if attention_mask.dtype != torch.bool:  # a finite additive bias (none in BERT's padding masks) is kept
            scores = scores + attention_mask.masked_fill(masked, 0.0)
    probabilities = module.integer_softmax(scores, masked)
    probabilities = F.dropout(probabilities, p=dropout, training=module.training)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), probabilities


AttentionInterface.register(ATTENTION, integer_softmax_attention)


def use_integer_nonlinearities(model: nn.Module, bits: int = 16) -> nn.Module:
    """Replace, in place, every GELU of the encoder's intermediate layers by ``IntegerGELU``, every LayerNorm of the
    embeddings and encoder by ``IntegerLayerNorm`` (sharing its parameters) and the attention softmax by
    ``IntegerSoftmax`` (through the ``ATTENTION`` attention function); returns ``model``.

    Args:
        model: a ``BertFor...`` model or ``BertModel``, FP32 or converted by ``qlib.convert_bert``.
        bits: the integer kernels' input bits.
    """
    from transformers.models.bert.modeling_bert import BertIntermediate, BertSelfAttention

    found = {"gelu": 0, "softmax": 0, "layernorm": 0}
    for name, module in list(model.named_modules()):
        if isinstance(module, BertIntermediate):
            module.intermediate_act_fn = IntegerGELU(bits)
            found["gelu"] += 1
        elif isinstance(module, BertSelfAttention):
            module.integer_softmax = IntegerSoftmax(bits)
            found["softmax"] += 1
        for child_name, child in list(module.named_children()):
            if type(child) is nn.LayerNorm:
                setattr(module, child_name, IntegerLayerNorm.from_float(child, bits))
                found["layernorm"] += 1
    if not all(found.values()):
        raise ValueError(f"{type(model).__name__} is not a BERT with GELU, self-attention and LayerNorm "
                         f"(found {found})")
    model.set_attn_implementation(ATTENTION)
    return model
