"""Real int8 inference on x86 CPUs: a fake-quantized BERT exported to oneDNN's int8 GEMM kernels.

``to_int8(model)`` replaces every ``QuantLinear`` by an ``Int8Linear`` (int8 weights packed once, the input
quantized to uint8 with the *learned* static scale, int32 accumulation, float output with the bias added) and
every ``QuantEmbedding`` by an ``Int8Embedding`` (an int8 table, rows dequantized after the lookup). In each
encoder layer it also fuses what the integer kernels can do at once (``Int8SelfAttention``, ``Int8Intermediate``,
``Int8ResidualOutput``): Q, K and V as one GEMM on one quantized input (their EMA ranges saw the same tensor);
the FFN's GELU and the quantization of its output inside the first FFN GEMM, which hands uint8 codes to the
second; the residual add inside the GEMM before each LayerNorm. Softmax, LayerNorm and the attention products
stay in float, unless the model was trained with I-BERT's integer nonlinearities (``qlib.bert.integer_modules``):
then its integer GELU, softmax and LayerNorm run as they trained, on int64 codes in vectorized torch integer ops,
between the int8 GEMMs (the GELU is then not fused). Every fusion computes what the fake-quantized model computes,
in another order.

Why this route: ``torch.ops.onednn.qlinear_pointwise`` is the kernel PyTorch's own maintained x86 int8 path
(PT2E quantization with the X86 Inductor quantizer) lowers to, post-ops included; it takes plain uint8/int8
tensors, so nothing here uses the deprecated ``torch.ao`` eager modules. One deprecated piece remains:
``torch.quantize_per_tensor`` is used as a vectorized rounding kernel in ``quantize_input`` (its result is read
back as plain int8 bytes; a ``torch.qint8`` tensor never leaves that function), because the same rounding as a
chain of eager float ops cost 3-7x more and was the largest share of the int8 model's time.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import bidirectional_mask_function, eager_mask
from transformers.models.bert.modeling_bert import (
    ALL_ATTENTION_FUNCTIONS,
    BertIntermediate,
    BertLayer,
    BertOutput,
    BertSelfAttention,
    BertSelfOutput,
    eager_attention_forward,
)

from qlib.bert.convert import find_bert, quantized_modules
from qlib.bert.integer_modules import IntegerNonlinearity
from qlib.bert.modules import QuantEmbedding, QuantLinear
from qlib.bert.pq_modules import PQEmbedding, PQLinear
from qlib.common.cpu import cpu_class, has_bf16
from qlib.core.observers import DynamicObserver
from qlib.core.quantizers import QuantGrid, QuantSpec

UINT8_ZERO_POINT = 128  # Q8BERT's symmetric int8 input codes -127..127 shifted into oneDNN's uint8 input
CODE_BITS = (8, 7)
"""Widths of the codes an int8 GEMM multiplies: 8 (the fake-quantized model's own grids) or 7 (for CPUs whose
kernels saturate with two 8-bit operands)."""


@dataclass(frozen=True)
class CodeWidths:
    """The widths of the integer codes an int8 GEMM multiplies.

    ``inputs``: uint8 codes around ``input_zero_point``; 8 is the fake-quantized model's own grid, 7 the same range
    with half the levels (``reduced_input_scale``, torch.ao's ``reduce_range``). ``weights``: int8 codes; 8 is the
    model's own grid, 7 keeps each output channel's 8-bit codes where they fit in ±63 and re-rounds the others to ±63
    levels over the channel's own range (``seven_bit_weights``), keeping the learned input grid. Where x86 kernels
    sum u8·s8 pairs into saturating int16 (``vpmaddubsw``: AVX2 without VNNI), two 8-bit operands overflow
    (2·255·127 > 2^15 - 1) and either 7-bit one does not (2·127·127, 2·255·63).
    """

    inputs: int = 8
    weights: int = 8

    def __post_init__(self) -> None:
        for name, bits in (("inputs", self.inputs), ("weights", self.weights)):
            if bits not in CODE_BITS:
                raise ValueError(f"{name} codes of an int8 GEMM have one of {CODE_BITS} bits, got {bits!r}")

    def __str__(self) -> str:
        return f"{self.inputs}-bit inputs × {self.weights}-bit weights"


WIDTHS = (CodeWidths(8, 8), CodeWidths(8, 7), CodeWidths(7, 8))
"""The routes ``to_int8`` picks from, in its order of preference: the model's own arithmetic, then 7-bit weights
(which keep the learned input grid), then 7-bit inputs."""
FLOAT_OUTPUTS = (torch.float32, torch.bfloat16)
"""The float dtypes an ``Int8Linear`` can write: float32, or bfloat16 for the bf16 attention products it feeds."""
GELU_FLOOR = -0.1701
"""Below the minimum of GELU, erf (-0.16997) or tanh approximation (-0.17004): no GELU output is smaller."""
GELU_ALGORITHMS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
"""transformers' activation names that oneDNN's GELU post-op computes: erf (``"none"``) or tanh approximation."""


def input_zero_point(bits: int) -> int:
    """The uint8 code of real zero for ``bits``-bit symmetric input codes ±(2^(bits-1) - 1): 128 for 8, 64 for 7."""
    if bits not in CODE_BITS:
        raise ValueError(f"int8 input codes have one of {CODE_BITS} bits, got {bits!r}")
    return 2 ** (bits - 1)


def reduced_input_scale(scale: float, bits: int) -> float:
    """Δ of the ``bits``-bit grid over the same clip range ±127·Δ as the 8-bit grid of step ``scale``:
    ``Δ_b = 127·Δ / (2^(b-1) - 1)`` (torch.ao's ``reduce_range``: half the levels, the same range)."""
    return scale * 127 / (input_zero_point(bits) - 1)


def _check_onednn() -> None:
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise RuntimeError("this PyTorch build has no oneDNN int8 kernels (torch.ops.onednn.qlinear_pointwise); "
                           "qlib's int8 path needs an x86-64 CPU build of PyTorch")


@functools.lru_cache(maxsize=None)
def exact_widths() -> tuple[CodeWidths, ...]:
    """The routes of ``WIDTHS`` whose int8 GEMMs are exact on this CPU, measured (``int8_gemm_error``), not read
    from the CPU's flags: all three with VNNI or AMX; the two with a 7-bit operand where u8·s8 pairs are summed
    into saturating int16 (``vpmaddubsw``: AVX2, AVX-512 without VNNI, or oneDNN capped by
    ``ONEDNN_MAX_CPU_ISA``); none where neither is."""
    _check_onednn()
    return tuple(w for w in WIDTHS if all(int8_gemm_error(w.weights, k=k, input_bits=w.inputs) == 0
                                          for k in (64, 768)))


def check_int8_engine(widths: CodeWidths = CodeWidths()) -> None:
    """Raise ``RuntimeError`` unless oneDNN's int8 kernels compute a GEMM of ``widths`` exactly on this CPU.

    Without VNNI, x86 int8 GEMMs multiply u8·s8 pairs into *saturating* int16 sums (``vpmaddubsw``): with 8-bit
    inputs and weights the results are wrong (measured: errors of 2·10^4 on a 64-term dot product). A 7-bit
    operand keeps every pair sum below 2^15, which is why ``torch.ao`` reduces the input range there.
    """
    if widths not in exact_widths():
        raise RuntimeError(f"this CPU's int8 kernels saturate with {widths} (no AVX-512 VNNI, AVX-VNNI or AMX), so "
                           "their results would be wrong; exact here: "
                           + (", ".join(f"CodeWidths({w.inputs}, {w.weights})" for w in exact_widths()) or "none"))


def check_exportable(module: QuantLinear) -> float:
    """The static input scale of ``module`` (the float32 Δ its fake quantization uses), if it can run on int8
    kernels; else a ``ValueError`` saying why (or the observer's ``RuntimeError`` when the model was never
    trained or calibrated)."""
    spec, act = module.quant.weight, module.quant.activation
    if spec is not None and not isinstance(spec, QuantSpec):
        raise ValueError(f"int8 export needs a uniform 8-bit grid (QuantSpec); this layer's weight quantizer is "
                         f"{type(spec).__name__}, which has no int8 kernel: run it decoded in float")
    if (spec is None or act is None or spec.bits not in CODE_BITS or act.bits != 8 or not spec.symmetric
            or not act.symmetric):
        raise ValueError(f"int8 export needs 8-bit symmetric inputs and 8- or 7-bit symmetric weights, got "
                         f"weight={spec}, input={act}")
    if spec.granularity == "group":
        raise ValueError("int8 export supports per-tensor and per-channel weights, not group-wise ones")
    if isinstance(module.input_observer, DynamicObserver):
        raise ValueError("int8 export uses static input scales: this layer's ranges are dynamic (per batch)")
    lo, hi = module.input_observer.stored_range()
    return float(QuantGrid.from_range(lo, hi, 8, symmetric=True).scale)


def float32_reciprocal(scale: float) -> float:
    """1/Δ rounded to float32, as ``QuantGrid.quantize`` multiplies by it (a Python float: a constant when compiled)."""
    return float(torch.tensor(1.0) / torch.tensor(scale, dtype=torch.float32))


def quantize_input(x: torch.Tensor, scale: float, bits: int = 8, reciprocal: float | None = None) -> torch.Tensor:
    """uint8 codes ``clamp(round(x/Δ), -M, M) + 2^(bits-1)`` of ``x`` [...], M = 2^(bits-1) - 1 (Q8BERT's
    symmetric grid, shifted into oneDNN's unsigned input); with ``bits=8`` bit-identical to ``QuantGrid.quantize``
    with the same float32 Δ = ``scale``. Under ``torch.compile`` it is written as plain ops, which Inductor fuses
    into the kernel that produces x; ``reciprocal`` (``float32_reciprocal(scale)``, computed once beforehand) keeps
    the compiled graph free of tensor-to-number conversions."""
    zero_point = input_zero_point(bits)
    if torch.compiler.is_compiling():
        reciprocal = float32_reciprocal(scale) if reciprocal is None else reciprocal
        codes = torch.clamp(torch.round(x * reciprocal), 1 - zero_point, zero_point - 1)
        return (codes + zero_point).to(torch.uint8)
    q = torch.quantize_per_tensor(x.contiguous(), scale, 0, torch.qint8)  # round(x·(1/Δ)), vectorized
    codes = torch.empty(0, dtype=torch.int8).set_(q.untyped_storage(), 0, q.shape, q.stride())
    # -M..M as uint8 bytes, plus the zero point modulo 256: 1..2·zero_point - 1
    return codes.clamp_(1 - zero_point, zero_point - 1).view(torch.uint8).add_(zero_point)


def seven_bit_weights(weight: torch.Tensor, grid: QuantGrid) -> QuantGrid:
    """The 7-bit symmetric grid per output channel for ``weight``'s 8-bit codes q on ``grid`` (the model's):
    ``Δ7_o = Δ8_o · max(1, max_i |q_oi| / 63)``. A channel whose codes fit in ±63 keeps them, exactly (Δ7 = Δ8);
    a wider one is re-rounded to ±63 levels over its own range.

    Shapes:
        weight [out, in], ``grid`` per tensor or per channel → a grid with one scale per output channel [out].
    """
    rows = weight.shape[0]
    widest = grid.quantize(weight).abs().amax(dim=1).float()
    reach = grid.scale.repeat_interleave(rows // grid.groups) * widest.clamp_min(63)  # ±63·Δ7
    return QuantGrid.from_range(-reach, reach, 7, symmetric=True)


class Int8Linear(nn.Module):
    """``y = act(s_x·s_w·(q_x·q_wᵀ) + b + r)`` on oneDNN's int8 GEMM.

    q_x uint8 [..., in] (``widths.inputs``-bit codes around ``input_zero_point``: 128 for 8 bits, 64 for 7; a float
    input is quantized first), q_w int8 [out, in] packed once (``widths.weights``-bit codes), s_w [out], b float
    [out], r an optional float residual [..., out]. Output [..., out] in ``out_dtype`` (float32, or bfloat16: y
    rounded to bf16 as the GEMM stores it, which is ``y.to(torch.bfloat16)`` without a float32 copy in between), or
    with ``out_scale`` the uint8 codes of y on that scale, with the same input code width (the next layer's input).
    ``activation``: ``None`` or ``"gelu"`` with ``gelu_algorithm`` ``"none"`` (erf) or ``"tanh"``.
    """

    def __init__(self, codes: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None, x_scale: float,
                 activation: str | None = None, gelu_algorithm: str = "none", out_scale: float | None = None,
                 tokens_hint: int = 1024, widths: CodeWidths = CodeWidths(),
                 out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if out_dtype not in FLOAT_OUTPUTS:
            raise ValueError(f"an int8 GEMM's float output is one of {FLOAT_OUTPUTS}, got out_dtype={out_dtype!r}")
        if out_dtype != torch.float32 and out_scale is not None:
            raise ValueError("out_scale makes the output uint8 codes; out_dtype applies to a float output only")
        self.out_dtype = out_dtype
        self.out_features, self.in_features = codes.shape
        self.x_scale, self.out_scale = x_scale, out_scale
        self.widths, self.zero_point = widths, input_zero_point(widths.inputs)
        self.x_reciprocal = float32_reciprocal(x_scale)
        self.activation, self.gelu_algorithm = activation or "none", gelu_algorithm if activation else ""
        # oneDNN saturates uint8 codes to 0..255; the symmetric grid's are 1..2·zero point - 1. With 8-bit codes
        # the clamp only lifts code 0 (real values below -127.5·Δ), which GELU's outputs cannot reach when
        # 127·Δ > |GELU_FLOOR|: then it is skipped (a whole pass over the FFN's widest output, for nothing).
        self.clamps_codes = out_scale is not None and not (
            widths.inputs == 8 and activation == "gelu" and 127 * out_scale > -GELU_FLOOR)
        self.register_buffer("w_scale", w_scale.to(torch.float32).contiguous())
        self.register_buffer("w_zero_point", torch.zeros(self.out_features, dtype=torch.long))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        # An opaque oneDNN tensor: kept as a plain attribute (it has no storage a state_dict could save).
        self.packed_weight = torch.ops.onednn.qlinear_prepack(codes.contiguous(), [tokens_hint, self.in_features])

    @classmethod
    def fused(cls, *modules: QuantLinear, widths: CodeWidths = CodeWidths(), **kwargs) -> "Int8Linear":
        """One GEMM for Linears that read the same input with the same scale (Q, K, V): their weights stacked
        [Σ out, in], each keeping its own weight scale; inputs on the learned 8-bit grid's range with
        ``widths.inputs``-bit codes (``reduced_input_scale``); weights on the model's grid, or with
        ``widths.weights`` = 7 their fake-quantized values on each channel's 7-bit grid (``seven_bit_weights``)."""
        scales = {check_exportable(m) for m in modules}
        if len(scales) != 1:
            raise ValueError(f"Linears fused into one GEMM must share their input scale, got {sorted(scales)}")
        weights = [m.weight.detach() for m in modules]
        grids = [m.weight_grid() for m in modules]
        if widths.weights == 7:  # the model's weights (its 8-bit codes) on each channel's 7-bit grid
            weights, grids = ([g.fake_quantize(w) for g, w in zip(grids, weights)],
                              [seven_bit_weights(w, g) for g, w in zip(grids, weights)])
        codes = torch.cat([g.quantize(w) for g, w in zip(grids, weights)])
        w_scale = torch.cat([g.scale.reshape(-1).expand(m.out_features) for g, m in zip(grids, modules)])
        biases = [m.bias for m in modules]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach() if b is not None else torch.zeros(m.out_features) for b, m in zip(biases, modules)])
        return cls(codes, w_scale, bias, reduced_input_scale(scales.pop(), widths.inputs), widths=widths, **kwargs)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            with torch.profiler.record_function("qlib::quantize_input"):  # its own line in a profile
                x = quantize_input(x, self.x_scale, self.widths.inputs, self.x_reciprocal)
        codes = x.reshape(-1, self.in_features)
        quantized_output = self.out_scale is not None
        out_scale, out_zero_point = (self.out_scale, self.zero_point) if quantized_output else (1.0, 0)
        out_dtype = torch.uint8 if quantized_output else self.out_dtype
        common = (codes, self.x_scale, self.zero_point, self.packed_weight, self.w_scale, self.w_zero_point)
        if residual is None:
            y = torch.ops.onednn.qlinear_pointwise(*common, self.bias, out_scale, out_zero_point, out_dtype,
                                                   self.activation, [], self.gelu_algorithm)
        elif self.out_dtype != torch.float32:
            raise ValueError(f"the residual add runs in float32; this GEMM's output is {self.out_dtype}")
        else:
            y = torch.ops.onednn.qlinear_pointwise.binary(
                *common, residual.reshape(-1, self.out_features), self.bias, out_scale, out_zero_point, out_dtype,
                1.0, 0, "add", 1.0, self.activation, [], self.gelu_algorithm)
        if self.clamps_codes:  # the symmetric grid stops at ±M: codes 1..2·zero point - 1
            y.clamp_(1, 2 * self.zero_point - 1)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        fused = f", activation={self.activation}" if self.activation != "none" else ""
        out = f", out_scale={self.out_scale:.4g}" if self.out_scale is not None else ""
        bits = f", widths={self.widths}" if self.widths != CodeWidths() else ""
        dtype = f", out_dtype={self.out_dtype}" if self.out_dtype != torch.float32 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, x_scale={self.x_scale:.4g}" \
               f"{bits}{fused}{out}{dtype}"


ATTENTION_DTYPES = FLOAT_OUTPUTS  # the attention products run in the dtype the Q, K, V GEMM writes
EAGER_ATTENTION_MAX_TOKENS = {"AMX": 0, "AVX-512 VNNI": 256}
"""By CPU class (``qlib.common.cpu.cpu_class``), the longest key sequence whose bf16 attention runs by eager attention;
a longer one runs by SDPA, whose kernel works through the scores in blocks instead of writing [B, H, T, T] to memory.
A class not named here gets ``DEFAULT_EAGER_ATTENTION_MAX_TOKENS``. Set from probes (BERT-base, compiled, interleaved,
quiet CPU). AVX-512 BF16 without AMX (batch 8, against the float32 route's SDPA): eager attention was the faster at 128
tokens, about even at 256 (two probes disagreed on which was ahead) and far the slower at 512, where the bf16 route with
SDPA was as fast as the float32 one. AMX (bf16 eager against bf16 SDPA, batch 1 and 8): at 32 and 64 tokens eager
was ahead by at most 4 % (batch 8) and SDPA by up to 13 % (batch 1, 64 tokens); at 128 tokens SDPA took 16-17 % less
time, at 256 22-36 % less. Probed again on AMX at 128 tokens once the eager mask was one stored row (commit 48e54f0;
autotuned, noisy host): SDPA 7 % faster at batch 1, eager 2 % faster at batch 8, so AMX keeps SDPA."""
DEFAULT_EAGER_ATTENTION_MAX_TOKENS = 256


@torch.library.custom_op("qlib::padding_row", mutates_args=())
def padding_row(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive padding row [B, 1, 1, kv] of a 2D bool padding mask [B, kv]: 0 where a key is attended, the
    dtype's minimum where it is not. An op of its own so that, compiled, it is one stored tensor every layer reads;
    as plain ops Inductor would recompute it inside each softmax loop, from the int64 mask, per score."""
    return torch.where(attention_mask[:, None, None, :], torch.zeros((), dtype=dtype), torch.finfo(dtype).min)


@padding_row.register_fake
def _(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return attention_mask.new_empty((attention_mask.shape[0], 1, 1, attention_mask.shape[1]), dtype=dtype)


def padding_row_mask(*, batch_size: int, q_length: int, kv_length: int, mask_function: Callable,
                     attention_mask: torch.Tensor | None = None, kv_offset: int = 0,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                     **kwargs) -> torch.Tensor | None:
    """transformers' eager mask (0 where a key is attended, the dtype's minimum where it is not) as one row per
    sequence, [B, 1, 1, kv] (``padding_row``), where the mask is bidirectional (BERT's encoder): there every query's
    row is the same padding row, which the attention's add broadcasts over heads and queries (the same sums as the
    whole [B, 1, q, kv] mask). Compiled, the softmax kernels then load a stored float row along the keys;
    transformers' mask, built by indexing, was recomputed inside each of them per score, most of their time. Without
    a padding mask the row is all zeros rather than no mask: with none, Inductor rewrites the attention into SDPA's
    bf16 kernel, which took twice as long at 128 tokens (AVX-512 BF16, batch 8). Every other mask (causal, with an
    offset, packed sequences, overlays) is transformers' ``eager_mask``, whose kwargs these are."""
    if mask_function is not bidirectional_mask_function or kv_offset or \
            (attention_mask is not None and attention_mask.shape[-1] != kv_length):
        return eager_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, mask_function=mask_function,
                          attention_mask=attention_mask, kv_offset=kv_offset, dtype=dtype, device=device, **kwargs)
    if attention_mask is None:
        attention_mask = torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
    return padding_row(attention_mask, dtype)


BF16_ATTENTION = "qlib_int8_bf16"
"""The attention implementation ``to_int8`` sets for bf16 attention products: transformers' eager attention,
registered with ``padding_row_mask`` as its mask (transformers' ``AttentionInterface`` and
``AttentionMaskInterface``, under this name only)."""
AttentionInterface.register(BF16_ATTENTION, eager_attention_forward)
AttentionMaskInterface.register(BF16_ATTENTION, padding_row_mask)


class Int8SelfAttention(nn.Module):
    """BERT self-attention with Q, K, V as one int8 GEMM: ``[Q K V] = Int8Linear(h)`` [B, T, 3·H·d], then
    the attention products on Q, K, V in ``attention_dtype`` (float32, as the fake-quantized model; or bfloat16,
    which AMX and AVX-512 BF16 CPUs multiply natively, and which the GEMM then writes directly: no float32 Q, K, V
    and no conversion pass), by the model's own attention function; output float32 [B, T, H·d]. ``to_int8`` sets
    that function to transformers' eager attention for bfloat16 (``BF16_ATTENTION``): ``softmax(Q·Kᵀ·scale + mask)``
    in float32, rounded to bf16 before ·V, the padding mask one row per sequence (``padding_row_mask``). Compiled,
    Inductor fuses the scale, mask, softmax and rounding into one kernel between the two bf16 GEMMs (two loops over
    the scores, with the exponentials in a float32 buffer between them); SDPA's bf16 kernel was slower at 128 tokens
    on AVX-512 BF16, and agreed less with the fake-quantized model. Past ``eager_max_tokens`` keys
    (``EAGER_ATTENTION_MAX_TOKENS`` of this CPU's class: 256 on AVX-512 BF16, where the scores outgrow the caches; 0
    on AMX, whose bf16 SDPA was about as fast at 32 and 64 tokens and faster from 128 on) the bf16 products run by
    SDPA (the speed chapter's ``qbook_int8_compiled_bf16_attention`` rows measure this route)."""

    def __init__(self, attention: BertSelfAttention, widths: CodeWidths = CodeWidths(),
                 attention_dtype: torch.dtype = torch.float32, qkv: nn.Module | None = None) -> None:
        """``qkv``: another fused projection of Q, K and V (the ONNX export's QDQ one); default ``Int8Linear``."""
        super().__init__()
        self.config, self.is_causal, self.layer_idx = attention.config, attention.is_causal, attention.layer_idx
        self.num_attention_heads = attention.num_attention_heads
        self.attention_head_size, self.scaling = attention.attention_head_size, attention.scaling
        self.attention_dtype = attention_dtype
        self.eager_max_tokens = EAGER_ATTENTION_MAX_TOKENS.get(cpu_class(), DEFAULT_EAGER_ATTENTION_MAX_TOKENS)
        if hasattr(attention, "integer_softmax"):  # I-BERT's softmax, read by the model's attention function
            if attention_dtype != torch.float32:
                raise ValueError("the integer softmax takes float32 scores from the model's own attention function: "
                                 f"attention_dtype must be torch.float32, got {attention_dtype}")
            self.integer_softmax = attention.integer_softmax
        self.qkv = qkv if qkv is not None else Int8Linear.fused(attention.query, attention.key, attention.value,
                                                                widths=widths, out_dtype=attention_dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        shape = hidden_states.shape[:-1]
        qkv = self.qkv(hidden_states).view(*shape, 3 * self.num_attention_heads, self.attention_head_size)
        query, key, value = qkv.transpose(1, 2).to(self.attention_dtype).split(self.num_attention_heads, dim=1)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.is_floating_point():  # not flex's BlockMask
            attention_mask = attention_mask.to(self.attention_dtype)
        kwargs.pop("past_key_values", None)  # only encoders are fused (see to_int8)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        if self.attention_dtype == torch.bfloat16 and key.shape[-2] > self.eager_max_tokens:
            attention = ALL_ATTENTION_FUNCTIONS["sdpa"]  # takes the eager route's additive mask as it is
        output, weights = attention(self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling,
                                    **kwargs)
        return output.reshape(*shape, -1).to(torch.float32).contiguous(), weights

    def extra_repr(self) -> str:
        eager = f", eager_max_tokens={self.eager_max_tokens}" if self.attention_dtype == torch.bfloat16 else ""
        return f"attention_dtype={self.attention_dtype}{eager}"


class Int8Intermediate(nn.Module):
    """BERT's FFN up-projection: ``GELU(x·Wᵀ + b)`` [..., 4h] inside the int8 GEMM, returned as uint8 codes on the
    input scale of the down-projection that reads them."""

    def __init__(self, intermediate: BertIntermediate, next_input_scale: float, gelu_algorithm: str,
                 widths: CodeWidths = CodeWidths()) -> None:
        super().__init__()
        self.dense = Int8Linear.fused(intermediate.dense, activation="gelu", gelu_algorithm=gelu_algorithm,
                                      out_scale=next_input_scale, widths=widths)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense(hidden_states)


class Int8ResidualOutput(nn.Module):
    """``LayerNorm(x·Wᵀ + b + residual)`` with the add inside the int8 GEMM (BERT's SelfOutput and Output);
    x [..., in] float or uint8 codes, residual [..., h]."""

    def __init__(self, output: BertSelfOutput | BertOutput, widths: CodeWidths = CodeWidths()) -> None:
        super().__init__()
        self.dense = Int8Linear.fused(output.dense, widths=widths)
        self.LayerNorm = output.LayerNorm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states, residual=input_tensor))


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


