"""Integer-only GELU, softmax and LayerNorm, after I-BERT (Kim et al. 2021): the kernels on integer tensors.

Each function takes integer codes ``q`` (int64) of a real tensor ``x ≈ S·q`` with a float scale ``S`` and returns
integer codes and their scale; the only float arithmetic is on scalar constants (``floor(b / S)``…), which an
integer-only engine folds in ahead of time. Every step on tensors is an integer add, multiply, floor division,
shift, clamp or comparison.

* ``i_poly``: a second-order polynomial ``a(x + b)² + c`` as ``q_out = (q + ⌊b/S⌋)² + ⌊c / (aS²)⌋``, ``S_out = aS²``.
* ``i_erf`` / ``i_gelu`` (I-BERT Alg. 2): ``erf(x) ≈ L(x) = sgn(x)·[a(min(|x|, -b) + b)² + 1]`` with ``a = -0.2888``,
  ``b = -1.769``; ``GELU(x) = x·½·[1 + L(x/√2)]``.
* ``i_exp`` / ``i_softmax`` (I-BERT Alg. 3): ``x = -ln2·z + p`` with integer ``z ≥ 0`` and ``p ∈ (-ln2, 0]``;
  ``exp(p) ≈ 0.35815147·p² + 0.96963238·p + 1``; ``exp(x) = exp(p) >> z``.
* ``i_sqrt`` (I-BERT Alg. 4): ``⌊√n⌋`` by Newton's iteration on integers; ``i_layernorm`` divides by it.

Precision follows the input's: the codes should carry 16 bits or more (as the int32 accumulators feeding these
operations in I-BERT do); ``tests/test_integer_ops.py`` bounds each function's error against its float original.
"""

from __future__ import annotations

import math

import torch

ERF_A, ERF_B = -0.2888, -1.769
EXP_COEFFICIENTS = (0.35815147, 0.96963238, 1.0)  # exp(p) ≈ c0·p² + c1·p + c2 on (-ln2, 0]
EXP_SHIFT_LIMIT = 30  # exp(x) for x < -30·ln2 is 0 in these codes


def _check_codes(q: torch.Tensor, scale: float) -> None:
    if q.dtype != torch.int64:
        raise TypeError(f"integer kernels take int64 codes, got {q.dtype}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")


def i_poly(q: torch.Tensor, scale: float, a: float, b: float, c: float) -> tuple[torch.Tensor, float]:
    """``a(x + b)² + c`` in integers (I-BERT Alg. 1).

    Args:
        q: codes of x (int64), x = ``scale``·q.
        scale: S > 0.
        a, b, c: the polynomial's coefficients (a ≠ 0).

    Returns:
        (codes, scale) of the polynomial: ``(q + ⌊b/S⌋)² + ⌊c / (aS²)⌋`` and ``aS²`` (negative when a is).

    Shapes:
        q [...] → [...].
    """
    _check_codes(q, scale)
    q_b = math.floor(b / scale)
    q_c = math.floor(c / (a * scale**2))
    shifted = q + q_b
    return shifted.mul_(shifted).add_(q_c), a * scale**2


