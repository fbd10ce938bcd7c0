"""Export for deployment: a trained fake-quantized BERT as an ONNX QDQ graph with its *learned* scales.

The ONNX "QDQ" format marks each int8 tensor by a ``QuantizeLinear → DequantizeLinear`` pair around float ops;
ONNX Runtime and OpenVINO fuse the pairs around a ``MatMul`` into an int8 GEMM. ``export_onnx`` writes the graph
of ``to_qdq(model)``, where every ``QuantLinear`` becomes a ``QDQLinear``:

    y = DQ(Q(clip(x, ±127·s_x), s_x)) · DQ(Q(Ŵ, s_w))ᵀ + b

with ``s_x`` the static input scale the QAT run learned (its EMA range), ``s_w`` the weight grid's scale per output
channel and ``Ŵ`` the weight already on that grid, so the graph computes what the fake-quantized model computes.
Two details keep it exact: Q8BERT's symmetric grid stops at code -127 while ONNX's int8 ``QuantizeLinear``
saturates at -128, hence the ``clip`` (an ONNX ``Clip`` before each input ``QuantizeLinear``); and ONNX rounds
``x / s`` where qlib rounds ``x · (1/s)``, which can differ by one code at an exact tie. Embedding tables go out as
``DQ(Q(Ê))`` before their ``Gather``.

Why torch's TorchScript ONNX exporter (``dynamo=False``): it maps ``torch.fake_quantize_per_tensor_affine`` and
``torch.fake_quantize_per_channel_affine`` onto QDQ pairs (opset ≥ 13), the route PyTorch documents for QAT
models; the dynamo exporter has no such mapping for them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qlib.atomic import atomic_write
from qlib.convert import quantized_modules
from qlib.int8 import check_exportable
from qlib.integer_modules import IntegerNonlinearity
from qlib.modules import QuantEmbedding, QuantLinear
from qlib.quantizers import QuantSpec

ONNX_INT8 = (-128, 127)  # the only signed range ONNX's QuantizeLinear has
SYMMETRIC_MAX_CODE = 127
OPSET = 17


def _per_channel(scale: torch.Tensor, rows: int) -> torch.Tensor:
    return scale.float().reshape(-1).repeat_interleave(rows // scale.numel()).contiguous()


class QDQLinear(nn.Module):
    """``y = fq(clip(x, ±127·s_x); s_x) · fq(Ŵ; s_w)ᵀ + b`` (fq: ``torch.fake_quantize_*``, exported as QDQ pairs).

    Shapes: x [..., in] → y [..., out]; Ŵ [out, in] (the weight on its grid), s_w [out], b [out], s_x a float.
    """

    def __init__(self, module: QuantLinear) -> None:
        super().__init__()
        self.x_scale = check_exportable(module)
        grid = module.weight_grid()
        weight = module.weight.detach()
        self.register_buffer("weight", grid.dequantize(grid.quantize(weight)))
        self.register_buffer("w_scale", _per_channel(grid.scale, module.out_features))
        self.register_buffer("w_zero_point", torch.zeros(module.out_features, dtype=torch.int32))
        self.register_buffer("bias", None if module.bias is None else module.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = SYMMETRIC_MAX_CODE * self.x_scale
        x = torch.fake_quantize_per_tensor_affine(x.clamp(-limit, limit), self.x_scale, 0, *ONNX_INT8)
        weight = torch.fake_quantize_per_channel_affine(self.weight, self.w_scale, self.w_zero_point, 0, *ONNX_INT8)
        return F.linear(x, weight, self.bias)


class QDQEmbedding(nn.Module):
    """``E[i] = fq(Ê; s)[i]``: the table on its grid (symmetric, per tensor or per row group), exported as a QDQ pair
    before the ``Gather``. Shapes: ids [...] → [..., dim]."""

    def __init__(self, module: QuantEmbedding) -> None:
        super().__init__()
        grid = module.weight_grid()
        if not (isinstance(module.spec, QuantSpec) and grid.symmetric and grid.bits == 8):
            raise ValueError(f"ONNX QDQ export needs 8-bit symmetric embedding tables, got {module.spec}")
        table = module.weight.detach()
        self.padding_idx = module.padding_idx
        self.register_buffer("weight", grid.dequantize(grid.quantize(table)))
        self.register_buffer("scale", _per_channel(grid.scale, module.num_embeddings))
        self.register_buffer("zero_point", torch.zeros(module.num_embeddings, dtype=torch.int32))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        table = torch.fake_quantize_per_channel_affine(self.weight, self.scale, self.zero_point, 0, *ONNX_INT8)
        return F.embedding(ids, table, self.padding_idx)


def to_qdq(model: nn.Module) -> nn.Module:
    """A copy of the trained (or calibrated) fake-quantized ``model`` in eval mode whose quantized layers are
    ``QDQLinear`` / ``QDQEmbedding``: the same function, written with the ops ONNX exports as QDQ pairs.

    Raises ``ValueError`` naming the layer and why for a setting with no int8 QDQ form (below 8 bits, asymmetric,
    group-wise, dynamic input ranges, a codebook, integer-only nonlinearities), and the observer's
    ``RuntimeError`` for a model never trained or calibrated.
    """
    layers = list(quantized_modules(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layer: convert it with qlib.convert_bert and "
                         "train or calibrate it first")
    if any(isinstance(m, IntegerNonlinearity) for m in model.modules()):
        raise ValueError("a model trained with integer nonlinearities (qlib.integer_modules) has no ONNX export yet: "
                         "ONNX has no integer GELU, softmax or LayerNorm to map them onto")
    for name, module in layers:
        try:
            if isinstance(module, QuantLinear):
                check_exportable(module)
        except ValueError as err:
            raise ValueError(f"layer {name}: {err}") from None
    model = copy.deepcopy(model).eval()
    for name, module in layers:
        new = QDQLinear(module) if isinstance(module, QuantLinear) else QDQEmbedding(module)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def export_onnx(model: nn.Module, path: str | Path, example: dict[str, torch.Tensor]) -> Path:
    """Write ``to_qdq(model)`` to ``path`` as an ONNX QDQ graph (opset 17), whole or not at all.

    Args:
        model: a converted BERT after QAT (or calibration), as ``qlib.convert_bert`` returns it.
        path: the ``.onnx`` file to write.
        example: one batch of the model's keyword inputs (``input_ids``, ``attention_mask``, ...); their batch
            and sequence axes are exported as dynamic.

    Returns:
        ``path``. Its outputs are named after the model output's fields (``logits``, ...).
    """
    if not example or not all(isinstance(v, torch.Tensor) and v.dim() == 2 for v in example.values()):
        raise ValueError(f"example must map input names to [batch, seq] tensors, got "
                         f"{ {k: getattr(v, 'shape', type(v).__name__) for k, v in example.items()} }")
    qdq = to_qdq(model)
    with torch.no_grad():
        output_names = list(qdq(**example).keys())
    axes = {name: {0: "batch", 1: "seq"} for name in example}

    def write(tmp: str) -> None:
        torch.onnx.export(qdq, (), tmp, kwargs=example, input_names=list(example), output_names=output_names,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)

    return atomic_write(path, write)