def _fuse_layer(layer: BertLayer, hidden_act: object, widths: CodeWidths, attention_dtype: torch.dtype) -> None:
    """Swap an encoder ``layer``'s attention projections, FFN and residual outputs for their fused int8 modules,
    in place. Q, K, V stay three GEMMs if their input scales differ (per-layer EMA decays); an activation oneDNN
    has no post-op for (or an integer GELU) stays a separate op between two ``Int8Linear``s."""
    attention = layer.attention
    if len({check_exportable(p) for p in (attention.self.query, attention.self.key, attention.self.value)}) == 1:
        attention.self = Int8SelfAttention(attention.self, widths, attention_dtype)
    attention.output = Int8ResidualOutput(attention.output, widths)
    layer.output = Int8ResidualOutput(layer.output, widths)
    gelu = GELU_ALGORITHMS.get(hidden_act) if isinstance(hidden_act, str) else None
    if gelu is not None and not isinstance(layer.intermediate.intermediate_act_fn, IntegerNonlinearity):
        layer.intermediate = Int8Intermediate(layer.intermediate, layer.output.dense.x_scale, gelu, widths)


def to_int8(model: nn.Module, widths: CodeWidths | None = None, attention_dtype: torch.dtype = torch.float32,
            compile: bool = False, autotune: bool = False) -> nn.Module:
    """A copy of the converted, trained (or calibrated) ``model`` running on int8 kernels, in eval mode.

    Args:
        model: a BERT converted by ``qlib.convert_bert`` with 8-bit symmetric static quantization (7-bit weights
            too: ``q8bert_config(weight_bits=7)``, which ``CodeWidths(8, 7)`` runs exactly), trained or calibrated;
            with integer nonlinearities (``RunSpec(..., integer_nonlinearities=True)``) they are kept.
        widths: the widths of the GEMMs' input and weight codes (``CodeWidths``): 8 × 8 is the fake-quantized
            model's arithmetic; 8-bit inputs × 7-bit weights or 7-bit inputs × 8-bit weights are for CPUs whose int8
            kernels saturate with two 8-bit operands (AVX2 without VNNI). ``None`` picks the first of ``WIDTHS``
            this CPU computes exactly (``exact_widths``).
        attention_dtype: the dtype of the attention products (Q·Kᵀ, ·V): ``torch.float32`` (the fake-quantized
            model's, by its own attention function) or ``torch.bfloat16`` (by transformers' eager attention, whose
            softmax runs in float32; the copy's attention implementation is set to ``BF16_ATTENTION``; past this CPU
            class's ``EAGER_ATTENTION_MAX_TOKENS`` tokens by SDPA, as eager attention writes the [B, H, T, T] scores).
        compile: return it compiled whole by Inductor (``CompiledInt8``), for inference.
        autotune: with ``compile``, let Inductor time each GEMM shape on oneDNN's kernel and on its own C++ GEMM
            template (AMX or AVX-512 micro-kernels with the dequantization fused after them) and keep the faster
            (``torch.compile``'s max-autotune for GEMMs, ``AUTOTUNE_GEMM_BACKENDS``); each compile takes a few times
            longer. The int8 products stay exact; the float steps around them may run in another order.
    """
    if autotune and not compile:
        raise ValueError("autotune=True tunes the compiled model's GEMMs: pass compile=True with it")
    layers = list(quantized_modules(model))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layer: convert it with qlib.convert_bert and "
                         "train or calibrate it first")
    for name, module in layers:
        if isinstance(module, (PQLinear, PQEmbedding)):
            raise ValueError(f"layer {name} is product-quantized (iPQ): a codebook has no int8 GEMM kernel; the "
                             "model runs decoded in float")
        if isinstance(module, QuantLinear):
            check_exportable(module)
    if attention_dtype not in ATTENTION_DTYPES:
        raise ValueError(f"attention_dtype must be one of {ATTENTION_DTYPES}, got {attention_dtype!r}")
    if widths is None:
        if not exact_widths():
            raise RuntimeError("this CPU's int8 kernels saturate even with 7-bit codes: no exact int8 route here")
        widths = exact_widths()[0]
    if not isinstance(widths, CodeWidths):
        raise TypeError(f"widths must be a qlib.deploy.int8.CodeWidths (e.g. CodeWidths(inputs=8, weights=7)), got "
                        f"{widths!r}")
    check_int8_engine(widths)
    model = copy.deepcopy(model).eval()
    bert = find_bert(model)
    if attention_dtype == torch.bfloat16:  # bf16 products around a float32 softmax (see Int8SelfAttention)
        bert.set_attn_implementation(BF16_ATTENTION)
    if not bert.config.is_decoder:
        for layer in bert.encoder.layer:
            _fuse_layer(layer, bert.config.hidden_act, widths, attention_dtype)
    for name, module in list(quantized_modules(model)):
        new = Int8Linear.fused(module, widths=widths) if isinstance(module, QuantLinear) \
            else Int8Embedding(module)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return CompiledInt8(model, autotune) if compile else model


