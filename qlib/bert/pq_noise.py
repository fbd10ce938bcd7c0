"""Quant-Noise before iPQ (Fan et al. 2021, sec. 4): train the float model with product-quantization noise, so that
the iPQ stages that follow (``qlib.bert.pq_modules``) find a model robust to them.

Each layer iPQ will quantize gets a ``PQNoise`` parametrization of its weight (``torch.nn.utils.parametrize``: the
parameter stays the float W, and the forward pass sees W̃): in training, W̃ = ``pq_noise(W, C, p)``, a fraction p of
W's blocks replaced by their nearest centroid of the layer's codebook C (``qlib.core.quant_noise.pq_noise``); in
evaluation, W itself. The blocks are those iPQ will use (fairseq's block size of the layer's stage) and so is k.

The noise's codebook is an approximation, stated: fitting k-means to every layer at every step costs more than the
step itself on a CPU, so each C is fitted by k-means on a random sample of ``fit_sample`` of the layer's current
blocks, and refitted every ``refit_every`` training steps; the blocks are assigned to it at every step.
``remove_pq_noise`` takes the parametrizations off again (the float weights stay as trained) before iPQ.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from qlib.bert.pq_modules import STAGE_BLOCK_SIZES, stage_of
from qlib.core.product_quantization import ProductQuantizer, blocks_of
from qlib.core.quant_noise import pq_noise
from qlib.core.quantizers import QuantSpec

REFIT_EVERY = 200
"""Training steps between two k-means fits of a layer's noise codebook."""
FIT_SAMPLE = 16384
"""Blocks of a layer each fit sees (64 per centroid at k = 256)."""


class PQNoise(nn.Module):
    """A weight's parametrization W ↦ W̃ = pq_noise(W, C, p) in training, W in evaluation; C [k, d] is refitted
    every ``refit_every`` training calls. C and the count of training calls are buffers (they follow the model's
    device and are in its state dict), and so is the mask generator's state, as the module's extra state: a training
    snapshot (``qlib.experiments.snapshots``) resumes with the same masks.

    Args:
        p: the noise rate in [0, 1].
        quantizer: k, d, the EM iterations and the seed of the codebook's fit and of the block masks.
        centroid_spec: the centroids' grid (iPQ + int8: 8-bit centroids), or None for float centroids.
        refit_every: training calls between two fits.
        fit_sample: blocks each fit sees (all of them when the weight has fewer).
    """

    def __init__(self, p: float, quantizer: ProductQuantizer, centroid_spec: QuantSpec | None = None,
                 refit_every: int = REFIT_EVERY, fit_sample: int = FIT_SAMPLE) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"noise rate p must be in [0, 1], got {p!r}")
        for name, value in (("refit_every", refit_every), ("fit_sample", fit_sample)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.p, self.quantizer, self.centroid_spec = p, quantizer, centroid_spec
        self.refit_every, self.fit_sample = refit_every, fit_sample
        self.generator = torch.Generator().manual_seed(quantizer.seed)
        self.register_buffer("codebook", torch.zeros(quantizer.centroids, quantizer.block_size))  # fitted at step 0
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def refit(self, weight: torch.Tensor) -> None:
        """Fit the codebook by k-means on ``fit_sample`` random blocks of ``weight`` [out, in]."""
        blocks = blocks_of(weight.detach().float(), self.quantizer.block_size)
        sample = torch.randperm(blocks.shape[0], generator=self.generator)[:self.fit_sample].to(blocks.device)
        codebook, _ = self.quantizer.fit(blocks[sample])
        self.codebook = codebook if self.centroid_spec is None else self.centroid_spec.fake_quantize(codebook)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return weight
        if int(self.steps) % self.refit_every == 0:
            self.refit(weight)
        self.steps += 1
        return pq_noise(weight, self.codebook, self.p, self.generator)

    def get_extra_state(self) -> torch.Tensor:
        """The mask generator's state."""
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def extra_repr(self) -> str:
        return f"p={self.p}, quantizer={self.quantizer}, centroid_spec={self.centroid_spec}, " \
               f"refit_every={self.refit_every}, fit_sample={self.fit_sample}"


def add_pq_noise(bert: nn.Module, p: float, centroids: int = 256, centroid_bits: int | None = None,
                 iterations: int = 20, seed: int = 0, refit_every: int = REFIT_EVERY,
                 fit_sample: int = FIT_SAMPLE) -> list[str]:
    """Parametrize, in place, the weight of every layer of ``bert`` that an iPQ stage quantizes (``stage_of``) with
    ``PQNoise`` at rate ``p``: the stage's block size, k = ``centroids`` (or the layer's blocks, if fewer, as
    ``product_quantize`` does), ``centroid_bits`` 8 for iPQ + int8's centroids; layer i seeds with ``seed + i``.

    Returns:
        The module paths parametrized, in order.
    """
    centroid_spec = None if centroid_bits is None else QuantSpec(centroid_bits, "symmetric")
    done = []
    targets = [(name, m) for name, m in bert.named_modules()
               if isinstance(m, (nn.Linear, nn.Embedding)) and stage_of(name) is not None]
    for i, (name, module) in enumerate(targets):
        d = STAGE_BLOCK_SIZES[stage_of(name)]
        k = min(centroids, module.weight.numel() // d, fit_sample)
        quantizer = ProductQuantizer(k, d, iterations, seed + i)
        noise = PQNoise(p, quantizer, centroid_spec, refit_every, fit_sample)
        # unsafe: skip the trial call that checks the shape (W̃ has W's), which would count as a training step
        parametrize.register_parametrization(module, "weight", noise, unsafe=True)
        done.append(name)
    return done


def remove_pq_noise(bert: nn.Module) -> list[str]:
    """Take every ``PQNoise`` parametrization off ``bert``'s layers, in place, keeping the float weights as trained
    (iPQ then quantizes those). Returns the module paths restored."""
    done = []
    for name, module in list(bert.named_modules()):
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, PQNoise) for p in module.parametrizations["weight"]):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            done.append(name)
    return done
