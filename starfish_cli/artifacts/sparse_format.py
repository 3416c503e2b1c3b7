"""Compressed sparse matrices for export: pure tensor functions that pack and unpack them.

Two layouts of a 2-D weight and its keep-mask (True = kept):
- bitmask: one bit per weight, each row packed into ceil(cols / 8) bytes, most significant bit
  first (numpy's `packbits(bitorder="big")`), plus the kept values in row-major order;
- N:M: the N kept values of every M consecutive weights of a row (rows × cols·N/M), plus each
  one's position in its group (0…M−1) in ceil(log2 M) bits, most significant bit first, packed
  row-major into one byte stream (2 bits per position for M = 4).
"""

import torch

_BIT_WEIGHTS = [128, 64, 32, 16, 8, 4, 2, 1]  # bit 7 of a byte is the first element


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """The 0/1 values along the last dimension packed into bytes, first value in the top bit; the
    last byte of each row is padded with zeros."""
    bits = bits.to(torch.uint8)
    pad = -bits.shape[-1] % 8
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    groups = bits.reshape(*bits.shape[:-1], -1, 8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return (groups * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` bits of every row of `packed` (the inverse of `pack_bits`), as bools."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :count].bool()


def pack_uints(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Whole numbers in [0, 2**bits) as one row-major stream of `bits`-bit fields, packed into bytes."""
    shifts = torch.arange(bits - 1, -1, -1, device=values.device)
    fields = (values.reshape(-1, 1).long() >> shifts) & 1
    return pack_bits(fields.reshape(-1))


def unpack_uints(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """The first `count` `bits`-bit fields of `packed` (the inverse of `pack_uints`), as int64."""
    fields = unpack_bits(packed.reshape(-1), count * bits).reshape(count, bits).long()
    return (fields << torch.arange(bits - 1, -1, -1, device=packed.device)).sum(-1)


def position_bits(m: int) -> int:
    """Bits per in-group position of an N:M pattern: ceil(log2 M)."""
    return max(1, (m - 1).bit_length())


def compress_bitmask(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bitmask rows × ceil(cols / 8) uint8, kept values in row-major order) of a 2-D weight."""
    return pack_bits(mask), weight[mask]


def expand_bitmask(bitmask: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The dense weight of `compress_bitmask`'s output; pruned weights are (positive) zeros."""
    mask = unpack_bits(bitmask, shape[1])
    weight = torch.zeros(shape, dtype=values.dtype, device=values.device)
    weight[mask] = values
    return weight


def compress_nm(weight: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept values rows × cols·N/M, packed in-group positions) of a weight whose mask keeps exactly
    N of every M (`pruning.masks.fits_nm(exactly=True)`); the kept values of a group stay in column order."""
    rows, cols = weight.shape
    groups = mask.reshape(rows, cols // m, m)
    # a stable sort puts each group's kept positions (key 0) first, in ascending order
    positions = torch.argsort((~groups).to(torch.uint8), dim=-1, stable=True)[..., :n]
    values = weight.reshape(rows, cols // m, m).gather(-1, positions)
    return values.reshape(rows, -1), pack_uints(positions, position_bits(m))


def expand_nm(values: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int], n: int, m: int) -> torch.Tensor:
    """The dense weight of `compress_nm`'s output; pruned weights are (positive) zeros."""
    rows, cols = shape
    index = unpack_uints(positions, rows * cols // m * n, position_bits(m)).reshape(rows, cols // m, n)
    weight = torch.zeros(rows, cols // m, m, dtype=values.dtype, device=values.device)
    weight.scatter_(-1, index.to(values.device), values.reshape(rows, cols // m, n))
    return weight.reshape(rows, cols)
