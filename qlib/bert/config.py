"""What to quantize in a BERT, and how: one ``LayerQuant`` per Linear, one ``QuantSpec`` for the embeddings.

Layer names are module paths inside the ``BertModel`` (``encoder.layer.3``, ``encoder.layer.3.attention``,
``encoder.layer.3.output.dense``, ``pooler``); an override applies to every Linear under its path and the
longest matching path wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from qlib.core.observers import OBSERVERS, Q8BERT_EMA_DECAY
from qlib.core.quantizers import QuantSpec
from qlib.core.weight_quantizer import WeightQuantizer, check_weight_quantizer


@dataclass(frozen=True)
class LayerQuant:
    """Quantization of one Linear: its weight quantizer (a uniform ``QuantSpec`` grid, or any ``WeightQuantizer``), its
    input grid (per tensor) and the input's range observer.

    ``weight=None`` or ``activation=None`` leaves that tensor in float. ``observer`` is ``"ema"`` (QAT, Q8BERT),
    ``"dynamic"`` (per batch at inference, the DQ baseline) or ``"minmax"`` (post-training calibration).
    ``noise_rate`` p < 1 turns QAT into Quant-Noise: in training, only a fraction p of the weight's blocks of
    ``noise_block`` inputs is quantized at each step (``qlib.core.quant_noise``); at inference all of them are.
    """

    weight: WeightQuantizer | None = field(default_factory=QuantSpec)
    activation: QuantSpec | None = field(default_factory=QuantSpec)
    observer: str = "ema"
    ema_decay: float = Q8BERT_EMA_DECAY
    noise_rate: float = 1.0
    noise_block: int = 8

    def __post_init__(self) -> None:
        check_weight_quantizer(self.weight, "LayerQuant.weight")
        if not 0.0 <= self.noise_rate <= 1.0:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate!r}")
        if self.activation is not None and self.activation.granularity != "tensor":
            raise ValueError(
                f"activations are quantized per tensor; got granularity={self.activation.granularity!r}"
            )
        if self.activation is not None and self.activation.percentile is not None:
            raise ValueError("activation ranges come from the observer; percentile clipping is for weights only")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {self.observer!r}")


@dataclass(frozen=True)
class BertQuantConfig:
    """Quantization of a whole BERT: a default for every encoder/pooler Linear, per-layer overrides,
    the embedding tables' weight spec, the task head (``None``: stays in float, as in Q8BERT), and whether GELU,
    softmax and LayerNorm run in integer arithmetic (I-BERT's kernels, ``qlib.bert.integer_modules``)."""

    default: LayerQuant = field(default_factory=LayerQuant)
    embeddings: WeightQuantizer | None = field(default_factory=QuantSpec)
    layers: Mapping[str, LayerQuant] = field(default_factory=dict)
    head: LayerQuant | None = None
    integer_nonlinearities: bool = False

    def __post_init__(self) -> None:
        check_weight_quantizer(self.embeddings, "BertQuantConfig.embeddings")

    def layer_for(self, name: str) -> LayerQuant:
        """The LayerQuant of the Linear at module path ``name``: the longest matching override, else the default."""
        matches = [key for key in self.layers if name == key or name.startswith(key + ".")]
        return self.layers[max(matches, key=len)] if matches else self.default


def q8bert_config(bits: int = 8, ema_decay: float = Q8BERT_EMA_DECAY,
                  weight_bits: int | None = None) -> BertQuantConfig:
    """Q8BERT QAT: symmetric per-tensor weights and inputs of every Linear, EMA input ranges, quantized embeddings.

    ``weight_bits`` (default: ``bits``) narrows the Linears' weights alone. 7 trains the weights that an int8 GEMM
    without VNNI multiplies exactly with 8-bit inputs (AVX2's ``vpmaddubsw`` sums u8·s8 pairs into saturating int16:
    2·255·63 < 2^15 ≤ 2·255·127), so the int8 export runs the model's own arithmetic there; torch.ao's
    ``reduce_range`` narrows the inputs instead."""
    spec = QuantSpec(bits, "symmetric")
    weight = spec if weight_bits is None else QuantSpec(weight_bits, "symmetric")
    return BertQuantConfig(default=LayerQuant(weight, spec, "ema", ema_decay), embeddings=spec)


def dynamic_config(bits: int = 8) -> BertQuantConfig:
    """Q8BERT's DQ baseline: the same grids as QAT, applied after FP32 training, input ranges taken per batch."""
    spec = QuantSpec(bits, "symmetric")
    return BertQuantConfig(default=LayerQuant(spec, spec, "dynamic"), embeddings=spec)


def qbert_config(
    weight_bits: int,
    embedding_bits: int = 8,
    activation_bits: int = 8,
    groups: int | str | None = None,
    layer_bits: Mapping[str, int] | None = None,
    percentile: float | None = None,
    observer: str = "ema",
    noise_rate: float = 1.0,
    noise_block: int = 8,
) -> BertQuantConfig:
    """Q-BERT: asymmetric clamp quantizer on weights (G groups of rows when ``groups`` = G, one range per row when
    ``groups="row"``, per tensor when None), 8-bit inputs (EMA
    ranges for QAT, ``observer="dynamic"`` for direct quantization without fine-tuning), the embedding's bits on
    their own, and ``layer_bits`` (e.g. ``{"encoder.layer.0": 3}``) for mixed precision. ``percentile`` p clips each
    weight group's range to its [100 - p, p] percentiles instead of its min/max (the embedding keeps min/max).
    ``noise_rate`` p < 1 trains the Linears with Quant-Noise (a fraction p of their weight blocks of
    ``noise_block`` inputs quantized per step; the embedding trains with every weight quantized)."""

    if isinstance(groups, str) and groups != "row":
        raise ValueError(f"groups must be a positive integer G, 'row' or None; got {groups!r}")
    if groups == "row":
        granularity, groups = "channel", None
    else:
        granularity = "group" if groups is not None else "tensor"

    def layer(bits: int) -> LayerQuant:
        weight = QuantSpec(bits, "asymmetric", granularity, groups, percentile)
        return LayerQuant(weight, QuantSpec(activation_bits, "asymmetric"), observer, noise_rate=noise_rate,
                          noise_block=noise_block)

    return BertQuantConfig(
        default=layer(weight_bits),
        embeddings=QuantSpec(embedding_bits, "asymmetric"),
        layers={name: layer(bits) for name, bits in (layer_bits or {}).items()},
    )
