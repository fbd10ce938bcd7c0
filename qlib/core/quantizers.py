"""Uniform quantization grids: symmetric (Q8BERT) and asymmetric clamp (Q-BERT), per tensor, row or group.

A grid maps a real tensor to integers and back, ``x̂ = Δ·q + b``:

* symmetric (Q8BERT eq. 1): ``S = M / max|x|``, ``M = 2^(b-1) - 1``, ``q = clamp(round(x·S), -M, M)``,
  so ``Δ = 1/S`` and ``b = 0`` (zero maps to zero);
* asymmetric (Q-BERT eq. 3): ``X' = clamp(X, q0, q_{2^k-1})``, ``X_I = round((X' - q0)/Δ)``,
  ``Δ = (q_{2^k-1} - q0)/(2^k - 1)``, ``DQ(X) = Δ·X_I + q0``, so ``b = q0``.

Granularity splits a tensor's rows (dim 0) into G contiguous groups, each with its own range:
G = 1 is per tensor, G = rows is per output channel, G = heads is Q-BERT's group-wise scheme.

``QuantSpec`` is the uniform grid as a weight quantizer (``qlib.core.weight_quantizer``): a checkpoint stores its codes
bit-packed (``codes``, b bits each) with the grid (``scale``, ``shift`` [G]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch

from qlib.common.checks import check_bits, check_finite, check_groups, check_tensor
from qlib.core.packing import pack, unpack

Scheme = Literal["symmetric", "asymmetric"]
Granularity = Literal["tensor", "channel", "group"]
SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel", "group")


def _rows(x: torch.Tensor) -> int:
    return x.shape[0] if x.dim() > 0 else 1


def group_view(x: torch.Tensor, groups: int) -> torch.Tensor:
    """View ``x`` [rows, ...] as [G, rows/G · rest]: group g holds rows g·rows/G … (g+1)·rows/G - 1."""
    check_groups(groups, _rows(x), tuple(x.shape))
    return x.reshape(groups, -1)


def tensor_ranges(
    x: torch.Tensor, groups: int = 1, percentile: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group clip range of ``x``: its min/max, or its [100 - p, p] percentiles to drop outliers (Q-BERT's clipped
    sub-interval).

    Args:
        x: the tensor, rows first.
        groups: G, dividing ``x``'s rows: group g is rows g·rows/G … (g + 1)·rows/G - 1.
        percentile: p in (50, 100], or None for min/max.

    Returns:
        (lo, hi): the range of each group.

    Shapes:
        x [rows, ...] → lo [G], hi [G].
    """
    check_tensor(x)
    view = group_view(x.detach(), groups)
    lo, hi = view.amin(dim=1), view.amax(dim=1)
    # NaN and ±Inf reach the min or max, so a finite min and max prove a finite tensor without a pass of its own over
    # x (torch.isfinite(x).all() took 10x the time of the min and max); it runs only to count them for the error.
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        check_finite(x)
    if percentile is None:
        return lo, hi
    n = view.shape[1]
    k_hi = min(n, max(1, round(percentile / 100.0 * n)))
    k_lo = n - k_hi + 1
    # The k_lo-th smallest and the k_lo-th largest (= the k_hi-th smallest) value of each group: the largest of the
    # k_lo smallest and the smallest of the k_lo largest, which topk selects at each end (the order statistics
    # kthvalue gives, about 5x faster on a weight matrix, which QAT ranges at every step); not torch.quantile,
    # which refuses inputs over 16M elements.
    lo = torch.topk(view, k_lo, dim=1, largest=False, sorted=False).values.amax(dim=1)
    hi = torch.topk(view, k_lo, dim=1, largest=True, sorted=False).values.amin(dim=1)
    return lo, hi


def _codes(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round((x - b)/Δ), qmin, qmax)`` as floats (the one rounding rule of every grid), in a new tensor.

    In place after the first op: the same values, with one fresh buffer instead of four (on a CPU, writing to fresh
    memory was most of the cost: measured about 2x faster with ``_RoundWithSTE``'s in-place tail)."""
    return (x - shift).mul_(1.0 / scale).round_().clamp_(qmin, qmax)


class _RoundWithSTE(torch.autograd.Function):
    """Fake quantization ``x̂ = Δ·clamp(round((x - b)/Δ), qmin, qmax) + b`` with the straight-through estimator.

    Backward: ``∂x̂/∂x = 1`` where ``lo ≤ x ≤ hi`` (the grid's clip range) and 0 outside, so clipped values stop
    receiving gradient while rounding is treated as the identity (Bengio et al. 2013; Q8BERT sec. 2).
    Shapes: ``x`` [G, n]; ``scale``, ``shift``, ``lo``, ``hi`` [G, 1].
    """

    @staticmethod
    def forward(ctx, x, scale, shift, lo, hi, qmin: int, qmax: int):  # type: ignore[override]
        ctx.save_for_backward((x >= lo).logical_and_(x <= hi))
        return _codes(x, scale, shift, qmin, qmax).mul_(scale).add_(shift)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), None, None, None, None, None, None


