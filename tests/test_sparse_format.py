"""Packing and unpacking the export's sparse layouts: hand-checked bytes and round trips."""

import numpy as np
import pytest
import torch

from starfish_cli.pruning.masks import nm_mask
from starfish_cli.pruning.masks import fits_nm
from starfish_cli.artifacts.sparse_format import (
    compress_bitmask, compress_nm, expand_bitmask, expand_nm, pack_bits, pack_uints, unpack_bits,
    unpack_uints,
)


def test_bits_pack_most_significant_first_like_numpy():
    bits = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    packed = pack_bits(bits)
    assert packed.tolist() == [[0b10000001, 0b11000000], [0b01000000, 0b01000000]]
    assert packed.numpy().tolist() == np.packbits(bits.numpy(), axis=-1, bitorder="big").tolist()
    assert torch.equal(unpack_bits(packed, 10), bits)


def test_two_bit_positions_pack_four_to_a_byte():
    packed = pack_uints(torch.tensor([3, 0, 1, 2, 1]), bits=2)
    assert packed.tolist() == [0b11000110, 0b01000000]
    assert unpack_uints(packed, 5, bits=2).tolist() == [3, 0, 1, 2, 1]


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 9), (13, 8), (8, 17), (192, 64)])
def test_bitmask_round_trip_on_any_shape(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    weight = torch.randn(shape, generator=generator)
    mask = torch.rand(shape, generator=generator) < 0.3
    weight = weight * mask
    bitmask, values = compress_bitmask(weight, mask)
    assert bitmask.dtype == torch.uint8 and bitmask.shape == (shape[0], -(-shape[1] // 8))
    assert values.numel() == int(mask.sum())
    assert torch.equal(values, weight[mask])  # row-major order
    assert torch.equal(expand_bitmask(bitmask, values, shape), weight)


def test_bitmask_of_an_empty_and_a_full_mask():
    weight = torch.randn(3, 11)
    for mask in (torch.zeros(3, 11, dtype=torch.bool), torch.ones(3, 11, dtype=torch.bool)):
        assert torch.equal(expand_bitmask(*compress_bitmask(weight * mask, mask), (3, 11)), weight * mask)


@pytest.mark.parametrize("n,m,shape", [(2, 4, (5, 12)), (4, 8, (3, 16)), (1, 4, (1, 4)), (3, 8, (7, 24)), (1, 2, (9, 6))])
def test_nm_round_trip(n, m, shape):
    generator = torch.Generator().manual_seed(n * 100 + m)
    weight = torch.randn(shape, generator=generator)
    mask = nm_mask(weight.abs(), n, m)
    weight = weight * mask
    assert fits_nm(mask, n, m, exactly=True)
    values, positions = compress_nm(weight, mask, n, m)
    assert values.shape == (shape[0], shape[1] * n // m)
    bits = max(1, (m - 1).bit_length())
    assert positions.dtype == torch.uint8 and positions.numel() == -(-values.numel() * bits // 8)
    assert torch.equal(expand_nm(values, positions, shape, n, m), weight)


def test_nm_keeps_group_order_and_positions():
    weight = torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 2.0, 0.0, 0.0]])
    mask = weight != 0
    values, positions = compress_nm(weight, mask, 2, 4)
    assert values.tolist() == [[5.0, 7.0, 1.0, 2.0]]
    assert unpack_uints(positions, 4, bits=2).tolist() == [1, 3, 0, 1]


def test_exact_nm_rejects_fewer_kept_or_ragged_rows():
    mask = nm_mask(torch.rand(4, 8), 2, 4)
    assert fits_nm(mask, 2, 4, exactly=True)
    mask[0, :4] = False
    assert not fits_nm(mask, 2, 4, exactly=True)
    assert not fits_nm(torch.ones(2, 6, dtype=torch.bool), 2, 4, exactly=True)
