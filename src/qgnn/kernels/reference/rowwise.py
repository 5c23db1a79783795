"""Packed rows and the neighbourhood sum over them: the plain-torch specification of the runtime's
aggregation kernel.

**Layout** (fbgemm's *fused rowwise* layout, so that its ``embedding_bag_*_rowwise_offsets`` kernels read the
same bytes; :mod:`qgnn.kernels.cpu.fbgemm`). Row j of a table of ``C`` channels at container width
``b`` in {8, 4, 2} holds the unsigned codes ``u_j0 .. u_j,C-1`` (``0 <= u < 2^b``) and then a scale and a bias::

    b = 8:  C bytes                         + float32 scale + float32 bias   (C + 8 bytes)
    b = 4:  ceil(C / 2) bytes, 2 codes each + float16 scale + float16 bias   (ceil(C/2) + 4 bytes)
    b = 2:  ceil(C / 4) bytes, 4 codes each + float16 scale + float16 bias   (ceil(C/4) + 4 bytes)

Sub-byte codes fill a byte from its low bits up: column c sits at bits ``b·(c mod 8/b)`` of byte
``c // (8/b)``. The row's value is ``v_jc = scale_j · u_jc + bias_j``.

Tables that are only multiplied, never aggregated (``fields=False``: GCN's input), hold the code bytes alone,
*planar*: with ``nb`` bytes a row, ``ceil(C / (8/b))`` rounded up to a multiple of 4 for sub-byte containers,
column c sits at bits ``b·(c // nb)`` of byte ``c mod nb`` (4 bits: byte j holds columns j and j + nb; the
columns past C are zero). Unpacking then writes each field as one contiguous run of columns, computed on
32-bit words (:func:`unpack_rows`; the rounding lets every row start on a word), instead of interleaving single
bytes: fewer, contiguous passes for the GEMM that reads them.

The runtime stores an activation ``x̂ = s (q − z)`` of a ``[qmin, qmax]`` grid as ``u = q − qmin`` with row
scale 1 and row bias ``qmin − z`` (integers, exact in float16 for any grid of <= 8 bits), and multiplies by
``s`` after the sum: the packed table is exactly the codes, and the float16 fields cost no precision.

**Aggregation** over a CSR graph (``indptr`` [M + 1], ``indices`` [nnz] into the table's rows, optional
``weights`` [nnz])::

    out[i, c] = Σ_{k = indptr[i]}^{indptr[i+1] − 1} w_k · v_{indices[k], c}          (mode "sum")
    out[i, c] = that sum / (indptr[i+1] − indptr[i])     (mode "mean"; 0 for an empty row)

in float32. The reference decodes the rows it needs and sums in float64 (so it is the exact value of the
float32 inputs); a fast kernel accumulates in float32 and must agree within float32 rounding of the sum
(tests state the tolerance).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgnn.errors import ConfigError

__all__ = ["CONTAINER_BITS", "container_bits", "row_bytes", "planar_width", "pack_rows", "pack_fused_codes",
           "unpack_rows", "unpack_planar_into", "rowwise_aggregate_reference", "check_csr"]

CONTAINER_BITS = (8, 4, 2)
MODES = ("sum", "mean")


def container_bits(bits: int) -> int:
    """The narrowest container (8, 4 or 2 bits) that holds codes of ``bits`` bits."""
    if not 1 <= int(bits) <= 8:
        raise ConfigError(f"codes of {bits} bits do not fit a row container (1..8 bits)")
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def _check_bits(bits: int) -> int:
    if bits not in CONTAINER_BITS:
        raise ConfigError(f"row container width must be one of {CONTAINER_BITS}, got {bits}")
    return bits


def _code_bytes(channels: int, bits: int) -> int:
    per = 8 // bits
    return (channels + per - 1) // per


def _planar_bytes(channels: int, bits: int) -> int:
    """Code bytes of a planar row: sub-byte rows rounded up to whole 32-bit words (module docstring)."""
    nb = _code_bytes(channels, bits)
    return nb if bits == 8 else -(-nb // 4) * 4


def row_bytes(channels: int, bits: int, fields: bool = True) -> int:
    """Bytes of one packed row of ``channels`` codes at container width ``bits`` (with ``fields``: scale and
    bias included; without, the planar codes alone, for tables that are only multiplied, never aggregated)."""
    _check_bits(bits)
    if not fields:
        return _planar_bytes(channels, bits)
    return _code_bytes(channels, bits) + (8 if bits == 8 else 4)


def planar_width(channels: int, bits: int) -> int:
    """Columns of a planar table's codes unpacked with their padding (``unpack_rows(..., pad=True)``)."""
    return channels if bits == 8 else (8 // bits) * _planar_bytes(channels, bits)


def pack_rows(u: Tensor, bits: int, scale: Tensor | float = 1.0, bias: Tensor | float = 0.0,
              out: Tensor | None = None, fields: bool = True, keep_fields: bool = False) -> Tensor:
    """Fused rows (module docstring) of unsigned codes ``u`` [N, C] (any integer dtype, ``0 <= u < 2^bits``)
    with per-row (or scalar) ``scale`` and ``bias``; written into ``out`` [N, row_bytes] when given.
    ``fields=False``: the code bytes alone (no scale / bias). ``keep_fields``: write only the codes into
    ``out``'s rows and leave their scale / bias bytes as they are (a table whose fields are written once)."""
    _check_bits(bits)
    if keep_fields and (out is None or not fields):
        raise ConfigError("pack_rows: keep_fields needs fused rows in out")
    if u.dim() != 2:
        raise ConfigError(f"pack_rows needs codes [N, C], got {tuple(u.shape)}")
    n, c = u.shape
    rb = row_bytes(c, bits, fields)
    if out is None:
        out = torch.empty((n, rb), dtype=torch.uint8, device=u.device)
    elif out.shape != (n, rb) or out.dtype != torch.uint8:
        raise ConfigError(f"pack_rows: out must be uint8 [{n}, {rb}], got {out.dtype} {tuple(out.shape)}")
    nb = _code_bytes(c, bits) if fields else _planar_bytes(c, bits)
    u8 = u.to(torch.uint8)
    if bits == 8:
        out[:, :c] = u8
    elif not fields:  # planar: field k of byte j holds column j + k·nb
        per = 8 // bits
        if per * nb != c:
            u8 = torch.cat([u8, u8.new_zeros((n, per * nb - c))], 1)
        torch.bitwise_left_shift(u8[:, (per - 1) * nb:], bits * (per - 1), out=out)
        for k in range(per - 1):
            out |= u8[:, k * nb:(k + 1) * nb] << (bits * k) if k else u8[:, :nb]
        return out
    else:
        pack_fused_codes(u8, bits, out[:, :nb])
    if not fields or keep_fields:
        return out
    ftype = torch.float32 if bits == 8 else torch.float16
    fsize = 4 if bits == 8 else 2
    sb = torch.empty((n, 2), dtype=ftype, device=u.device)
    sb[:, 0] = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).to(ftype) if torch.is_tensor(scale) else scale
    sb[:, 1] = torch.as_tensor(bias, dtype=torch.float32).reshape(-1).to(ftype) if torch.is_tensor(bias) else bias
    out[:, nb:nb + 2 * fsize] = sb.view(torch.uint8).view(n, 2 * fsize)
    return out


