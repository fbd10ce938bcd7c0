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
``DQ(Q(Ê))`` before their ``Gather``. After export, every ``QuantizeLinear`` of a constant (the weights and tables)
is folded into an int8 initializer, so the file stores int8 codes (a quarter of the float bytes) and the engines see
``DQ(int8 weight)``, the pattern their int8 GEMM fusions look for.

Why torch's TorchScript ONNX exporter (``dynamo=False``): it maps ``torch.fake_quantize_per_tensor_affine`` and
``torch.fake_quantize_per_channel_affine`` onto QDQ pairs (opset ≥ 13), the route PyTorch documents for QAT
models; the dynamo exporter has no such mapping for them.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from qlib.bert.convert import find_bert, quantized_modules
from qlib.bert.integer_modules import IntegerNonlinearity
from qlib.bert.modules import QuantEmbedding, QuantLinear
from qlib.bert.pq_modules import PQEmbedding, PQLinear
from qlib.common.atomic import atomic_write
from qlib.core.quantizers import QuantSpec
from qlib.deploy.int8 import Int8SelfAttention, check_exportable

if TYPE_CHECKING:  # onnx comes with the bench and test extras, imported where a graph is written
    import onnx

ONNX_INT8 = (-128, 127)  # the only signed range ONNX's QuantizeLinear has
SYMMETRIC_MAX_CODE = 127
OPSET = 17


def _per_channel(scale: torch.Tensor, rows: int) -> torch.Tensor:
    return scale.float().reshape(-1).repeat_interleave(rows // scale.numel()).contiguous()


class QDQLinear(nn.Module):
    """``y = fq(clip(x, ±127·s_x); s_x) · fq(Ŵᵀ; s_w) + b`` (fq: ``torch.fake_quantize_*``, exported as QDQ pairs).

    The weight is kept transposed, Ŵᵀ [in, out] with its scales along axis 1, so that the exported
    ``DequantizeLinear`` feeds the ``MatMul`` directly: ONNX Runtime fuses that pattern into an int8 GEMM, and does
    not fuse one with a ``Transpose`` in between (it would dequantize the weight at every call).

    Shapes: x [..., in] → y [..., out]; Ŵ [out, in] (the weight on its grid), s_w [out], b [out], s_x a float.
    """

    def __init__(self, *modules: QuantLinear) -> None:
        """One ``MatMul`` for Linears that read one input with one learned scale (Q, K, V): weights stacked along
        the output, each keeping its own scales; a single module is the plain case."""
        super().__init__()
        scales = {check_exportable(m) for m in modules}
        if len(scales) != 1:
            raise ValueError(f"Linears fused into one MatMul must share their input scale, got {sorted(scales)}")
        self.x_scale = scales.pop()
        grids = [m.weight_grid() for m in modules]
        weights = [g.dequantize(g.quantize(m.weight.detach())) for g, m in zip(grids, modules)]
        self.register_buffer("weight_t", torch.cat(weights).T.contiguous())
        self.register_buffer("w_scale", torch.cat([_per_channel(g.scale, m.out_features)
                                                   for g, m in zip(grids, modules)]))
        self.register_buffer("w_zero_point", torch.zeros(self.weight_t.shape[1], dtype=torch.int32))
        biases = [m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_features) for m in modules]
        self.register_buffer("bias", None if all(m.bias is None for m in modules) else torch.cat(biases))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = SYMMETRIC_MAX_CODE * self.x_scale
        x = torch.fake_quantize_per_tensor_affine(x.clamp(-limit, limit), self.x_scale, 0, *ONNX_INT8)
        weight_t = torch.fake_quantize_per_channel_affine(self.weight_t, self.w_scale, self.w_zero_point, 1,
                                                          *ONNX_INT8)
        y = torch.matmul(x, weight_t)
        return y if self.bias is None else y + self.bias


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
        raise ValueError("a model trained with integer nonlinearities (qlib.bert.integer_modules) has no ONNX export "
                         "yet: ONNX has no integer GELU, softmax or LayerNorm to map them onto")
    for name, module in layers:
        if isinstance(module, (PQLinear, PQEmbedding)):
            raise ValueError(f"layer {name} is product-quantized (iPQ): ONNX has no codebook lookup to run it as int8")
        try:
            if isinstance(module, QuantLinear):
                check_exportable(module)
        except ValueError as err:
            raise ValueError(f"layer {name}: {err}") from None
    model = copy.deepcopy(model).eval()
    for layer in find_bert(model).encoder.layer:
        attention = layer.attention.self
        if len({check_exportable(p) for p in (attention.query, attention.key, attention.value)}) == 1:
            # one QDQ pair for Q, K and V: ONNX Runtime's optimizer would merge three identical pairs into one
            # feeding three MatMuls, and then fuse none of them
            layer.attention.self = Int8SelfAttention(attention, qkv=QDQLinear(attention.query, attention.key,
                                                                              attention.value))
    for name, module in list(quantized_modules(model)):
        new = QDQLinear(module) if isinstance(module, QuantLinear) else QDQEmbedding(module)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def fold_constant_quantization(graph: onnx.GraphProto) -> int:
    """Replace each ``QuantizeLinear`` whose input is an initializer by an int8 initializer holding its result
    (``saturate(round(w / s) + z)``, ONNX's rule, per tensor or along the node's ``axis``), in place; float
    initializers nothing else reads are dropped. Returns how many were folded."""
    import numpy as np
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:  # Constant nodes, and the Identity nodes the exporter puts on shared initializers
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in constants:
            constants[n.output[0]] = constants[n.input[0]]
    folded = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(name in constants for name in node.input[:3]):
            continue
        weight, scale, zero = (constants[name] for name in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[axis] = -1
        codes = np.round(weight / scale.reshape(shape)) + zero.reshape(shape).astype(np.int32)
        info = np.iinfo(zero.dtype)
        graph.initializer.append(numpy_helper.from_array(np.clip(codes, info.min, info.max).astype(zero.dtype),
                                                         node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    read = {name for n in graph.node for name in n.input}
    for tensor in [t for t in graph.initializer if t.name not in read and t.name in
                   {n.input[0] for n in folded}]:
        graph.initializer.remove(tensor)
    return len(folded)


def in_forward_order(model: nn.Module, example: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``example`` reordered as ``model.forward`` declares its parameters. ``torch.onnx.export`` lays the graph's
    inputs out in that order whatever the order of its ``kwargs``, so ``input_names`` must follow it: a tokenizer's
    order (``input_ids, token_type_ids, attention_mask``) would otherwise name BERT's mask input ``token_type_ids``,
    and an engine fed by name would read the segment ids as the attention mask.

    Raises:
        ValueError: an input that is not a parameter of ``model.forward``, naming it and the allowed ones.
    """
    parameters = list(inspect.signature(model.forward).parameters)
    unknown = sorted(set(example) - set(parameters))
    if unknown:
        raise ValueError(f"example inputs {unknown} are not parameters of {type(model).__name__}.forward; "
                         f"allowed: {parameters}")
    return {name: example[name] for name in parameters if name in example}


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
    example = in_forward_order(qdq, example)
    with torch.no_grad():
        output_names = list(qdq(**example).keys())
    axes = {name: {0: "batch", 1: "seq"} for name in example}

    def write(tmp: str) -> None:
        torch.onnx.export(qdq, (), tmp, kwargs=example, input_names=list(example), output_names=output_names,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        import onnx

        graph = onnx.load(tmp)
        fold_constant_quantization(graph.graph)
        onnx.save(graph, tmp)

    return atomic_write(path, write)
