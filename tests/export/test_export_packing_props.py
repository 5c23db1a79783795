"""Property tests (hypothesis) of bit packing: round trips at every width and length, the fast paths equal the
bit-by-bit reference, zero padding, and rows of different widths packed one after another (A2Q's per-row
widths, as the exporter writes them and the runtime reads them back by byte offsets)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgnn.errors import ConfigError
from qgnn.export import pack_bits, pack_bits_reference, packed_nbytes, unpack_bits, unpack_bits_reference

# CI runs the whole suite in 15 minutes: a moderate number of examples, no per-example deadline (the first
# call of a torch op can be slow)
FAST = settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ folder in the tree


@st.composite
def codes_of(draw, max_len: int = 300):
    """(bits, codes): a width in 1..8 and a uint8 tensor of any length (0 and non-multiples of 8 included)."""
    bits = draw(st.integers(1, 8))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=max_len))
    return bits, torch.tensor(values, dtype=torch.uint8)


@FAST
@given(codes_of())
def test_round_trip_at_any_width_and_length(case):
    bits, codes = case
    n = codes.numel()
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(n, bits) == -(-n * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes)
    # the fast paths (widths dividing 8) and the reference are the same format
    assert torch.equal(pack_bits_reference(codes, bits), packed)
    assert torch.equal(unpack_bits_reference(packed, bits, n), codes)


@FAST
@given(codes_of())
def test_padding_bits_are_zero_and_checked(case):
    bits, codes = case
    n = codes.numel()
    packed = pack_bits(codes, bits)
    used = n * bits
    if used % 8 == 0:
        return  # no padding bit to look at
    pad_mask = (0xFF << (used % 8)) & 0xFF
    assert int(packed[-1]) & pad_mask == 0
    bad = packed.clone()
    bad[-1] |= pad_mask & -pad_mask  # set the lowest padding bit
    with pytest.raises(ConfigError, match="padding"):
        unpack_bits(bad, bits, n)


@FAST
@given(st.integers(1, 8), st.integers(0, 12), st.integers(0, 12), st.data())
def test_row_major_order_of_a_matrix(bits, rows, cols, data):
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=rows * cols, max_size=rows * cols))
    m = torch.tensor(values, dtype=torch.uint8).view(rows, cols)
    assert torch.equal(pack_bits(m, bits), pack_bits(m.reshape(-1), bits))
    assert torch.equal(pack_bits(m.t(), bits), pack_bits(m.t().contiguous().reshape(-1), bits))


@FAST
@given(st.lists(codes_of(max_len=40), max_size=6))
def test_rows_of_different_widths_split_back_by_byte_offsets(rows):
    buf = torch.cat([pack_bits(c, b) for b, c in rows]) if rows else torch.zeros(0, dtype=torch.uint8)
    assert buf.numel() == sum(packed_nbytes(c.numel(), b) for b, c in rows)
    pos = 0
    for bits, codes in rows:
        nb = packed_nbytes(codes.numel(), bits)
        assert torch.equal(unpack_bits(buf[pos:pos + nb], bits, codes.numel()), codes)
        pos += nb