def pack_fused_codes(u8: Tensor, bits: int, body: Tensor) -> Tensor:
    """The code bytes of fused rows (sub-byte: column c at bits ``b·(c mod 8/b)`` of byte ``c // (8/b)``) of
    uint8 codes ``u8`` [N, C], written into ``body`` [N, ceil(C / (8/b))] (a table's rows up to their fields).
    No checks: :func:`pack_rows` is the checked entry point; the runtime calls this per chunk of a table it
    built."""
    n, c = u8.shape
    if bits == 8:
        return body.copy_(u8)
    per = 8 // bits
    nb = body.size(1)
    if c % per:
        u8 = torch.cat([u8, u8.new_zeros((n, per * nb - c))], 1)
    u8 = u8.contiguous()
    if bits == 4 and u8.numel():
        # two codes lo, hi read as one little-endian int16 v = lo | hi << 8: (v | v >> 4) has the byte
        # lo | hi << 4 in its low half (lo < 16), which the cast to uint8 keeps. Three passes on half as many
        # elements instead of strided byte gathers.
        v = u8.view(torch.int16)
        return body.copy_(torch.bitwise_or(v, v >> 4).to(torch.uint8))
    grouped = u8.reshape(n, nb, per)
    torch.bitwise_left_shift(grouped[:, :, per - 1], bits * (per - 1), out=body)
    for k in range(per - 1):
        body |= grouped[:, :, k] << (bits * k) if k else grouped[:, :, 0]
    return body


