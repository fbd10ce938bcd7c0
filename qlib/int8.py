"""Real int8 inference on x86 CPUs: a fake-quantized model exported to oneDNN's int8 GEMM kernels.

``to_int8(model)`` swaps every ``QuantLinear`` for an ``Int8Linear`` (int8 weights packed once, the input
quantized to uint8 with the *learned* static scale, int32 accumulation, float output with the bias added) and
every ``QuantEmbedding`` for an ``Int8Embedding`` (an int8 table, rows dequantized after the lookup). Softmax,
LayerNorm, GELU and the attention products stay in float.

Why this route: ``torch.ops.onednn.qlinear_pointwise`` is the kernel PyTorch's own maintained x86 int8 path
(PT2E quantization with the X86 Inductor quantizer) lowers to; it takes plain uint8/int8 tensors, so nothing
here uses the deprecated ``torch.ao`` eager modules or quantized tensor dtypes, and it is faster than
``torch.ao``'s dynamic quantization because activation ranges are not scanned at every call.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from qlib.convert import quantized_modules
from qlib.modules import QuantEmbedding, QuantLinear
from qlib.observers import DynamicObserver

UINT8_ZERO_POINT = 128  # Q8BERT's symmetric int8 input codes -127..127 shifted into oneDNN's uint8 input


def cpu_has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI or AVX-VNNI (read from /proc/cpuinfo; False where it can't be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def check_int8_engine() -> None:
    """Raise ``RuntimeError`` unless oneDNN's int8 kernels can run full 8-bit weights exactly on this CPU.

    Without VNNI, x86 int8 GEMMs multiply u8·s8 pairs into *saturating* int16 sums (``vpmaddubsw``): with 8-bit
    weights the results are wrong (measured here: errors of 3·10^4 on a 64-term dot product), which is why
    ``torch.ao`` falls back to 7-bit ranges there. qlib refuses rather than return wrong numbers.
    """
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise RuntimeError("this PyTorch build has no oneDNN int8 kernels (torch.ops.onednn.qlinear_pointwise); "
                           "qlib's int8 path needs an x86-64 CPU build of PyTorch")
    if not cpu_has_vnni():
        raise RuntimeError("this CPU has no AVX-512 VNNI or AVX-VNNI: its int8 kernels saturate with full 8-bit "
                           "weights, so qlib's int8 export is refused here; run it on a VNNI CPU (Intel Cascade "
                           "Lake or newer, AMD Zen 4 or newer)")


def check_exportable(module: QuantLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The static input range of ``module``, if it can run on int8 kernels; else a ``ValueError`` saying why
    (or the observer's ``RuntimeError`` when the model was never trained or calibrated)."""
    spec, act = module.quant.weight, module.quant.activation
    if spec is None or act is None or spec.bits != 8 or act.bits != 8 or not spec.symmetric or not act.symmetric:
        raise ValueError(f"int8 export needs 8-bit symmetric weights and inputs, got weight={spec}, input={act}")
    if spec.granularity == "group":
        raise ValueError("int8 export supports per-tensor and per-channel weights, not group-wise ones")
    if isinstance(module.input_observer, DynamicObserver):
        raise ValueError("int8 export uses static input scales: this layer's ranges are dynamic (per batch)")
    return module.input_observer.stored_range()


