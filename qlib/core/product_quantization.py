"""Product quantization of a weight matrix (Jégou et al. 2011), as Quant-Noise's iPQ uses it (Fan et al. 2021).

Each output row of W [out, in] is cut into blocks of ``block_size`` consecutive inputs, so W is a set of
n = out·in/d subvectors b_j of dimension d. One codebook of k centroids c_1 … c_k per layer is learned by k-means
(EM), and each block is replaced by its nearest centroid:

    Ŵ = [c_{a(j)}]_j,   a(j) = argmin_i ‖b_j - c_i‖²,   c_i = mean{ b_j : a(j) = i }

The layer is stored as its assignments a (one uint8 code per block for k ≤ 256) and its codebook (k·d floats), so
a matrix of out·in floats costs out·in/d bytes plus the codebook: at d = 8 and k = 256, about 1/32 of float32.

Why hand-written: fairseq's ``PQ`` (the reference implementation, in ``fairseq.modules.quantization.pq``) is part
of fairseq's training stack and mutates the model in place; faiss is a large C++ dependency for what is 30 lines
of torch. This follows fairseq's EM, including its rule for empty clusters (split the most populated one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_CENTROIDS = 256  # codes are stored as uint8


def blocks_of(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """The subvectors of ``weight``: row r's inputs ``j·d … (j+1)·d - 1`` form block ``r·(in/d) + j``.

    Shapes: weight [out, in] → [out·in/d, d].
    """
    if weight.dim() != 2:
        raise ValueError(f"product quantization takes a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1 or in_features % block_size:
        raise ValueError(f"block_size={block_size!r} must be a positive divisor of the {in_features} input features")
    return weight.reshape(out_features * (in_features // block_size), block_size)


def assign(blocks: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid of every block (squared Euclidean distance), computed in chunks of blocks.

    Shapes: blocks [n, d], centroids [k, d] → [n] int64.
    """
    norms = (centroids * centroids).sum(1)
    return torch.cat([(norms - 2 * part @ centroids.T).argmin(1) for part in blocks.split(chunk)])


def kmeans_plus_plus(blocks: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k initial centroids by k-means++ (Arthur & Vassilvitskii 2007): the first a random block, each next one a
    block drawn with probability proportional to its squared distance to the nearest centroid so far (uniformly
    when every block already sits on a centroid). Shapes: blocks [n, d] → [k, d]."""
    n = blocks.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest = ((blocks - blocks[chosen[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        total = nearest.sum()
        if total > 0:
            draw = torch.rand((), generator=generator, dtype=torch.float64) * float(total)
            index = int(torch.searchsorted(nearest.double().cumsum(0), draw).clamp_max(n - 1))
        else:
            index = int(torch.randint(n, (1,), generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, ((blocks - blocks[index]) ** 2).sum(1))
    return blocks[chosen].clone()


def _split_into(blocks: torch.Tensor, centroids: torch.Tensor, assignments: torch.Tensor, counts: torch.Tensor,
                empty: int) -> torch.Tensor:
    """Give the empty cluster ``empty`` half of the most populated cluster that can be split (its centroid copied
    ±ε, ε = 1e-8·(1 + ``|c|``), its blocks reassigned between the two), in place on ``centroids``; the new
    assignments. Raises ``ValueError`` when no cluster holds two distinct blocks."""
    for largest in torch.argsort(counts, descending=True, stable=True).tolist():
        if counts[largest] < 2:
            break
        eps = 1e-8 * (1 + centroids[largest].abs())
        members = torch.nonzero(assignments == largest).flatten()
        trial = torch.stack([centroids[largest] - eps, centroids[largest] + eps])
        closer = assign(blocks[members], trial) == 1
        if closer.any() and not closer.all():
            centroids[largest], centroids[empty] = trial[0], trial[1]
            assignments = assignments.clone()
            assignments[members[closer]] = empty
            return assignments
    raise ValueError(f"k-means emptied cluster {empty} of k={centroids.shape[0]} and no cluster has two distinct "
                     f"blocks to split: the {blocks.shape[0]} blocks hold fewer than k distinct values; use fewer "
                     "centroids")


def kmeans(blocks: torch.Tensor, k: int, iterations: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means by EM: centroids start by k-means++ seeding (fairseq starts from random blocks, which leaves more
    clusters merged in a poor local optimum); each iteration assigns every block to its nearest centroid (E) and
    moves each centroid to the mean of its blocks (M). A cluster left empty takes half of the most populated one:
    its centroid is copied with a small perturbation (±ε, ε = 1e-8·(1 + ``|c|``)), as fairseq does.

    Args:
        blocks: the n subvectors, [n, d].
        k: centroids, 1 ≤ k ≤ n.
        iterations: EM iterations.
        seed: the random draws of the seeding.

    Returns:
        (centroids [k, d] float32, assignments [n] int64).

    Raises:
        ValueError: k out of range, or an empty cluster with no cluster of two or more blocks left to split.
    """
    n = blocks.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k={k!r} centroids must be a positive integer no larger than the {n} blocks")
    blocks = blocks.detach().float()
    generator = torch.Generator().manual_seed(seed)
    centroids = kmeans_plus_plus(blocks, k, generator)
    for _ in range(iterations):
        assignments = assign(blocks, centroids)
        counts = torch.bincount(assignments, minlength=k)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            assignments = _split_into(blocks, centroids, assignments, counts, empty)
            counts = torch.bincount(assignments, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, blocks)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).float()
    return centroids, assign(blocks, centroids)


