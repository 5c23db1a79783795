"""Bit packing of 1- to 8-bit unsigned integer codes into a byte buffer (the layout is part of the file format).

Layout (fixed, covered by a golden test; ``docs/format.md``): the codes are taken in row-major (C) order,
``c_0, c_1, ...``, and written into one little-endian bit stream, **least significant bit first**: bit ``k``
(``k = 0`` the LSB) of code ``c_i`` is bit ``i · bits + k`` of the stream, and stream bit ``t`` is bit
``t mod 8`` (LSB = 0) of byte ``t // 8``. So at 4 bits byte 0 is ``c_0 | c_1 << 4``, at 2 bits
``c_0 | c_1 << 2 | c_2 << 4 | c_3 << 6``, and at 3 bits ``c_2`` straddles bytes 0 and 1 (its low bit is
bit 6 of byte 0). This is the order of ``numpy.packbits(..., bitorder="little")`` at 1 bit. The last byte
is padded with zero bits; the buffer has ``packed_nbytes(numel, bits) = ceil(numel · bits / 8)`` bytes.

Codes are *unsigned* in ``[0, 2^bits)``: a signed grid ``[qmin, qmax]`` is stored as ``q - qmin`` (the
file format records ``qmin``), binary codes {-1, +1} as {0, 1}.

:func:`pack_bits_reference` / :func:`unpack_bits_reference` are the plain bit-by-bit specification (any
width); :func:`pack_bits` / :func:`unpack_bits` take a shift-and-or fast path for widths dividing 8 (1, 2,
4, 8) and the reference for 3, 5, 6, 7. Tests check both against each other and against golden bytes.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from qgnn.errors import ConfigError

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes", "pack_bits_reference", "unpack_bits_reference"]

# elements per chunk of the reference path: a multiple of 8, so every chunk starts on a byte boundary
# (8 codes of b bits fill exactly b bytes) and the bit matrix stays small for large embedding tables
_CHUNK = 1 << 20


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 8:
        raise ConfigError(f"bits must be an integer in 1..8 for bit packing, got {bits!r}")
    return int(bits)


def _check_numel(numel) -> int:
    if isinstance(numel, bool) or not isinstance(numel, numbers.Integral) or numel < 0:
        raise ConfigError(f"numel must be a non-negative integer, got {numel!r}")
    return int(numel)


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` codes packed at ``bits`` bits: ``ceil(numel · bits / 8)``."""
    return (_check_numel(numel) * _check_bits(bits) + 7) // 8


def _codes_u8(codes: Tensor, bits: int) -> Tensor:
    """Flat contiguous uint8 copy of ``codes`` after checking it is an integer tensor in [0, 2^bits)."""
    if not isinstance(codes, Tensor):
        raise ConfigError(f"codes must be a tensor, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ConfigError(f"codes must be an integer tensor (uint8 codes in [0, 2^bits)), got {codes.dtype}")
    flat = codes.detach().reshape(-1).cpu()
    if flat.numel():
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= (1 << bits):
            raise ConfigError(
                f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing, got values in [{lo}, {hi}]; "
                "store a signed grid as q - qmin"
            )
    return flat.to(torch.uint8).contiguous()


def _check_packed(packed: Tensor, bits: int, numel: int) -> Tensor:
    if not isinstance(packed, Tensor):
        raise ConfigError(f"packed must be a tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ConfigError(f"packed must be a 1-d uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    want = packed_nbytes(numel, bits)
    if packed.numel() != want:
        raise ConfigError(
            f"packed buffer has {packed.numel()} bytes but {numel} codes at {bits} bits need {want} "
            "(truncated or mislabelled data)"
        )
    return packed.detach().cpu().contiguous()


def _check_padding(out_bits: Tensor, numel: int, bits: int) -> None:
    pad = out_bits[numel * bits:]
    if pad.numel() and bool(pad.any()):
        raise ConfigError("packed buffer has non-zero padding bits after the last code (corrupt data)")


# --------------------------------------------------------------------------------------------------
# reference: explicit bit matrices, any width
# --------------------------------------------------------------------------------------------------


def pack_bits_reference(codes: Tensor, bits: int) -> Tensor:
    """The specification of the layout: expand every code into its ``bits`` bits (LSB first), concatenate,
    pad to whole bytes with zeros and assemble each group of 8 stream bits LSB first."""
    bits = _check_bits(bits)
    flat = _codes_u8(codes, bits)
    n = flat.numel()
    out = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8)
    shifts = torch.arange(bits, dtype=torch.uint8)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.int32)
    for start in range(0, n, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        stream = ((chunk.view(-1, 1) >> shifts) & 1).reshape(-1)  # [len · bits], bit i·b+k = bit k of c_i
        pad = (-stream.numel()) % 8
        if pad:
            stream = torch.cat([stream, stream.new_zeros(pad)])
        byte = (stream.view(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)
        first = start * bits // 8  # exact: start is a multiple of 8
        out[first:first + byte.numel()] = byte
    return out


def unpack_bits_reference(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits_reference`: 1-d uint8 codes, ``numel`` of them."""
    bits = _check_bits(bits)
    numel = _check_numel(numel)
    packed = _check_packed(packed, bits, numel)
    shifts8 = torch.arange(8, dtype=torch.uint8)
    weights = torch.tensor([1 << k for k in range(bits)], dtype=torch.int32)
    out = torch.empty(numel, dtype=torch.uint8)
    for start in range(0, numel, _CHUNK):
        stop = min(start + _CHUNK, numel)
        first, last = start * bits // 8, packed_nbytes(stop, bits)
        stream = ((packed[first:last].view(-1, 1) >> shifts8) & 1).reshape(-1)
        count = stop - start
        if stop == numel:
            _check_padding(stream, count, bits)
        out[start:stop] = (stream[:count * bits].view(count, bits).to(torch.int32) * weights).sum(1).to(torch.uint8)
    return out


# --------------------------------------------------------------------------------------------------
# fast paths: widths dividing 8 (k = 8 / bits codes per byte)
# --------------------------------------------------------------------------------------------------


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer ``codes`` (any shape, values in ``[0, 2^bits)``) into a 1-d uint8 buffer of
    :func:`packed_nbytes` bytes, in the layout of the module docstring. ConfigError on bad input."""
    bits = _check_bits(bits)
    if 8 % bits:
        return pack_bits_reference(codes, bits)
    flat = _codes_u8(codes, bits)
    if bits == 8:
        return flat.clone()
    per = 8 // bits
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.view(-1, per)
    out = groups[:, 0].clone()
    for j in range(1, per):
        out |= groups[:, j] << (j * bits)
    return out


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Unpack ``numel`` codes of ``bits`` bits from a buffer made by :func:`pack_bits` -> 1-d uint8.

    ConfigError when the buffer is not 1-d uint8, has the wrong length for (numel, bits) or has non-zero
    padding bits (a truncated or corrupt file)."""
    bits = _check_bits(bits)
    numel = _check_numel(numel)
    if 8 % bits:
        return unpack_bits_reference(packed, bits, numel)
    packed = _check_packed(packed, bits, numel)
    if bits == 8:
        return packed.clone()
    mask = (1 << bits) - 1
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
    out = ((packed.view(-1, 1) >> shifts) & mask).reshape(-1)
    if out[numel:].numel() and bool(out[numel:].any()):
        raise ConfigError("packed buffer has non-zero padding bits after the last code (corrupt data)")
    return out[:numel].contiguous()