def native_attention_dtype() -> torch.dtype:
    """bf16 where this CPU computes it natively (AVX-512 BF16 or AMX), else float32: the attention products of the
    fastest compiled route (``to_int8(..., compile=True, autotune=True)`` as the speed benchmark and the agreement
    benchmark run it)."""
    return torch.bfloat16 if has_bf16() else torch.float32


AUTOTUNE_GEMM_BACKENDS = "CPP,ATEN"
"""The GEMM kernels ``to_int8(..., autotune=True)`` times for each shape: Inductor's C++ template and ATen's (the
oneDNN kernel the eager model calls)."""


class CompiledInt8(nn.Module):
    """A ``to_int8`` model compiled whole by Inductor, for inference (call it under ``torch.no_grad`` or
    ``torch.inference_mode``): freezing makes the packed weights and scales constants, so the int8 GEMMs stay
    oneDNN's, with their fused post-ops; each input's quantization (``quantize_input``, plain ops when compiled)
    fuses into the kernel that produces it (LayerNorm, the attention output); and the C++ wrapper calls the
    kernels without Python in between, which is most of the time at batch 1. One graph is compiled per input
    shape (``dynamic=False``), on its first call, with those Inductor settings in force for that call only; with
    ``autotune``, each GEMM is also timed against Inductor's C++ template (``to_int8``'s ``autotune``). The
    arithmetic is the eager model's but for the order of float operations Inductor picks.

    The compiled graph is a snapshot of the model (freezing made its weights constants): a change to the model
    after the first call is not seen; build a new one. So a call like one already made (``call_signature``: the
    same tensor shapes, dtypes, devices and strides, the same other arguments, the same grad mode) runs with only
    the guards that tell Dynamo's cached graphs apart (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``;
    the rest re-check what the first call checked). Dynamo's full guards (on every module and parameter) are most
    of its own time in a BERT-base call at batch 1. A call unlike any before gets the full guards (and compiles its
    graph)."""

    def __init__(self, model: nn.Module, autotune: bool = False) -> None:
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model, dynamic=False)
        self.settings = {"freezing": True, "cpp_wrapper": True}
        if autotune:
            self.settings |= {"max_autotune": True, "max_autotune_gemm_backends": AUTOTUNE_GEMM_BACKENDS}
        self.seen: set[tuple] = set()

    def forward(self, *args, **kwargs):
        signature = call_signature(args, kwargs)
        if signature is not None and signature in self.seen:  # compiled: the Inductor settings are not read again
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                return self.compiled(*args, **kwargs)
        with torch._inductor.config.patch(self.settings):
            output = self.compiled(*args, **kwargs)
        if signature is not None:
            self.seen.add(signature)
        return output


