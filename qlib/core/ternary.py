"""Ternary weights (TWN, Li & Liu 2016), as TernaryBERT ternarizes BERT's weight matrices.

Each group of rows g of W (the whole matrix when G = 1, TernaryBERT's layer-wise granularity), first clipped to
``[-c, c]`` as TernaryBERT does (c = 2.5), becomes ``Ŵ_g = α_g · T_g`` with ``T_g ∈ {-1, 0, +1}``:

* threshold ``Δ_g = t · mean(|W_g|)`` (TWN's approximation of the optimal threshold, t = 0.7),
* ``T_g = sign(W_g) · 1[|W_g| > Δ_g]``,
* scale ``α_g = mean(|W_g| over |W_g| > Δ_g)``, the least-squares scale of those ternary values.

Training uses the straight-through estimator, ∂Ŵ/∂W = 1 inside the clip range and 0 outside (TernaryBERT's TWN
gradient). ``TernarySpec`` is a weight quantizer (``qlib.core.weight_quantizer``): a checkpoint stores ``T + 1`` as
2-bit packed codes and ``alpha`` [G].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from qlib.common.checks import check_finite, check_groups, check_tensor
from qlib.core.packing import pack, unpack
from qlib.core.quantizers import group_view

TWN_THRESHOLD = 0.7
"""TWN's t in ``Δ = t · mean|W|`` (Li & Liu 2016, eq. 8; TernaryBERT's default)."""
TERNARYBERT_CLIP = 2.5
"""TernaryBERT's weight clip c (``clip_val`` in its released code): weights are clipped to [-c, c] first."""


def _fit(view: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Δ, α) of each row of ``view`` [G, n] as [G, 1] each (α = 0 for an all-zero group)."""
    magnitude = view.abs()
    delta = threshold * magnitude.mean(dim=1, keepdim=True)
    kept = magnitude > delta
    return delta, (magnitude * kept).sum(dim=1, keepdim=True) / kept.sum(dim=1, keepdim=True).clamp_min(1)


def _levels(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``T = sign(x) · 1[|x| > Δ]``, in {-1, 0, 1}, as ``x``'s dtype (``delta`` broadcasts against ``x``)."""
    return torch.sign(x) * (x.abs() > delta)


class _StraightThrough(torch.autograd.Function):
    """``x̂`` in the forward pass exactly (not ``x + (x̂ - x)``, which rounds); the gradient to ``x`` where ``inside``
    (the clip range), 0 elsewhere."""

    @staticmethod
    def forward(ctx, x, quantized, inside):  # type: ignore[override]
        ctx.save_for_backward(inside)
        return quantized

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), None, None


@dataclass(frozen=True)
class TernarySpec:
    """TWN ternarization of a weight, one (Δ, α) per group of rows (see the module docstring).

    Args:
        groups: G, dividing the weight's rows; 1 is one scale per matrix (TernaryBERT's layer-wise choice).
        threshold: t in ``Δ = t · mean|W|``, in (0, 1).
        clip: c, weights are clipped to [-c, c] before Δ and α are fitted and get no gradient outside it
            (TernaryBERT's 2.5); None: no clip.
    """

    groups: int = 1
    threshold: float = TWN_THRESHOLD
    clip: float | None = TERNARYBERT_CLIP
    bits = 2  # not a field: three levels take two bits a code in a checkpoint, whatever the settings

    def __post_init__(self) -> None:
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"groups must be a positive integer, got {self.groups!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be a number in (0, 1) (TWN's t = {TWN_THRESHOLD}), got "
                             f"{self.threshold!r}")
        if self.clip is not None and (isinstance(self.clip, bool) or not isinstance(self.clip, (int, float))
                                      or not self.clip > 0):
            raise ValueError(f"clip must be a positive number or None (TernaryBERT's c = {TERNARYBERT_CLIP}), got "
                             f"{self.clip!r}")

    def _groups_of(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the detached, clipped ``weight`` as [G, n], Δ [G, 1], α [G, 1]), checked."""
        check_tensor(weight, "weight")
        check_groups(self.groups, weight.shape[0] if weight.dim() else 1, tuple(weight.shape))
        view = self._clipped(group_view(weight.detach(), self.groups))
        delta, alpha = _fit(view, self.threshold)
        if not torch.isfinite(delta).all():  # a NaN or Inf reaches the mean: only then a pass to count them
            check_finite(view, "weight")
        return view, delta, alpha

    def _clipped(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.clip is None else x.clamp(-self.clip, self.clip)

    def _inside(self, x: torch.Tensor) -> torch.Tensor:
        """Where ``x`` lies inside the clip range (the straight-through gradient passes there)."""
        return torch.ones_like(x, dtype=torch.bool) if self.clip is None else x.detach().abs() <= self.clip

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """``α_g · T_g`` in place of each group of ``weight``, with the straight-through gradient (∂Ŵ/∂W = 1 inside
        the clip range, 0 outside).

        Shapes: weight [rows, ...] (G dividing rows) → the same shape and dtype."""
        view, delta, alpha = self._groups_of(weight)
        ternary = (_levels(view, delta) * alpha).reshape(weight.shape).to(weight.dtype)
        return _StraightThrough.apply(weight, ternary, self._inside(weight))

    def fake_quantize_rows(self, weight: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` [...] of ``fake_quantize(weight)`` from ``rows = weight[ids]`` [..., d], with the same
        gradient: each row's Δ and α are its group's over the whole table; rows nobody looked up are not ternarized."""
        _, delta, alpha = self._groups_of(weight)
        group = ids // (weight.shape[0] // self.groups)
        ternary = _levels(rows.detach(), delta[group]) * alpha[group]
        return _StraightThrough.apply(rows, ternary.to(rows.dtype), self._inside(rows))

    def encode(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """``codes``: T + 1 (0, 1, 2) packed in 2 bits each (``qlib.core.packing``); ``alpha`` [G]."""
        view, delta, alpha = self._groups_of(weight)
        codes = _levels(view, delta).to(torch.int16) + 1
        return {"codes": pack(codes, self.bits), "alpha": alpha.reshape(-1).contiguous()}

    def decode(self, encoded: Mapping[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """``α_g · (codes - 1)`` of shape ``shape``: exactly ``fake_quantize``'s values."""
        missing = sorted({"codes", "alpha"} - set(encoded))
        if missing:
            raise ValueError(f"a ternary weight's encoding needs codes and alpha; missing {missing}")
        alpha = encoded["alpha"].to(torch.float32)
        if alpha.numel() != self.groups:
            raise ValueError(f"alpha holds {alpha.numel()} scales, this quantizer has groups={self.groups}")
        codes = unpack(encoded["codes"], self.bits, int(torch.Size(shape).numel()))
        if codes.numel() and int(codes.max()) > 2:
            raise ValueError(f"ternary codes lie in 0..2, got {int(codes.max())}")
        view = codes.to(torch.float32).reshape(self.groups, -1) - 1
        return (view * alpha[:, None]).reshape(tuple(shape))

    def describe(self, weight: torch.Tensor) -> dict[str, Any]:
        """The quantizer (``ternary``), its 2-bit codes, groups, threshold and clip."""
        return {"quantizer": "ternary", "bits": self.bits, "groups": self.groups, "threshold": self.threshold,
                "clip": self.clip}