def unpack_rows(rows: Tensor, bits: int, channels: int, fields: bool = True,
                pad: bool = False, out: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(codes uint8 [N, C], scale float32 [N], bias float32 [N]) of fused rows (``fields=False``: codes
    alone, scale and bias None; with ``pad``, planar codes keep their zero padding columns:
    [N, :func:`planar_width`]). ``out``: planar codes only, with ``pad``: a uint8 [N, planar_width] to write
    them into (a GEMM's input buffer)."""
    _check_bits(bits)
    n = rows.size(0)
    nb = _code_bytes(channels, bits) if fields else _planar_bytes(channels, bits)
    rb = row_bytes(channels, bits, fields)
    if rows.dim() != 2 or rows.size(1) != rb or rows.dtype != torch.uint8:
        raise ConfigError(f"packed rows of {channels} channels at {bits} bits must be uint8 "
                          f"[N, {rb}], got {rows.dtype} {tuple(rows.shape)}")
    if out is not None and (fields or not pad or out.shape != (n, planar_width(channels, bits))
                            or out.dtype != torch.uint8):
        raise ConfigError(f"unpack_rows writes into out only planar codes with pad: uint8 "
                          f"[{n}, {planar_width(channels, bits)}], got {out.dtype} {tuple(out.shape)}")
    body = rows[:, :nb]
    if bits == 8:
        if out is not None:
            return out.copy_(body), None, None
        u = body.clone()
    elif not fields:
        return _unpack_planar(body, bits, channels, pad, out), None, None
    else:
        per, mask = 8 // bits, (1 << bits) - 1
        planes = torch.empty((n, nb, per), dtype=torch.uint8, device=rows.device)
        torch.bitwise_right_shift(body, bits * (per - 1), out=planes[:, :, per - 1])  # the top field: no mask
        for k in range(per - 1):
            plane = planes[:, :, k]
            torch.bitwise_right_shift(body, bits * k, out=plane) if k else plane.copy_(body)
            plane.bitwise_and_(mask)
        u = planes.view(n, nb * per)[:, :channels]
    if not fields:
        return u.contiguous(), None, None
    ftype, fsize = (torch.float32, 4) if bits == 8 else (torch.float16, 2)
    # a copy (clone), not .contiguous(): a one-row slice is "contiguous" at an offset the float view rejects
    sb = rows[:, nb:nb + 2 * fsize].clone(memory_format=torch.contiguous_format).view(ftype).to(torch.float32)
    return u.contiguous(), sb[:, 0].contiguous(), sb[:, 1].contiguous()


def unpack_planar_into(body: Tensor, bits: int, out: Tensor) -> Tensor:
    """Planar code bytes ``body`` [N, nb] (a table's rows) unpacked with their padding into ``out`` uint8
    [N, (8/b)·nb]. No checks: :func:`unpack_rows` is the checked entry point; the runtime calls this per GEMM
    chunk of a table it built."""
    if bits == 8:
        return out.copy_(body)
    return _unpack_planar(body, bits, body.size(1) * (8 // bits), True, out)


def _unpack_planar(body: Tensor, bits: int, channels: int, pad: bool = False, out: Tensor | None = None) -> Tensor:
    """Planar code bytes [N, nb] -> codes uint8 [N, C]: field k of every byte is the run of columns
    ``k·nb .. (k+1)·nb − 1``, extracted four bytes at a time on int32 words, written in place, where the rows
    allow. ``pad``: return all ``(8/b)·nb`` columns (the last ones zero) instead of copying out the first C;
    ``out``: where to write them."""
    n, nb = body.shape
    per, mask = 8 // bits, (1 << bits) - 1
    if out is None:
        out = torch.empty((n, per * nb), dtype=torch.uint8, device=body.device)
    # the widest word (8 or 4 bytes) on which both tables' rows start and the row's bytes end
    word = next((w for w in (8, 4) if nb % w == 0 and all(
        t.storage_offset() % w == 0 and t.stride(0) % w == 0 and t.stride(1) == 1 for t in (body, out))), 0)
    if word and nb > 0:
        wtype = torch.int64 if word == 8 else torch.int32
        src = body.view(wtype)
        m = int.from_bytes(bytes([mask] * word), "little", signed=True)
        for k in range(per):
            dst = out[:, k * nb:(k + 1) * nb].view(wtype)  # rows strided, words contiguous
            if k:
                torch.bitwise_right_shift(src, bits * k, out=dst)
                dst.bitwise_and_(m)  # also drops what the shift carried in from the next byte
            else:
                torch.bitwise_and(src, m, out=dst)
    else:
        for k in range(per):
            field = out[:, k * nb:(k + 1) * nb]
            torch.bitwise_right_shift(body, bits * k, out=field) if k else field.copy_(body)
            field.bitwise_and_(mask)
    return out if pad or per * nb == channels else out[:, :channels].contiguous()


def check_csr(indptr: Tensor, indices: Tensor, weights: Tensor | None, num_rows: int) -> None:
    """One clear error for a malformed CSR over a table of ``num_rows`` rows."""
    if indptr.dim() != 1 or indptr.numel() < 1 or indices.dim() != 1:
        raise ConfigError("CSR needs indptr [M + 1] and indices [nnz]")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel() or bool((indptr[1:] < indptr[:-1]).any()):
        raise ConfigError("CSR indptr must start at 0, never decrease and end at len(indices)")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_rows):
        raise ConfigError(f"CSR indices must lie in [0, {num_rows})")
    if weights is not None and weights.shape != indices.shape:
        raise ConfigError(f"CSR weights must be [{indices.numel()}], got {tuple(weights.shape)}")


def rowwise_aggregate_reference(rows: Tensor, bits: int, channels: int, indptr: Tensor, indices: Tensor,
                                weights: Tensor | None = None, mode: str = "sum") -> Tensor:
    """``out[i] = Σ_k w_k · v_{indices[k]}`` over CSR row i (module docstring), float32 [M, C]."""
    if mode not in MODES:
        raise ConfigError(f"unknown aggregation mode {mode!r}; valid: {', '.join(MODES)}")
    check_csr(indptr, indices, weights, rows.size(0))
    m = indptr.numel() - 1
    u, scale, bias = unpack_rows(rows, bits, channels)
    v = u.to(torch.float64) * scale.to(torch.float64).view(-1, 1) + bias.to(torch.float64).view(-1, 1)
    msg = v.index_select(0, indices.long())
    if weights is not None:
        msg = msg * weights.to(torch.float64).view(-1, 1)
    counts = (indptr[1:] - indptr[:-1]).long()
    target = torch.repeat_interleave(torch.arange(m, device=rows.device), counts)
    out = torch.zeros((m, channels), dtype=torch.float64, device=rows.device).index_add_(0, target, msg)
    if mode == "mean":
        out = out / counts.clamp(min=1).to(torch.float64).view(-1, 1)
    return out.to(torch.float32)
