"""Bit packing (qgnn.export.packing): golden bytes fix the layout (LSB-first bit stream, docs/format.md);
fast paths equal the bit-by-bit reference; round trips at every width; bad input raises ConfigError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qgnn.errors import ConfigError
from qgnn.export import pack_bits, pack_bits_reference, packed_nbytes, unpack_bits, unpack_bits_reference

# codes c_i = (5 i + 3) mod 2^b, i = 0..10, packed by hand (LSB-first stream): these bytes ARE the format
GOLDEN = {
    1: [85, 5],
    2: [147, 147, 19],
    3: [67, 117, 198, 67, 1],
    4: [131, 45, 199, 97, 11, 5],
    5: [3, 53, 121, 121, 48, 11, 86],
    6: [3, 210, 72, 23, 23, 154, 43, 92, 3],
    7: [3, 68, 67, 114, 225, 132, 76, 43, 88, 13],
    8: [3, 8, 13, 18, 23, 28, 33, 38, 43, 48, 53],
}


def golden_codes(bits: int) -> torch.Tensor:
    return torch.tensor([(5 * i + 3) % (1 << bits) for i in range(11)], dtype=torch.uint8)


@pytest.mark.parametrize("bits", range(1, 9))
def test_golden_bytes(bits):
    codes = golden_codes(bits)
    for fn in (pack_bits, pack_bits_reference):
        assert fn(codes, bits).tolist() == GOLDEN[bits]
    for fn in (unpack_bits, unpack_bits_reference):
        assert torch.equal(fn(torch.tensor(GOLDEN[bits], dtype=torch.uint8), bits, 11), codes)


def test_readable_examples():
    # 4 bits: byte = c0 | c1 << 4; 2 bits: c0 | c1<<2 | c2<<4 | c3<<6; 1 bit: numpy's little bit order
    assert pack_bits(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist() == [0x21, 0x03]
    assert pack_bits(torch.tensor([1, 2, 3, 0, 2], dtype=torch.uint8), 2).tolist() == [0b00111001, 0b10]
    bits = np.random.default_rng(0).integers(0, 2, size=37).astype(np.uint8)
    assert pack_bits(torch.from_numpy(bits), 1).numpy().tolist() == np.packbits(bits, bitorder="little").tolist()


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 4099])
def test_round_trip_and_reference(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.int64).to(torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1 and packed.numel() == packed_nbytes(n, bits)
    assert torch.equal(packed, pack_bits_reference(codes, bits))
    assert torch.equal(unpack_bits(packed, bits, n), codes)
    assert torch.equal(unpack_bits_reference(packed, bits, n), codes)


def test_any_shape_row_major_and_dtypes():
    codes = torch.arange(24).reshape(2, 3, 4) % 8
    packed = pack_bits(codes, 3)  # int64 input accepted, packed in row-major order
    assert torch.equal(packed, pack_bits(codes.reshape(-1).to(torch.uint8), 3))
    assert torch.equal(unpack_bits(packed, 3, 24).view(2, 3, 4).long(), codes)
    # non-contiguous input packs its logical (row-major) order
    t = torch.arange(12).reshape(3, 4).t() % 4
    assert torch.equal(unpack_bits(pack_bits(t, 2), 2, 12), t.reshape(-1).to(torch.uint8))


def test_reference_chunks(monkeypatch):
    # chunk boundaries of the reference must not change the bytes (3 bits: codes straddle bytes)
    import qgnn.export.packing as packing

    codes = torch.randint(0, 8, (1003,), generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    whole = packing.pack_bits_reference(codes, 3)
    monkeypatch.setattr(packing, "_CHUNK", 64)
    assert torch.equal(packing.pack_bits_reference(codes, 3), whole)
    assert torch.equal(packing.unpack_bits_reference(whole, 3, 1003), codes.to(torch.uint8))


def test_packed_nbytes():
    assert [packed_nbytes(10, b) for b in range(1, 9)] == [2, 3, 4, 5, 7, 8, 9, 10]
    assert packed_nbytes(0, 3) == 0
    with pytest.raises(ConfigError):
        packed_nbytes(-1, 4)
    with pytest.raises(ConfigError):
        packed_nbytes(4, 9)


@pytest.mark.parametrize("bits", [0, 9, 2.0, True])
def test_bad_bits(bits):
    with pytest.raises(ConfigError, match="bits"):
        pack_bits(torch.zeros(3, dtype=torch.uint8), bits)


def test_bad_codes():
    with pytest.raises(ConfigError, match=r"\[0, 15\]"):
        pack_bits(torch.tensor([16], dtype=torch.uint8), 4)
    with pytest.raises(ConfigError, match="q - qmin"):
        pack_bits(torch.tensor([-1, 2]), 4)
    with pytest.raises(ConfigError, match="integer"):
        pack_bits(torch.tensor([1.0]), 4)
    with pytest.raises(ConfigError, match="integer"):
        pack_bits(torch.tensor([True]), 1)


@pytest.mark.parametrize("bits", [3, 4])
def test_bad_buffers(bits):
    packed = pack_bits(torch.full((5,), 1, dtype=torch.uint8), bits)
    with pytest.raises(ConfigError, match="truncated"):
        unpack_bits(packed[:-1], bits, 5)
    with pytest.raises(ConfigError, match="1-d uint8"):
        unpack_bits(packed.to(torch.int8), bits, 5)
    with pytest.raises(ConfigError, match="1-d uint8"):
        unpack_bits(packed.view(1, -1), bits, 5)
    bad = packed.clone()
    bad[-1] |= 0x80  # a bit beyond the last code
    with pytest.raises(ConfigError, match="padding"):
        unpack_bits(bad, bits, 5)