@dataclass(frozen=True)
class QuantGrid:
    """A uniform grid per group: ``x̂ = scale·q + shift`` with integer ``q`` in [qmin, qmax].

    ``scale`` and ``shift`` have shape [G]; a tensor quantized on the grid must have G dividing its rows.
    """

    scale: torch.Tensor
    shift: torch.Tensor
    bits: int
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def groups(self) -> int:
        return self.scale.numel()

    @property
    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Real values (lo [G], hi [G]) of the grid's end points; values outside are clamped."""
        return self.scale * self.qmin + self.shift, self.scale * self.qmax + self.shift

    @classmethod
    def from_range(cls, lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> "QuantGrid":
        """Grid covering [lo, hi] per group; symmetric grids cover ``[-max(|lo|,|hi|), +max(|lo|,|hi|)]``.

        Args:
            lo, hi: each group's range, lo ≤ hi, finite.
            bits: b in 2..8.
            symmetric: the symmetric grid (zero maps to code 0) or the asymmetric one (lo maps to code 0).

        Shapes:
            lo [G], hi [G] → scale [G], shift [G].

        Δ is at least the smallest normal float32, so 1/Δ stays finite: a zero-width range (a constant group)
        maps the constant exactly onto the grid, and a subnormal range does not overflow to NaN.
        """
        check_bits(bits)
        lo = torch.as_tensor(lo, dtype=torch.float32).reshape(-1)
        hi = torch.as_tensor(hi, dtype=torch.float32).reshape(-1)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError(f"range must be finite, got lo={lo.tolist()[:4]}, hi={hi.tolist()[:4]}")
        if (lo > hi).any():
            raise ValueError(f"range must have lo <= hi, got lo={lo.tolist()[:4]}, hi={hi.tolist()[:4]}")
        if symmetric:
            max_abs = torch.maximum(lo.abs(), hi.abs())
            scale = max_abs / (2 ** (bits - 1) - 1)
            shift = torch.zeros_like(scale)
        else:
            scale = (hi - lo) / (2**bits - 1)
            shift = lo
        scale = scale.clamp_min(torch.finfo(torch.float32).tiny)
        return cls(scale=scale, shift=shift, bits=bits, symmetric=symmetric)

    def _per_group(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        view = group_view(x, self.groups)
        scale, shift = self.scale.to(x.dtype)[:, None], self.shift.to(x.dtype)[:, None]
        return view, scale, shift

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes ``q = clamp(round((x - b)/Δ), qmin, qmax)`` of ``x``.

        Shapes:
            x [rows, ...] (G dividing rows) → the same shape, int8 for symmetric grids, uint8 for asymmetric ones.
        """
        view, scale, shift = self._per_group(x)
        q = _codes(view, scale, shift, self.qmin, self.qmax)
        return q.to(torch.int8 if self.symmetric else torch.uint8).reshape(x.shape)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """Real values ``Δ·q + b`` of integer codes ``q``.

        Shapes:
            q [rows, ...] (G dividing rows) → the same shape, float32.
        """
        view, scale, shift = self._per_group(q.to(torch.float32))
        return (view * scale + shift).reshape(q.shape)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(x))`` in float, differentiable with the straight-through estimator (the gradient
        passes where ``lo ≤ x ≤ hi`` and is 0 where x was clipped).

        Shapes:
            x [rows, ...] (G dividing rows) → the same shape and dtype.
        """
        view, scale, shift = self._per_group(x)
        lo, hi = (t.to(x.dtype)[:, None] for t in self.clip_range)
        return _RoundWithSTE.apply(view, scale, shift, lo, hi, self.qmin, self.qmax).reshape(x.shape)

    def fake_quantize_rows(self, rows: torch.Tensor, row_ids: torch.Tensor, total_rows: int) -> torch.Tensor:
        """Fake-quantize ``rows`` [..., d] gathered from a [total_rows, d] table at ``row_ids`` [...].

        Equal to gathering from ``fake_quantize(table)``, without touching the rows nobody looked up
        (an embedding lookup reads a few hundred of 30 k rows).
        """
        group = (row_ids // (total_rows // self.groups)).unsqueeze(-1)
        scale, shift = self.scale.to(rows.dtype)[group], self.shift.to(rows.dtype)[group]
        lo, hi = (t.to(rows.dtype)[group] for t in self.clip_range)
        return _RoundWithSTE.apply(rows, scale, shift, lo, hi, self.qmin, self.qmax)


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one tensor: bit width, scheme, granularity and clip range.

    ``granularity="group"`` needs ``groups`` (G dividing the rows); ``percentile`` p clips the range to the
    [100 - p, p] percentiles of each group (Q-BERT's sub-interval) instead of min/max.
    """

    bits: int = 8
    scheme: Scheme = "symmetric"
    granularity: Granularity = "tensor"
    groups: int | None = None
    percentile: float | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group":
            if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
                raise ValueError(f"granularity='group' needs groups, a positive integer; got groups={self.groups!r}")
        elif self.groups is not None:
            raise ValueError(f"groups={self.groups} is only allowed with granularity='group', not {self.granularity!r}")
        if self.percentile is not None and not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile!r}")

    @property
    def symmetric(self) -> bool:
        return self.scheme == "symmetric"

    def num_groups(self, x: torch.Tensor) -> int:
        """G for tensor ``x``: 1 per tensor, rows per channel, ``groups`` group-wise (checked to divide rows)."""
        rows = _rows(x)
        if self.granularity == "tensor":
            return 1
        if self.granularity == "channel":
            return rows
        return check_groups(self.groups, rows, tuple(x.shape))

    def grid_for(self, x: torch.Tensor) -> QuantGrid:
        """The grid fitted to ``x`` itself (weights, or activations quantized dynamically per batch)."""
        lo, hi = tensor_ranges(x, self.num_groups(x), self.percentile)
        return QuantGrid.from_range(lo, hi, self.bits, self.symmetric)

    # --- the weight-quantizer contract (qlib.core.weight_quantizer) ---------------------------------------------------

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """``Δ·clamp(round((W - b)/Δ), qmin, qmax) + b`` on the grid fitted to ``weight``, with the STE."""
        return self.grid_for(weight).fake_quantize(weight)

    def fake_quantize_rows(self, weight: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of ``fake_quantize(weight)``, from ``rows = weight[ids]``, on the grid fitted to the table."""
        return self.grid_for(weight).fake_quantize_rows(rows, ids, weight.shape[0])

    def encode(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """``codes``: the b-bit codes shifted to 0 … 2^b - 1 and bit-packed (``qlib.core.packing``); ``scale``,
        ``shift`` [G]: the grid."""
        grid = self.grid_for(weight.detach())
        codes = grid.quantize(weight.detach()).to(torch.int16) - grid.qmin
        return {"codes": pack(codes, self.bits), "scale": grid.scale.contiguous(),
                "shift": grid.shift.contiguous()}

    def decode(self, encoded: Mapping[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """``Δ·q + b`` of the unpacked codes, shape ``shape``: exactly ``fake_quantize``'s values."""
        missing = sorted({"codes", "scale", "shift"} - set(encoded))
        if missing:
            raise ValueError(f"a uniform grid's encoding needs codes, scale and shift; missing {missing}")
        grid = QuantGrid(encoded["scale"], encoded["shift"], self.bits, self.symmetric)
        codes = unpack(encoded["codes"], self.bits, int(torch.Size(shape).numel()))
        return grid.dequantize((codes.to(torch.int16) + grid.qmin).reshape(tuple(shape)))

    def describe(self, weight: torch.Tensor) -> dict[str, Any]:
        """Bits, scheme, granularity, the number of groups G it gives ``weight``, and the clip percentile."""
        return {"bits": self.bits, "scheme": self.scheme, "granularity": self.granularity,
                "groups": self.num_groups(weight), "percentile": self.percentile}


def fake_quantize(
    x: torch.Tensor,
    bits: int,
    scheme: Scheme = "symmetric",
    granularity: Granularity = "tensor",
    groups: int | None = None,
    percentile: float | None = None,
) -> torch.Tensor:
    """Fake quantization of ``x`` on a grid fitted to its own range, ``x̂ = Δ·clamp(round((x - b)/Δ), qmin, qmax) + b``
    (Q8BERT eq. 1 for ``symmetric``, Q-BERT eq. 3 for ``asymmetric``), with the straight-through estimator's gradient.

    Args:
        x: the tensor to quantize.
        bits: b in 2..8.
        scheme: ``symmetric`` (Δ = max|x| / (2^(b-1) - 1), b = 0) or ``asymmetric`` (Δ = (max - min) / (2^b - 1),
            b = min).
        granularity: one range per ``tensor``, per row (``channel``) or per ``group`` of rows.
        groups: G for ``granularity="group"``.
        percentile: clip each range to its [100 - p, p] percentiles.

    Returns:
        x̂, the dequantized values, same shape and dtype as ``x``.
    """
    return QuantSpec(bits, scheme, granularity, groups, percentile).grid_for(x).fake_quantize(x)
