"""Bit-packing: n integer codes of b bits each stored in ceil(n·b / 8) bytes, for any b in 2..8.

Codes are laid out as one little-endian bit stream (code i occupies bits i·b … i·b + b - 1), so 3-bit codes
cross byte boundaries and nothing is wasted. NumPy's ``packbits``/``unpackbits`` do the bit shuffling.
"""

from __future__ import annotations

import numpy as np
import torch

from qlib.common.checks import check_bits


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits take once packed: ceil(numel·bits / 8)."""
    return (numel * check_bits(bits) + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes into one little-endian bit stream: code i takes bits i·b … i·b + b - 1.

    Args:
        codes: integers in [0, 2^bits), any shape (read flat).
        bits: b in 2..8.

    Returns:
        The stream as a flat uint8 tensor.

    Shapes:
        codes [...] with n elements → [ceil(n·b / 8)].
    """
    check_bits(bits)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for {bits}-bit packing, "
                         f"got [{int(flat.min())}, {int(flat.max())}]")
    values = flat.numpy().astype(np.uint8)
    if bits == 8:
        return torch.from_numpy(values)  # one code a byte: the bit stream is the codes themselves
    bit_matrix = (values[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # [n, bits], least significant first
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little"))


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of ``pack``.

    Args:
        packed: the flat uint8 stream ``pack`` wrote.
        bits: b in 2..8, as packed.
        numel: n, the number of codes packed (the stream's last byte may hold padding bits).

    Returns:
        The codes, flat uint8.

    Shapes:
        packed [ceil(n·b / 8)] → [n].
    """
    check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed codes must be a flat uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() != packed_nbytes(numel, bits):
        raise ValueError(f"{numel} codes of {bits} bits need {packed_nbytes(numel, bits)} bytes, got {packed.numel()}")
    if bits == 8:
        return packed.clone()
    bit_matrix = np.unpackbits(packed.numpy(), count=numel * bits, bitorder="little").reshape(numel, bits)
    values = (bit_matrix.astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
    return torch.from_numpy(values)
