"""Q-BERT's Hessian-aware sensitivity per layer, and the mixed-precision bit assignment it drives.

For each block (an encoder layer's weight matrices, or the word-embedding table) and each of K data subsets,
λ_i is the top Hessian eigenvalue of the loss restricted to the block; the block's sensitivity is
``Ω_i = |mean(λ_i)| + std(λ_i)`` (Q-BERT eq. 5; std over the K subsets, ddof = 0). More sensitive blocks get
more bits.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from qlib.bert.convert import find_bert
from qlib.common.checks import check_bits
from qlib.second_order.hessian import loss_surface, power_iteration


def layer_blocks(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{"embeddings": [word table], "encoder.layer.i": [its 6 weight matrices]} for a BERT model."""
    bert = find_bert(model)
    blocks = {"embeddings": [bert.embeddings.word_embeddings.weight]}
    for i, layer in enumerate(bert.encoder.layer):
        blocks[f"encoder.layer.{i}"] = [m.weight for m in layer.modules() if isinstance(m, nn.Linear)]
    return blocks


def layer_spectrum(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], blocks: Sequence[str] | None = None,
                   max_iter: int = 50, tol: float = 1e-4, smallest_subsets: int = 0, seed: int = 0,
                   measured: Mapping[tuple[int, str], dict[str, object]] | None = None,
                   on_record: Callable[[dict[str, object]], object] | None = None) -> list[dict[str, object]]:
    """Q-BERT's per-block Hessian spectrum (sec. 3.2): the top eigenvalue λ_i of each block's Hessian on each data
    subset, by power iteration on that block's parameters only.

    Args:
        model: a BERT with eager attention (double backward through SDPA is not implemented on CPU).
        batches: one batch per data subset, with labels.
        blocks: block names (``layer_blocks``; default all: the embedding and each encoder layer).
        max_iter, tol: the power iteration's stopping rule.
        smallest_subsets: on the first this many subsets, also the smallest eigenvalue (the saddle check: the top
            one if it is negative, else power iteration on H - λ_top·I).
        seed: the start vectors' seed.
        measured: records measured before, by (subset, block) (a resumed caller's): returned as they are, not
            measured again (each measurement depends only on its subset, block and ``seed``).
        on_record: called with each record as it is measured (a caller that keeps them, to resume from).

    Returns:
        One record per (subset, block): ``block``, ``subset``, ``top``, iterations, ``converged``, seconds, and
        ``smallest`` / ``smallest_converged`` where measured.
    """
    all_blocks = layer_blocks(model)
    names = list(blocks) if blocks is not None else list(all_blocks)
    unknown = [n for n in names if n not in all_blocks]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; allowed: {list(all_blocks)}")
    model.eval()  # no dropout: the loss must be a fixed function of the weights
    records, measured = [], measured or {}
    for subset, batch in enumerate(batches):
        for name in names:
            if (subset, name) in measured:
                records.append(measured[(subset, name)])
                continue
            params = all_blocks[name]
            start = time.perf_counter()
            top = power_iteration(lambda: model(**batch).loss, params, max_iter=max_iter, tol=tol, seed=seed)[0]
            record = {"subset": subset, "block": name, "top": top.eigenvalue, "iterations": top.iterations,
                      "converged": top.converged}
            smallest = subset < smallest_subsets
            if smallest and top.eigenvalue < 0:  # the dominant eigenvalue is already the most negative one
                record |= {"smallest": top.eigenvalue, "smallest_converged": top.converged}
            elif smallest:
                low = power_iteration(lambda: model(**batch).loss, params, max_iter=max_iter, tol=tol,
                                      shift=top.eigenvalue, seed=seed)[0]
                record |= {"smallest": low.eigenvalue, "smallest_converged": low.converged}
            record["seconds"] = time.perf_counter() - start
            records.append(record)
            if on_record is not None:
                on_record(record)
    return records


