"""Tests of toolkit/packing.py: exact byte layout, round trips, sizes, bad widths."""
import math

import pytest
import torch

from toolkit.packing import pack_bits, unpack_bits


def test_one_bit_layout_first_field_lowest_bit():
    fields = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = pack_bits(fields, 1)
    # byte 0: bits 0, 2, 3, 7 set -> 1 + 4 + 8 + 128; byte 1: bit 0 (the padding is zero).
    assert packed.tolist() == [141, 1]
    assert packed.dtype == torch.uint8


def test_two_bit_layout():
    packed = pack_bits(torch.tensor([2, 0, 1, 2, 1]), 2)
    # 2 + (0 << 2) + (1 << 4) + (2 << 6) = 146; then 1.
    assert packed.tolist() == [146, 1]


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_round_trip_and_size(bits, n):
    g = torch.Generator().manual_seed(n * bits)
    fields = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.uint8)
    packed = pack_bits(fields, bits)
    assert packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, n), fields)


@pytest.mark.parametrize("bits", [0, 3, 8])
def test_bad_width_raises(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_bits(torch.zeros(4, dtype=torch.uint8), bits)
    with pytest.raises(ValueError, match="bits must be one of"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), bits, 4)
