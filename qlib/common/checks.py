"""Input validation shared by the quantizers: every error names the bad value and what is allowed."""

from __future__ import annotations

import torch

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: object, what: str = "bits") -> int:
    """Return ``bits`` if it is an integer in 2..8, else raise ``ValueError`` naming it."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r} ({type(bits).__name__})")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return bits


def check_tensor(x: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    """Reject non-tensors, empty tensors and integer tensors, which have no quantization range (NaN and Inf:
    ``check_finite``, which needs a pass over the values)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError(f"cannot quantize an empty {what} (shape {tuple(x.shape)}); it has no range")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_finite(x: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    """Reject a tensor holding NaN or Inf, naming how many of its values are."""
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{what} holds {bad} NaN/Inf value(s) of {x.numel()}; only finite values can be quantized")
    return x


def check_groups(groups: object, rows: int, shape: tuple[int, ...]) -> int:
    """Return ``groups`` if it is a positive integer dividing ``rows``, else raise naming the divisors."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if rows % groups:
        divisors = [d for d in range(1, rows + 1) if rows % d == 0]
        shown = divisors if len(divisors) <= 12 else divisors[:6] + ["..."] + divisors[-3:]
        raise ValueError(
            f"groups={groups} does not divide the {rows} rows of a tensor of shape {shape}; "
            f"allowed: a divisor of {rows} ({', '.join(map(str, shown))})"
        )
    return groups