def i_erf(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """I-BERT's ``L(x) = sgn(x)·[a(min(|x|, -b) + b)² + 1]`` ≈ erf(x) in integers (codes, scale)."""
    _check_codes(q, scale)
    clipped = q.abs().clamp_(max=math.floor(-ERF_B / scale))
    q_l, s_l = i_poly(clipped, scale, ERF_A, ERF_B, 1.0)
    return q_l.mul_(torch.sign(q)), s_l


def i_gelu(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """``GELU(x) = x·½·[1 + erf(x/√2)]`` with ``i_erf`` (I-BERT Alg. 2).

    Args:
        q: codes of x (int64), x = ``scale``·q.
        scale: S > 0.

    Returns:
        (codes, scale) of GELU(x).

    Shapes:
        q [...] → [...].
    """
    q_erf, s_erf = i_erf(q, scale / math.sqrt(2.0))
    q_one = math.floor(1.0 / s_erf)
    return q_erf.add_(q_one).mul_(q), scale * s_erf / 2.0


def i_exp(q: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """``exp(x)`` for x ≤ 0 in integers (I-BERT Alg. 3): ``x = -ln2·z + p``, the polynomial on p, shifted right by z.

    Args:
        q: codes of x ≤ 0 (int64), x = ``scale``·q.
        scale: S > 0.

    Returns:
        (codes, scale) of exp(x): non-negative codes.

    Shapes:
        q [...] → [...].
    """
    _check_codes(q, scale)
    if (q > 0).any():
        raise ValueError("i_exp takes x <= 0 (softmax subtracts the row maximum first)")
    q_ln2 = math.floor(-math.log(2.0) / scale)  # negative
    q = torch.clamp(q, min=EXP_SHIFT_LIMIT * q_ln2)
    z = torch.div(q, q_ln2, rounding_mode="floor")
    p = torch.sub(q, z, alpha=q_ln2)  # q - z·⌊-ln2/S⌋
    c0, c1, c2 = EXP_COEFFICIENTS
    q_l, s_l = i_poly(p, scale, c0, c1 / (2 * c0), c2 - c1**2 / (4 * c0))
    return q_l.bitwise_right_shift_(z), s_l


def i_softmax(q: torch.Tensor, scale: float, dim: int = -1, out_bits: int = 8,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Softmax in integers: ``i_exp`` of x - max(x), normalized by an integer division to ``out_bits`` bits.

    Args:
        q: codes of the scores (int64), x = ``scale``·q.
        scale: S > 0.
        dim: the dimension softmax normalizes over.
        out_bits: the output's bits: probabilities are codes in [0, 2^out_bits], scale 2^-out_bits.
        mask: True where a score is masked out (its probability is exactly 0); None: nothing masked.

    Returns:
        (codes, 2^-out_bits).

    Shapes:
        q [...], mask broadcastable to q → [...].
    """
    _check_codes(q, scale)
    if mask is not None:
        q = q.masked_fill(mask, torch.iinfo(torch.int64).min // 4)
    shifted = q - q.amax(dim=dim, keepdim=True)
    q_exp, _ = i_exp(shifted.clamp_(min=EXP_SHIFT_LIMIT * math.floor(-math.log(2.0) / scale)), scale)
    if mask is not None:
        q_exp.masked_fill_(mask, 0)
    total = q_exp.sum(dim=dim, keepdim=True).clamp_(min=1)
    return q_exp.bitwise_left_shift_(out_bits).div_(total, rounding_mode="floor"), 2.0**-out_bits


def i_sqrt(n: torch.Tensor) -> torch.Tensor:
    """``⌊√n⌋`` for non-negative int64 ``n`` by Newton's iteration on integers (I-BERT Alg. 4), element-wise.

    Starts above the root at ``2^⌈bits(n)/2⌉`` (the bit length by a binary search over shifts) and iterates
    ``x ← ⌊(x + ⌊n/x⌋)/2⌋`` while it decreases.

    Shapes:
        n [...] → [...].
    """
    if n.dtype != torch.int64:
        raise TypeError(f"i_sqrt takes int64, got {n.dtype}")
    if (n < 0).any():
        raise ValueError("i_sqrt takes non-negative integers")
    zero = n == 0
    n = torch.where(zero, torch.ones_like(n), n)  # ⌊√0⌋ = 0 is set at the end; Newton needs n ≥ 1
    bits, rest = torch.ones_like(n), n
    for shift in (32, 16, 8, 4, 2, 1):  # the bit length of each element (n < 2^63): 1 + ⌊log2 n⌋
        above = rest >= (1 << shift)
        rest = torch.where(above, torch.bitwise_right_shift(rest, shift), rest)
        bits += above * shift
    x = torch.bitwise_left_shift(torch.ones_like(n), torch.div(bits + 1, 2, rounding_mode="floor"))
    for _ in range(64):
        y = torch.div(x + torch.div(n, x, rounding_mode="floor"), 2, rounding_mode="floor")
        smaller = y < x
        if not smaller.any():
            break
        x = torch.where(smaller, y, x)
    return torch.where(zero, torch.zeros_like(x), x)


LAYERNORM_SHIFT = 30


def i_layernorm(q: torch.Tensor, scale: float, dim: int = -1) -> tuple[torch.Tensor, float]:
    """``(x - mean(x)) / std(x)`` over ``dim`` in integers (I-BERT sec. 3.5), before LayerNorm's weight and bias.

    The mean and variance are integer divisions, the standard deviation ``i_sqrt`` of the variance (in units of
    the input's scale, which cancels), and the division a multiplication by ``⌊2^31 / std⌋`` then a shift.

    Args:
        q: codes of x (int64), x = ``scale``·q; 16 bits or more of precision keep the error small.
        scale: S > 0 (it cancels out; the output scale is 2^-30).
        dim: the normalized dimension.

    Returns:
        (codes, 2^-30) of the normalized x.

    Shapes:
        q [..., d] → [..., d].
    """
    _check_codes(q, scale)
    n = q.shape[dim]
    centered = q - torch.div(q.sum(dim=dim, keepdim=True), n, rounding_mode="floor")
    variance = torch.div((centered * centered).sum(dim=dim, keepdim=True), n, rounding_mode="floor")
    std = i_sqrt(variance).clamp(min=1)
    factor = torch.div(torch.full_like(std, 1 << (LAYERNORM_SHIFT + 1)), std, rounding_mode="floor")
    return centered.mul_(factor).bitwise_right_shift_(1), 2.0**-LAYERNORM_SHIFT