def call_signature(args: tuple, kwargs: dict) -> tuple | None:
    """What Dynamo's guards on a call's inputs check, as a hashable key: per tensor its shape, dtype, device,
    strides and ``requires_grad``; other arguments by value (``None``, bool, int, float, str); and the grad and
    inference modes. ``None`` where an argument is anything else (such a call always gets the full guards)."""
    def key(value):
        if isinstance(value, torch.Tensor):
            return "tensor", value.shape, value.dtype, value.device, value.stride(), value.requires_grad
        if value is None or isinstance(value, (bool, int, float, str)):
            return type(value), value
        raise TypeError(type(value))

    try:
        return (tuple(key(a) for a in args), tuple((k, key(kwargs[k])) for k in sorted(kwargs)),
                torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    except TypeError:
        return None


def int8_gemm_error(weight_bits: int, k: int = 64, seed: int = 0, input_bits: int = 8) -> float:
    """Max ``|error|`` of oneDNN's u8·s8 GEMM on this CPU against exact integer arithmetic, for random
    ``input_bits``-bit input codes (uint8 around their zero point) and weights spanning ±(2^(weight_bits-1) - 1)
    over a k-term dot product (0 where the CPU is exact)."""
    _check_onednn()
    zero_point = input_zero_point(input_bits)
    generator = torch.Generator().manual_seed(seed)
    m = 2 ** (weight_bits - 1) - 1
    weight = torch.randint(-m, m + 1, (16, k), generator=generator).to(torch.int8)
    weight[0] = m  # the extremes, where saturation shows first
    x = torch.randint(1, 2 * zero_point, (8, k), generator=generator).to(torch.uint8)
    x[0] = 2 * zero_point - 1
    packed = torch.ops.onednn.qlinear_prepack(weight, [8, k])
    y = torch.ops.onednn.qlinear_pointwise(x, 1.0, zero_point, packed, torch.ones(16),
                                           torch.zeros(16, dtype=torch.long), None, 1.0, 0, torch.float32,
                                           "none", [], "")
    exact = (x.float() - zero_point) @ weight.float().T
    return float((y - exact).abs().max())
