"""The weight-quantizer seam: what modules, conversion, checkpoints and exports ask of a way to quantize a weight.

A weight quantizer is a frozen description (a config value, like ``QuantSpec``), not a module: it holds no
tensors and fits itself to the weight it is given at every call. Five operations make the contract:

* ``fake_quantize(W) -> Ŵ``: the weight the forward pass sees, differentiable with the quantizer's own gradient
  rule (the straight-through estimator for uniform grids, ∂Ŵ/∂W = 1 inside the clip range and 0 outside);
* ``fake_quantize_rows(W, rows, ids)``: the rows ``ids`` of ``fake_quantize(W)`` given ``rows = W[ids]``
  (an embedding lookup), without quantizing the rows nobody looked up;
* ``encode(W) -> {name: tensor}``: the tensors a checkpoint stores for W (packed codes and their grid, or a
  codebook and its indices);
* ``decode(tensors, shape) -> Ŵ``: the inverse of ``encode``, exact: ``decode(encode(W), W.shape)`` equals
  ``fake_quantize(W)`` in value;
* ``describe(W) -> dict``: what the quantizer is for W, as JSON-ready values that a checkpoint keeps and compares
  on load, so a file is refused by a model quantized otherwise.

``qlib.core.quantizers.QuantSpec`` (uniform grids) implements it; a new quantizer (a codebook, say) is one more class
with these five methods and its tests, and the modules, checkpoints and conversion take it unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class WeightQuantizer(Protocol):
    """A way to quantize one weight tensor; see the module docstring for the contract of each method."""

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """Ŵ, same shape as ``weight``, with the quantizer's gradient rule."""

    def fake_quantize_rows(self, weight: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` [...] of ``fake_quantize(weight)`` from ``rows`` = ``weight[ids]`` [..., d]."""

    def encode(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores for ``weight``, by name."""

    def decode(self, encoded: Mapping[str, torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """Ŵ of shape ``shape`` from ``encode``'s tensors; raises ``ValueError`` on tensors that do not fit."""

    def describe(self, weight: torch.Tensor) -> dict[str, Any]:
        """JSON-ready values that identify the quantizer applied to ``weight``."""


def check_weight_quantizer(value: object, where: str) -> None:
    """Refuse ``value`` unless it is None or implements ``WeightQuantizer``, naming ``where`` it was given."""
    if value is not None and not isinstance(value, WeightQuantizer):
        raise TypeError(f"{where} must be a weight quantizer (qlib.QuantSpec, or a class with fake_quantize, "
                        f"fake_quantize_rows, encode, decode and describe) or None; got {type(value).__name__}")