def block_landscape(model: nn.Module, batch: dict[str, torch.Tensor], block: str, alphas: Sequence[float],
                    max_iter: int = 50, tol: float = 1e-4, seed: int = 0) -> dict[str, object]:
    """Q-BERT fig. 2 for one block: loss(W + a·v1 + b·v2) on ``batch`` for (a, b) in ``alphas`` × ``alphas``, v1 and v2
    the block's top two Hessian eigenvectors (unit norm over the block). Returns alphas, the two eigenvalues, their
    convergence, and the losses as a [len(alphas)][len(alphas)] list (row a, column b)."""
    all_blocks = layer_blocks(model)
    if block not in all_blocks:
        raise ValueError(f"unknown block {block!r}; allowed: {list(all_blocks)}")
    model.eval()
    params = all_blocks[block]
    pairs = power_iteration(lambda: model(**batch).loss, params, top_k=2, max_iter=max_iter, tol=tol, seed=seed)
    surface = loss_surface(lambda: model(**batch).loss, params, (pairs[0].eigenvector, pairs[1].eigenvector), alphas)
    return {"alphas": [float(a) for a in alphas], "eigenvalues": [p.eigenvalue for p in pairs],
            "converged": [p.converged for p in pairs], "loss": surface.tolist()}


def omega(eigenvalues: Sequence[float]) -> float:
    """Q-BERT's sensitivity ``Ω = |mean(λ)| + std(λ)`` over the K subsets' top eigenvalues."""
    values = np.asarray(eigenvalues, dtype=float)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"need finite eigenvalues from at least one subset, got {list(values)}")
    return float(abs(values.mean()) + values.std())


def negative_curvature(top: Sequence[float], smallest: float | None = None,
                       noise: float = 1e-3) -> dict[str, int | bool]:
    """The saddle check for one block: with ``ε = noise·|mean(λ_top)|`` (below it an eigenvalue is the power iteration's
    numerical noise), how many of the K subsets' dominant eigenvalues ``top`` are below -ε, and whether any of them
    or the ``smallest`` eigenvalue is, i.e. the weights are not at a minimum of some subset's loss. Each estimate is a
    Rayleigh quotient vᵀHv of a unit v, an upper bound on λ_min: a negative one counts whether or not its power
    iteration converged."""
    eps = noise * abs(float(np.mean(top)))
    negative_subsets = sum(t < -eps for t in top)
    return {"negative_top_subsets": negative_subsets,
            "negative_curvature": negative_subsets > 0 or (smallest is not None and smallest < -eps)}


def assign_bits(sensitivity: Mapping[str, float], choices: Sequence[int], target_bits: float) -> dict[str, int]:
    """Mixed precision from sensitivity (Q-BERT sec. 3.2): every layer starts at the lowest of ``choices``; the most
    sensitive layers are raised one choice at a time while the average bits (layers weighted equally, as BERT's
    encoder layers are the same size) stays within ``target_bits``. E.g. choices (2, 3), target 2.5: the most
    sensitive half gets 3 bits.

    Args:
        sensitivity: layer name → Ω (larger: more sensitive).
        choices: the bit widths allowed, each in 2..8.
        target_bits: the average bits to stay within, between the smallest and the largest choice.

    Returns:
        layer name → its bits.
    """
    levels = sorted({check_bits(b, "bits in choices") for b in choices})
    if not sensitivity:
        raise ValueError("no layers to assign bits to")
    if not levels[0] <= target_bits <= levels[-1]:
        raise ValueError(f"target of {target_bits} average bits cannot be met with choices {levels}: "
                         f"allowed {levels[0]}..{levels[-1]}")
    bits = {name: levels[0] for name in sensitivity}
    budget = target_bits * len(bits)
    for level in levels[1:]:
        for name in sorted(sensitivity, key=sensitivity.get, reverse=True):
            if bits[name] < level and sum(bits.values()) - bits[name] + level <= budget + 1e-9:
                bits[name] = level
    return bits
