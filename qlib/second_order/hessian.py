"""Hessian eigenvalues of a loss restricted to a block of parameters, by power iteration (after PyHessian).

Everything is a list of tensors shaped like the block's parameters. The Hessian is never formed: with the
gradient ``g = ∂L/∂W`` kept differentiable, one more backward gives the Hessian-vector product

    ∂(gᵀv)/∂W = H v,

at about the cost of two gradients. Note: double backward through PyTorch's SDPA attention is not implemented
on CPU; load models with ``attn_implementation="eager"`` for this (``qlib.experiments.models.load_classifier``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

Vectors = list[torch.Tensor]


def dot(a: Vectors, b: Vectors) -> torch.Tensor:
    """Σ_i ⟨a_i, b_i⟩ over a list of tensors."""
    return sum((x * y).sum() for x, y in zip(a, b))


def normalize(v: Vectors) -> Vectors:
    """v / ‖v‖ (the norm over the whole list)."""
    norm = math.sqrt(float(dot(v, v)))
    return [x / (norm + 1e-12) for x in v]


def orthogonalize(v: Vectors, basis: Sequence[Vectors]) -> Vectors:
    """v minus its projections on orthonormal ``basis`` vectors (Gram–Schmidt)."""
    for u in basis:
        coefficient = dot(v, u)
        v = [x - coefficient * y for x, y in zip(v, u)]
    return v


def hessian_vector_product(grads: Vectors, params: Vectors, v: Vectors) -> Vectors:
    """The Hessian-vector product by double backpropagation (Pearlmutter 1994): ``H v = ∂(gᵀv)/∂W``.

    Args:
        grads: g = ∂L/∂W, computed with ``create_graph=True``.
        params: W, the tensors the gradient was taken for.
        v: the direction, one tensor per parameter.

    Returns:
        H v, one tensor per parameter.

    Shapes:
        each of ``grads``, ``v`` and the result has its parameter's shape.
    """
    return list(torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True))


@dataclass
class Eigenpair:
    """An eigenvalue estimate, its eigenvector, and whether power iteration met its tolerance."""

    eigenvalue: float
    eigenvector: Vectors = field(repr=False)
    iterations: int
    converged: bool
    history: list[float] = field(default_factory=list, repr=False)


def power_iteration(loss_fn: Callable[[], torch.Tensor], params: Vectors, top_k: int = 1, max_iter: int = 100,
                    tol: float = 1e-4, shift: float = 0.0, seed: int = 0) -> list[Eigenpair]:
    """The ``top_k`` dominant (largest in magnitude) eigenpairs of H - shift·I, H the Hessian of ``loss_fn()``
    w.r.t. ``params``.

    Iterates v ← (H - shift·I) v / ‖·‖, deflating earlier eigenvectors, until the Rayleigh quotient's relative
    change is below ``tol`` (Q-BERT's authors stop at 1e-4) or ``max_iter`` is reached; a pair that did not
    converge is returned with ``converged=False`` and a warning, never silently. Returned eigenvalues are of H
    (the shift added back). With ``shift`` = λ_max > 0, the result is H's smallest eigenvalue (negative: a saddle).

    Args:
        loss_fn: computes the loss L (called once; its graph is kept for the products).
        params: W, the block of parameters whose Hessian is iterated.
        top_k: how many eigenpairs, each deflated against the earlier ones.
        max_iter: iterations per eigenpair at most.
        tol: relative change of the eigenvalue estimate that ends an iteration.
        shift: iterate on H - shift·I.
        seed: the random start vector's seed.

    Returns:
        ``Eigenpair`` s (eigenvalue of H, unit eigenvector as one tensor per parameter, iterations, converged), the
        largest in magnitude first.
    """
    if top_k < 1 or max_iter < 1 or tol <= 0:
        raise ValueError(f"need top_k >= 1, max_iter >= 1, tol > 0; got {top_k}, {max_iter}, {tol}")
    grads = list(torch.autograd.grad(loss_fn(), params, create_graph=True))
    generator = torch.Generator().manual_seed(seed)
    pairs: list[Eigenpair] = []
    for _ in range(top_k):
        basis = [p.eigenvector for p in pairs]
        v = normalize(orthogonalize([torch.randn(p.shape, generator=generator).to(p) for p in params], basis))
        eigenvalue, history, converged = None, [], False
        for _ in range(max_iter):
            hv = hessian_vector_product(grads, params, v)
            hv = [h - shift * x for h, x in zip(hv, v)]
            new = float(dot(hv, v))
            history.append(new + shift)
            v = normalize(orthogonalize([h.detach() for h in hv], basis))
            if eigenvalue is not None and abs(new - eigenvalue) <= tol * (abs(eigenvalue) + 1e-12):
                eigenvalue, converged = new, True
                break
            eigenvalue = new
        if not converged:
            warnings.warn(f"power iteration did not converge in {max_iter} iterations (relative tol {tol}); "
                          f"last estimates {history[-3:]}", RuntimeWarning, stacklevel=2)
        pairs.append(Eigenpair(eigenvalue + shift, v, len(history), converged, history))
    return pairs


@torch.no_grad()
def loss_surface(loss_fn: Callable[[], torch.Tensor], params: Vectors, directions: tuple[Vectors, Vectors],
                 alphas: Sequence[float]) -> torch.Tensor:
    """Loss at W + a·d1 + b·d2 for every (a, b) in ``alphas`` × ``alphas`` (Q-BERT fig. 2): [len(alphas)]².

    ``params`` are restored exactly afterwards.
    """
    original = [p.detach().clone() for p in params]
    d1, d2 = directions
    surface = torch.empty(len(alphas), len(alphas))
    try:
        for i, a in enumerate(alphas):
            for j, b in enumerate(alphas):
                for p, w, x, y in zip(params, original, d1, d2):
                    p.copy_(w + a * x + b * y)
                surface[i, j] = loss_fn().item()
    finally:
        for p, w in zip(params, original):
            p.copy_(w)
    return surface
