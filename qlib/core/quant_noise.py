"""Quant-Noise (Fan et al. 2021): quantize only a random subset of weight blocks at each training step.

    W̃ = W + M ⊙ (Q(W) - W),   M ~ Bernoulli(p), one draw per block of ``block_size`` consecutive inputs

so a fraction p of the blocks sees the quantized weights and the rest trains in full precision; at inference every
block is quantized (p = 1). ``pq_noise`` is the same noise with product quantization as Q. The parameter itself is
never overwritten (unlike the masking hook of fairseq's ``quant_noise``), and the gradient is explicit: 1 on the float
blocks, the straight-through estimator's clip mask on the quantized ones. Shapes: ``weight``, ``quantized`` [out, in];
``in`` divisible by ``block_size``."""

from __future__ import annotations

import torch

from qlib.core.product_quantization import assign, blocks_of


def quant_noise(weight: torch.Tensor, quantized: torch.Tensor, p: float, block_size: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The noisy weight ``W̃ = W + M ⊙ (Q(W) - W)``: each block of ``block_size`` consecutive inputs of a row is taken
    from ``quantized`` with probability ``p`` (Quant-Noise, Fan et al. 2021, eq. 3), else from ``weight``.

    Args:
        weight: W, the float weight (the parameter; never written to).
        quantized: Q(W), with its own gradient rule (the STE's clip mask).
        p: the noise rate in [0, 1]: 1 is plain QAT, 0 plain float training.
        block_size: inputs per block; divides ``in``.
        generator: the random source of the block mask M.

    Returns:
        W̃; its gradient is 1 on the float blocks and Q's on the quantized ones.

    Shapes:
        weight, quantized [out, in] → [out, in].
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise rate p must be in [0, 1], got {p!r}")
    out_features, in_features = weight.shape
    if block_size < 1 or in_features % block_size:
        raise ValueError(f"block_size={block_size} must be a positive divisor of the {in_features} input features")
    blocks = torch.rand(out_features, in_features // block_size, generator=generator) < p
    mask = blocks.repeat_interleave(block_size, dim=1).to(weight.device)
    return torch.where(mask, quantized, weight)


def pq_noise(weight: torch.Tensor, codebook: torch.Tensor, p: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Quant-Noise for product quantization (Fan et al. 2021, eq. 3 with Q = PQ): each block b of d consecutive
    inputs of a row (d = the codebook's width) is replaced, with probability ``p``, by its current centroid
    ``c_a(b)``, a(b) = argmin_i ‖b - c_i‖², else kept in float; the straight-through estimator makes the gradient 1
    everywhere (∂W̃/∂W = 1). Only the chosen blocks are assigned, so the cost grows with p. fairseq's hook drops the
    chosen blocks instead (sets them to 0), which its README says worked as well as assigning them; this is the
    paper's definition.

    Args:
        weight: W, the float weight (never written to).
        codebook: the centroids c_1 … c_k the blocks are assigned to (held fixed here: no gradient reaches it).
        p: the noise rate in [0, 1].
        generator: the random source of the block mask.

    Returns:
        W̃, with the gradient of the identity.

    Shapes:
        weight [out, in], codebook [k, d] with d dividing ``in`` → [out, in].
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"noise rate p must be in [0, 1], got {p!r}")
    blocks = blocks_of(weight.detach(), codebook.shape[1])
    chosen = torch.nonzero(torch.rand(blocks.shape[0], generator=generator) < p).flatten().to(weight.device)
    noisy = blocks.clone()
    centroids = codebook.detach().to(noisy.dtype)
    noisy[chosen] = centroids[assign(blocks[chosen], centroids)]
    return noisy.reshape(weight.shape) + (weight - weight.detach())  # the value of W̃, the gradient of W
