"""Product-quantized layers with their assignments frozen: iPQ's stages (Quant-Noise, Fan et al. 2021, sec. 4).

iPQ quantizes a model in stages (FFNs, then embeddings, then attention): at each stage the layers of that stage
are replaced by their product quantization (``qlib.core.product_quantization``), and training continues on the
remaining float weights and on the codebooks, whose gradient is the sum of the gradients of the blocks that use
each centroid (``decode`` is an index, so autograd sums them). Codes never change once a layer is quantized.

``PQLinear`` keeps the input quantization of the layer it replaces (its observer and grid: iPQ + int8 activations),
and ``centroid_spec`` fake-quantizes the codebook itself (scalar 8-bit centroids, the paper's iPQ + int8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qlib.bert.config import LayerQuant
from qlib.bert.modules import QuantEmbedding, QuantLinear
from qlib.core.product_quantization import ProductQuantizer, decode
from qlib.core.quantizers import QuantSpec

IPQ_STAGES = ("ffn", "embeddings", "attention")
"""iPQ's order (Quant-Noise sec. 4.1): the largest matrices first, the attention projections last."""
STAGE_BLOCK_SIZES = {"ffn": 8, "embeddings": 8, "attention": 4}
"""fairseq's block sizes for RoBERTa/BERT: 8 inputs for FFN matrices and embeddings, 4 for attention projections."""


class _ProductQuantized(nn.Module):
    """The codebook [k, d] (a parameter), the codes [rows, cols/d] (a uint8 buffer) and the centroids' grid."""

    def _set_codebook(self, weight: torch.Tensor, quantizer: ProductQuantizer, centroid_spec: QuantSpec | None
                      ) -> None:
        codebook, codes = quantizer.fit(weight.detach())
        self.quantizer, self.centroid_spec = quantizer, centroid_spec
        self.codebook = nn.Parameter(codebook.to(weight.dtype))
        self.register_buffer("codes", codes)

    def centroids(self) -> torch.Tensor:
        """The codebook as the forward pass sees it: fake-quantized on ``centroid_spec`` (with the STE) if any."""
        return self.codebook if self.centroid_spec is None else self.centroid_spec.fake_quantize(self.codebook)

    @property
    def weight(self) -> torch.Tensor:
        """Ŵ = decode(centroids, codes), differentiable in the codebook."""
        return decode(self.centroids(), self.codes)

    def describe(self) -> dict[str, object]:
        """JSON-ready description that a checkpoint keeps and compares on load."""
        centroid_bits = None if self.centroid_spec is None else self.centroid_spec.bits
        return self.quantizer.describe() | {"centroid_bits": centroid_bits}


class PQLinear(_ProductQuantized):
    """``y = Q_a(x) · Ŵᵀ + b`` with Ŵ the product quantization of the replaced Linear's weight (frozen codes,
    trainable codebook). Shapes: x [..., in] → [..., out]."""

    input_grid = QuantLinear.input_grid  # the same input quantization as the layer it replaces

    def __init__(self, linear: nn.Linear, quantizer: ProductQuantizer, centroid_spec: QuantSpec | None = None
                 ) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._set_codebook(linear.weight, quantizer, centroid_spec)
        self.bias = linear.bias
        source = linear.quant if isinstance(linear, QuantLinear) else LayerQuant(weight=None, activation=None)
        self.quant = LayerQuant(weight=None, activation=source.activation, observer=source.observer,
                                ema_decay=source.ema_decay)
        self.input_observer = getattr(linear, "input_observer", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_grid = self.input_grid(x)
        x = x if x_grid is None else x_grid.fake_quantize(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, quantizer={self.quantizer}, " \
               f"centroid_spec={self.centroid_spec}"


class PQEmbedding(_ProductQuantized):
    """``E[i] = Ŵ[i]``: each looked-up row decoded from its codes alone. Shapes: ids [...] → [..., dim]."""

    def __init__(self, embedding: nn.Embedding, quantizer: ProductQuantizer, centroid_spec: QuantSpec | None = None
                 ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self._set_codebook(embedding.weight, quantizer, centroid_spec)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = decode(self.centroids(), self.codes[ids.reshape(-1)])
        return rows.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, quantizer={self.quantizer}, " \
               f"centroid_spec={self.centroid_spec}"


def stage_of(name: str) -> str | None:
    """iPQ's stage of the layer at module path ``name`` inside a BERT: ``"embeddings"``, ``"attention"`` (Q, K, V and
    the attention output), ``"ffn"`` (the two FFN matrices), or None (pooler, task head)."""
    if name.startswith("embeddings.") or ".embeddings." in f".{name}":
        return "embeddings"
    if ".attention." in f".{name}":
        return "attention"
    if name.endswith("intermediate.dense") or name.endswith("output.dense"):
        return "ffn"
    return None


def product_quantize(bert: nn.Module, stage: str, centroids: int = 256, block_size: int | None = None,
                     iterations: int = 20, centroid_bits: int | None = None, seed: int = 0) -> list[str]:
    """One iPQ stage, in place: every layer of ``stage`` in ``bert`` (a ``BertModel``; float or fake-quantized
    layers) becomes a ``PQLinear`` / ``PQEmbedding`` fitted to its current weight.

    Args:
        bert: the model's ``BertModel`` (``qlib.bert.convert.find_bert``).
        stage: one of ``IPQ_STAGES``.
        centroids: k per layer (≤ 256); a layer with fewer blocks than k (BERT's token-type table) gets k = its
            number of blocks, which keeps it exact.
        block_size: d; default ``STAGE_BLOCK_SIZES[stage]``.
        iterations: k-means EM iterations.
        centroid_bits: fake-quantize each codebook on a symmetric per-tensor grid of these bits (iPQ + int8), or None.
        seed: k-means' initial draw (layer i uses ``seed + i``).

    Returns:
        The module paths replaced, in order.
    """
    if stage not in IPQ_STAGES:
        raise ValueError(f"stage must be one of {IPQ_STAGES}, got {stage!r}")
    centroid_spec = None if centroid_bits is None else QuantSpec(centroid_bits, "symmetric")
    done = []
    targets = [(name, m) for name, m in bert.named_modules()
               if isinstance(m, (nn.Linear, nn.Embedding)) and not isinstance(m, _ProductQuantized)
               and stage_of(name) == stage]
    for i, (name, module) in enumerate(targets):
        d = block_size or STAGE_BLOCK_SIZES[stage]
        blocks = module.weight.numel() // d
        quantizer = ProductQuantizer(min(centroids, blocks) if blocks >= 2 else centroids, d, iterations, seed + i)
        kind = PQEmbedding if isinstance(module, (nn.Embedding, QuantEmbedding)) else PQLinear
        parent, _, child = name.rpartition(".")
        setattr(bert.get_submodule(parent) if parent else bert, child, kind(module, quantizer, centroid_spec))
        done.append(name)
    return done


def product_quantize_all(bert: nn.Module, centroids: int = 256, iterations: int = 20,
                         centroid_bits: int | None = None, seed: int = 0) -> list[str]:
    """Every iPQ stage in ``IPQ_STAGES``' order, in place and with no fine-tuning between them (``product_quantize``
    with the same arguments): the layout of an iPQ model, e.g. to measure its file or its decoding cost; an iPQ
    *run* fine-tunes after each stage instead (``qlib.experiments.experiment.run``). Returns the paths replaced."""
    return [name for stage in IPQ_STAGES
            for name in product_quantize(bert, stage, centroids, iterations=iterations, centroid_bits=centroid_bits,
                                         seed=seed)]