class Int8Linear(nn.Module):
    """``y = s_x·s_w·(q_x · q_wᵀ) + b`` with q_x uint8 [..., in] (zero point 128), q_w int8 [out, in] packed
    for oneDNN, s_w [out], b float [out]; output float [..., out]."""

    def __init__(self, module: QuantLinear, tokens_hint: int = 1024) -> None:
        super().__init__()
        lo, hi = check_exportable(module)
        grid = module.weight_grid()
        weight = module.weight.detach()
        self.out_features, self.in_features = weight.shape
        self.x_scale = max(float(hi.abs().max()), float(lo.abs().max())) / 127 or 1.0
        w_scale = grid.scale.expand(self.out_features) if grid.groups == 1 else grid.scale
        self.register_buffer("w_scale", w_scale.to(torch.float32).contiguous())
        self.register_buffer("w_zero_point", torch.zeros(self.out_features, dtype=torch.long))
        codes = grid.quantize(weight)
        # An opaque oneDNN tensor: kept as a plain attribute (it has no storage a state_dict could save).
        self.packed_weight = torch.ops.onednn.qlinear_prepack(codes, [tokens_hint, self.in_features])
        self.register_buffer("bias", None if module.bias is None else module.bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        with torch.profiler.record_function("qlib::quantize_input"):  # its own line in a profile
            # One new buffer, then in place: a fresh tensor per elementwise op costs more than the op here.
            q = x.reshape(-1, self.in_features) * (1.0 / self.x_scale)
            q = q.round_().add_(UINT8_ZERO_POINT).clamp_(1, 255).to(torch.uint8)
        y = torch.ops.onednn.qlinear_pointwise(q, self.x_scale, UINT8_ZERO_POINT, self.packed_weight, self.w_scale,
                                               self.w_zero_point, self.bias, 1.0, 0, torch.float32, "none", [], "")
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, x_scale={self.x_scale:.4g}"


class Int8Embedding(nn.Module):
    """``E[i] = s·q[i]`` (+ shift) with an int8/uint8 table q [num, dim]: a quarter of the float table's bytes."""

    def __init__(self, module: QuantEmbedding) -> None:
        super().__init__()
        grid = module.weight_grid()
        self.rows_per_group = module.num_embeddings // grid.groups
        self.padding_idx = module.padding_idx
        self.register_buffer("codes", grid.quantize(module.weight.detach()))
        self.register_buffer("scale", grid.scale.float())
        self.register_buffer("shift", grid.shift.float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        group = ids // self.rows_per_group
        rows = F.embedding(ids, self.codes).to(torch.float32)
        return rows * self.scale[group].unsqueeze(-1) + self.shift[group].unsqueeze(-1)


def to_int8(model: nn.Module) -> nn.Module:
    """A copy of the converted, trained (or calibrated) ``model`` running on int8 kernels, in eval mode."""
    layers = list(quantized_modules(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layer: convert it with qlib.convert_bert and "
                         "train or calibrate it first")
    for _, module in layers:
        if isinstance(module, QuantLinear):
            check_exportable(module)
    check_int8_engine()
    model = copy.deepcopy(model).eval()
    layers = list(quantized_modules(model))
    for name, module in layers:
        new = Int8Linear(module) if isinstance(module, QuantLinear) else Int8Embedding(module)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def int8_gemm_error(weight_bits: int, k: int = 64, seed: int = 0) -> float:
    """Max |error| of oneDNN's u8·s8 GEMM on this CPU against exact integer arithmetic, for random uint8 inputs
    and weights spanning ±(2^(weight_bits-1) - 1) over a k-term dot product (0 where the CPU is exact)."""
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise RuntimeError("this PyTorch build has no oneDNN int8 kernels (torch.ops.onednn.qlinear_pointwise)")
    generator = torch.Generator().manual_seed(seed)
    m = 2 ** (weight_bits - 1) - 1
    weight = torch.randint(-m, m + 1, (16, k), generator=generator).to(torch.int8)
    x = torch.randint(0, 256, (8, k), generator=generator).to(torch.uint8)
    packed = torch.ops.onednn.qlinear_prepack(weight, [8, k])
    y = torch.ops.onednn.qlinear_pointwise(x, 1.0, UINT8_ZERO_POINT, packed, torch.ones(16),
                                           torch.zeros(16, dtype=torch.long), None, 1.0, 0, torch.float32,
                                           "none", [], "")
    exact = (x.float() - UINT8_ZERO_POINT) @ weight.float().T
    return float((y - exact).abs().max())