@dataclass(frozen=True)
class ProductQuantizer:
    """How to product-quantize one weight: ``centroids`` k (2..256: one uint8 code per block), ``block_size`` d
    (dividing the input features), ``iterations`` of EM and the ``seed`` of its initial draw. fairseq's defaults
    for BERT-like models: k = 256, d = 8 for FFN matrices and embeddings, 4 for attention projections."""

    centroids: int = 256
    block_size: int = 8
    iterations: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.centroids, bool) or not isinstance(self.centroids, int) or \
                not 2 <= self.centroids <= MAX_CENTROIDS:
            raise ValueError(f"centroids must be an integer k in 2..{MAX_CENTROIDS} (one uint8 code per block), "
                             f"got {self.centroids!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations!r}")

    def fit(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codebook [k, d] float32, codes [out, in/d] uint8) of ``weight`` [out, in] by k-means on its blocks."""
        blocks = blocks_of(weight, self.block_size)
        centroids, assignments = kmeans(blocks, self.centroids, self.iterations, self.seed)
        return centroids, assignments.to(torch.uint8).reshape(weight.shape[0], -1)

    # --- the weight-quantizer contract (qlib.core.weight_quantizer) ---------------------------------------------------

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """Ŵ = PQ(W) with a codebook fitted to ``weight`` now, and the straight-through estimator (∂Ŵ/∂W = 1): what
        Quant-Noise mixes into the float weight, block by block (``LayerQuant.noise_rate``)."""
        codebook, codes = self.fit(weight)
        return weight + (decode(codebook, codes).to(weight.dtype) - weight).detach()

    def fake_quantize_rows(self, weight: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of ``fake_quantize(weight)`` (the codebook is fitted to the whole table)."""
        return rows + (self.fake_quantize(weight.detach())[ids] - rows).detach()

    def encode(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """``codebook`` [k, d] float32 and ``codes`` [out, in/d] uint8 of ``weight``."""
        codebook, codes = self.fit(weight.detach())
        return {"codebook": codebook, "codes": codes}

    def decode(self, tensors: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        """Ŵ [out, in] from ``encode``'s tensors; refuses a codebook or codes of another shape than this quantizer
        and ``shape`` give."""
        codebook, codes = tensors.get("codebook"), tensors.get("codes")
        expected = {"codebook": (self.centroids, self.block_size), "codes": (shape[0], shape[1] // self.block_size)}
        for name, tensor in (("codebook", codebook), ("codes", codes)):
            if tensor is None or tuple(tensor.shape) != expected[name]:
                got = None if tensor is None else tuple(tensor.shape)
                raise ValueError(f"product-quantized weight: {name} of shape {got}, expected {expected[name]}")
        return decode(codebook.float(), codes)

    def describe(self, weight: torch.Tensor | None = None) -> dict[str, object]:
        """JSON-ready description that a checkpoint keeps and compares on load."""
        return {"method": "pq", "centroids": self.centroids, "block_size": self.block_size}


def decode(codebook: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Ŵ from its codebook [k, d] and codes [out, in/d]: row r, inputs ``j·d … (j+1)·d - 1`` are
    ``codebook[codes[r, j]]``; differentiable in the codebook (a centroid's gradient is the sum of its blocks').

    Shapes: → [out, in/d · d].
    """
    out_features, blocks = codes.shape
    return codebook[codes.long()].reshape(out_features, blocks * codebook.shape[1])
