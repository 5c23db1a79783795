"""Packed rows (fbgemm's fused rowwise layout, qgnn.kernels.reference.rowwise) and the neighbourhood sum over
them: the layout's bytes and round trip at 8 / 4 / 2 bits, and fbgemm's rowwise embedding bag against the
float64 reference on awkward graphs (isolated targets, one node, no edges, a hub of 100,000 neighbours,
C not a multiple of 8, int32 and int64 indices).

Tolerances. The reference sums exactly (float64) and rounds once to float32; fbgemm forms each term
w · (scale · u + bias) in float32 and adds the terms one after another in float32. Per output element:

    |fbgemm − reference| <= (1e-5 + 4 · 2^-24 · sqrt(deg)) · Σ_k |w_k| |v_{j_k, c}|       (mean: / deg)

1e-5 covers the few float32 roundings of each term and of the result (a few 2^-24 each, with margin); the
second part is the running sum's rounding, a random walk of ``deg`` steps of at most 2^-24 of the partial
sum each (standard deviation about 2^-24 · sqrt(deg) / 3 of Σ|terms| for terms of one sign, so 4 · 2^-24 ·
sqrt(deg) is 12 of them; a 100,000-neighbour hub measured 1.5e-5 against a bound of 8.6e-5).
With the runtime's own rows (scale 1, integer bias −z, integer or no weights) every term and partial sum is
an integer below 2^24, so fbgemm's float32 sum is exact and equals the reference bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgnn.errors import ConfigError
from qgnn.kernels.cpu.fbgemm import fbgemm_available, rowwise_aggregate_fbgemm
from qgnn.kernels.intops import rowwise_aggregate
from qgnn.kernels.reference.rowwise import (
    CONTAINER_BITS,
    check_csr,
    container_bits,
    pack_fused_codes,
    pack_rows,
    planar_width,
    row_bytes,
    rowwise_aggregate_reference,
    unpack_planar_into,
    unpack_rows,
)

needs_fbgemm = pytest.mark.skipif(not fbgemm_available()[0], reason=f"no fbgemm here: {fbgemm_available()[1]}")

# as tests/export/test_export_packing_props.py: moderate example counts, no deadline, no .hypothesis/ folder
FAST = settings(max_examples=150, deadline=None, database=None)

U = 2.0**-24  # float32 unit roundoff
CHANNELS = (1, 3, 8, 13, 64)
HUB = 100_000


def tolerance(deg: torch.Tensor) -> torch.Tensor:
    """Relative tolerance per target row (module docstring)."""
    return 1e-5 + 4 * U * deg.to(torch.float64).sqrt()


def field_values(n: int, bits: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-trivial per-row (scale, bias): float32 at 8 bits, values exact in float16 at 4 / 2 bits
    (k / 64 with k < 256, j / 16 with |j| <= 128), so the packed fields hold them exactly."""
    if bits == 8:
        return torch.rand(n, generator=gen) * 2 + 0.01, torch.randn(n, generator=gen) * 3
    scale = torch.randint(1, 256, (n,), generator=gen).to(torch.float32) / 64
    bias = torch.randint(-128, 129, (n,), generator=gen).to(torch.float32) / 16
    return scale, bias


def random_codes(n: int, c: int, bits: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1 << bits, (n, c), generator=gen, dtype=torch.uint8)


def csr(degrees: list[int] | torch.Tensor, num_rows: int, gen: torch.Generator, dtype=torch.int64):
    """(indptr, indices) with the given in-degree per target and random sources in [0, num_rows)."""
    deg = torch.as_tensor(degrees, dtype=torch.int64)
    indptr = torch.zeros(deg.numel() + 1, dtype=torch.int64)
    indptr[1:] = deg.cumsum(0)
    indices = torch.randint(0, max(num_rows, 1), (int(indptr[-1]),), generator=gen)
    return indptr.to(dtype), indices.to(dtype)


def exact_terms_bound(rows, bits, c, indptr, indices, weights, mode) -> torch.Tensor:
    """Σ_k |w_k| |v_{j_k, c}| per output element (mean: / deg), float64."""
    u, scale, bias = unpack_rows(rows, bits, c)
    v = (u.to(torch.float64) * scale.double().view(-1, 1) + bias.double().view(-1, 1)).abs()
    msg = v.index_select(0, indices.long())
    if weights is not None:
        msg = msg * weights.double().abs().view(-1, 1)
    deg = (indptr[1:] - indptr[:-1]).long()
    tgt = torch.repeat_interleave(torch.arange(deg.numel()), deg)
    out = torch.zeros((deg.numel(), c), dtype=torch.float64).index_add_(0, tgt, msg)
    return out / deg.clamp(min=1).double().view(-1, 1) if mode == "mean" else out


def assert_close_to_reference(rows, bits, c, indptr, indices, weights=None, mode="sum"):
    ref = rowwise_aggregate_reference(rows, bits, c, indptr, indices, weights, mode)
    out = rowwise_aggregate(rows, bits, c, indptr, indices, weights, mode, backend="fbgemm")
    assert out.dtype == torch.float32 and out.shape == ref.shape == (indptr.numel() - 1, c)
    deg = indptr[1:] - indptr[:-1]
    bound = tolerance(deg).view(-1, 1) * exact_terms_bound(rows, bits, c, indptr, indices, weights, mode)
    err = (out.double() - ref.double()).abs()
    assert bool((err <= bound).all()), f"worst error / bound {float((err / bound.clamp(min=1e-300)).max()):.3g}"
    # targets without neighbours are exactly zero on both sides
    empty = deg == 0
    assert not out[empty].any() and not ref[empty].any()
    # "auto" runs fbgemm on CPU tensors: the same numbers
    assert torch.equal(rowwise_aggregate(rows, bits, c, indptr, indices, weights, mode), out)
    return out, ref


# --------------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------------


def test_container_bits():
    assert [container_bits(b) for b in range(1, 9)] == [2, 2, 4, 4, 8, 8, 8, 8]
    for bad in (0, -1, 9, 16):
        with pytest.raises(ConfigError, match="row container"):
            container_bits(bad)


@pytest.mark.parametrize(("c", "expect", "planar"), [
    (1, (9, 5, 5), (1, 4, 4)), (3, (11, 6, 5), (3, 4, 4)), (8, (16, 8, 6), (8, 4, 4)), (13, (21, 11, 8), (13, 8, 4)),
    (64, (72, 36, 20), (64, 32, 16)), (1433, (1441, 721, 363), (1433, 720, 360)), (0, (8, 4, 4), (0, 0, 0))])
def test_row_bytes(c, expect, planar):
    assert tuple(row_bytes(c, b) for b in CONTAINER_BITS) == expect
    # planar sub-byte rows are whole 32-bit words, so that unpacking runs on words from every row's start
    assert tuple(row_bytes(c, b, fields=False) for b in CONTAINER_BITS) == planar
    assert tuple(planar_width(c, b) for b in CONTAINER_BITS) == (c, 2 * planar[1], 4 * planar[2])


@pytest.mark.parametrize("bits", [1, 3, 5, 16])
def test_widths_outside_the_containers_are_refused(bits):
    with pytest.raises(ConfigError, match="container width"):
        row_bytes(8, bits)
    with pytest.raises(ConfigError, match="container width"):
        pack_rows(torch.zeros((2, 8), dtype=torch.uint8), bits)
    with pytest.raises(ConfigError, match="container width"):
        unpack_rows(torch.zeros((2, 8), dtype=torch.uint8), bits, 8)


def _as(b: torch.Tensor, dtype) -> list[float]:
    return b.clone(memory_format=torch.contiguous_format).view(dtype).tolist()  # a fresh, aligned buffer


def test_known_bytes_of_the_fused_layout():
    # 4 bits: column c at bits 4·(c mod 2) of byte c // 2; then float16 scale and bias
    rows = pack_rows(torch.tensor([[1, 2, 3]]), 4, 0.5, -3.0)
    assert rows[0, :2].tolist() == [0x21, 0x03]
    assert _as(rows[0, 2:], torch.float16) == [0.5, -3.0]
    # 2 bits: four codes a byte from the low bits up
    rows = pack_rows(torch.tensor([[1, 2, 3, 0, 1]]), 2, 2.0, 1.0)
    assert rows[0, :2].tolist() == [1 | 2 << 2 | 3 << 4 | 0 << 6, 1]
    assert _as(rows[0, 2:], torch.float16) == [2.0, 1.0]
    # without fields, planar: column c at bits b·(c // nb) of byte c mod nb (nb code bytes a row, a multiple of 4)
    assert pack_rows(torch.tensor([[1, 2, 3]]), 4, fields=False)[0].tolist() == [1, 2, 3, 0]
    assert pack_rows(torch.tensor([[1, 2, 3, 0, 1, 3, 1, 2, 3]]), 4, fields=False)[0].tolist() == [
        1 | 3 << 4, 2, 3, 0, 1, 3, 1, 2]
    assert pack_rows(torch.tensor([[1, 2, 3, 0, 1]]), 2, fields=False)[0].tolist() == [1 | 1 << 2, 2, 3, 0]
    # 8 bits: the codes, then float32 scale and bias
    rows = pack_rows(torch.tensor([[7, 255, 0]]), 8, 0.1, -128.0)
    assert rows[0, :3].tolist() == [7, 255, 0]
    assert _as(rows[0, 3:], torch.float32) == [torch.tensor(0.1).item(), -128.0]


@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize("c", CHANNELS)
def test_round_trip(bits, c):
    g = torch.Generator().manual_seed(bits * 100 + c)
    n = 11
    u = random_codes(n, c, bits, g)
    u[0] = (1 << bits) - 1  # the largest code in every column
    u[1] = 0
    scale, bias = field_values(n, bits, g)
    rows = pack_rows(u.to(torch.int64), bits, scale, bias)  # any integer dtype
    assert rows.dtype == torch.uint8 and rows.shape == (n, row_bytes(c, bits))
    got_u, got_s, got_b = unpack_rows(rows, bits, c)
    assert got_u.dtype == torch.uint8 and torch.equal(got_u, u)
    assert got_s.dtype == got_b.dtype == torch.float32
    assert torch.equal(got_s, scale) and torch.equal(got_b, bias)  # exact: float32 / float16-exact values
    # without fields: the code bytes alone (planar below 8 bits)
    bare = pack_rows(u, bits, fields=False)
    assert bare.shape == (n, row_bytes(c, bits, fields=False))
    if bits == 8:
        assert torch.equal(bare, rows[:, :c])
    got_u, got_s, got_b = unpack_rows(bare, bits, c, fields=False)
    assert torch.equal(got_u, u) and got_s is None and got_b is None


@pytest.mark.parametrize("bits", CONTAINER_BITS)
def test_padding_codes_are_zero_and_scalar_fields_broadcast(bits):
    c = 13  # one padding code at 4 bits, three at 2 bits
    u = torch.full((4, c), (1 << bits) - 1, dtype=torch.uint8)
    rows = pack_rows(u, bits, 0.25, -2.0)
    per = 8 // bits
    if c % per:
        last = rows[:, row_bytes(c, bits, False) - 1]
        used = (c % per) * bits
        assert not (last >> used).any()  # the unused high bits of the last code byte
    _, s, b = unpack_rows(rows, bits, c)
    assert s.tolist() == [0.25] * 4 and b.tolist() == [-2.0] * 4


@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize("c", [5, 13, 32, 64])  # 4 bits: 3, 7, 16, 32 code bytes; 2 bits: 2, 4, 8, 16
@pytest.mark.parametrize("fields", [True, False])
def test_unpack_row_slices(bits, c, fields):
    # the runtime unpacks chunks of a table: every start (aligned or not to 32-bit words) and one-row chunks
    g = torch.Generator().manual_seed(c)
    u = random_codes(9, c, bits, g)
    scale, bias = field_values(9, bits, g)
    table = pack_rows(u, bits, scale, bias, fields=fields)
    for start, end in ((0, 9), (1, 9), (3, 7), (2, 3), (8, 9), (4, 4)):
        got_u, got_s, got_b = unpack_rows(table[start:end], bits, c, fields)
        assert torch.equal(got_u, u[start:end]), (start, end)
        if fields:
            assert torch.equal(got_s, scale[start:end]) and torch.equal(got_b, bias[start:end])


@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize("c", [1, 5, 13, 64, 1433])
def test_planar_codes_unpack_into_a_buffer(bits, c):
    # the GEMM's input buffer (CodeBuffer): every chunk start, the padding columns zero, the bytes past the
    # chunk untouched; the word path and the byte path give the same codes
    g = torch.Generator().manual_seed(c + bits)
    u = random_codes(9, c, bits, g)
    table = pack_rows(u, bits, fields=False)
    width = planar_width(c, bits)
    for start, end in ((0, 9), (1, 9), (3, 7), (8, 9), (4, 4)):
        buf = torch.full((10, width), 0xEE, dtype=torch.uint8)
        got = unpack_rows(table[start:end], bits, c, False, True, buf[:end - start])[0]
        assert end == start or got.data_ptr() == buf.data_ptr()
        assert torch.equal(buf[:end - start, :c], u[start:end]) and not buf[:end - start, c:].any()
        assert (buf[end - start:] == 0xEE).all()
        odd = torch.empty((end - start, width + 1), dtype=torch.uint8)[:, 1:]  # rows not on words: byte path
        assert torch.equal(unpack_rows(table[start:end], bits, c, False, True, odd)[0], buf[:end - start])
    with pytest.raises(ConfigError, match="writes into out only planar codes with pad"):
        unpack_rows(table, bits, c, False, True, torch.empty((9, width + 4), dtype=torch.uint8))
    with pytest.raises(ConfigError, match="writes into out only planar codes with pad"):
        unpack_rows(table, bits, c, False, False, torch.empty((9, width), dtype=torch.uint8))


def test_pack_writes_into_a_slice_of_a_table():
    table = torch.full((6, row_bytes(5, 4)), 0xAB, dtype=torch.uint8)
    u = torch.tensor([[1, 2, 3, 4, 5], [15, 0, 15, 0, 15]])
    pack_rows(u, 4, torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5]), out=table[2:4])
    assert (table[[0, 1, 4, 5]] == 0xAB).all()  # the other rows untouched
    got_u, s, b = unpack_rows(table[2:4], 4, 5)
    assert torch.equal(got_u, u.to(torch.uint8)) and s.tolist() == [1.0, 2.0] and b.tolist() == [-1.0, 0.5]


@pytest.mark.parametrize("bits", CONTAINER_BITS)
def test_pack_keeps_fields_written_once(bits):
    # a per-tensor table writes its rows' scale / bias once; each chunk then packs its codes only
    g = torch.Generator().manual_seed(bits)
    u = random_codes(6, 13, bits, g)
    table = pack_rows(torch.zeros((6, 13), dtype=torch.uint8), bits, 0.5, -3.0)
    pack_rows(u[2:5], bits, out=table[2:5], keep_fields=True)
    got_u, s, b = unpack_rows(table, bits, 13)
    assert torch.equal(got_u[2:5], u[2:5]) and not got_u[[0, 1, 5]].any()
    assert s.tolist() == [0.5] * 6 and b.tolist() == [-3.0] * 6
    with pytest.raises(ConfigError, match="keep_fields needs fused rows in out"):
        pack_rows(u, bits, keep_fields=True)
    with pytest.raises(ConfigError, match="keep_fields needs fused rows in out"):
        pack_rows(u, bits, out=table, fields=False, keep_fields=True)


@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize("c", [1, 5, 13, 64])
def test_unchecked_chunk_helpers_match_the_checked_functions(bits, c):
    # the runtime's per-chunk calls: pack_fused_codes writes what pack_rows writes before the fields, and
    # unpack_planar_into what unpack_rows(pad=True) returns
    g = torch.Generator().manual_seed(c * bits)
    u = random_codes(7, c, bits, g)
    rows = pack_rows(u, bits, 1.0, -2.0)
    nb = row_bytes(c, bits) - row_bytes(0, bits)
    table = pack_rows(torch.zeros_like(u), bits, 1.0, -2.0)
    pack_fused_codes(u, bits, table[:, :nb])
    assert torch.equal(table, rows)
    planar = pack_rows(u, bits, fields=False)
    out = torch.empty((7, planar_width(c, bits)), dtype=torch.uint8)
    assert torch.equal(unpack_planar_into(planar, bits, out), unpack_rows(planar, bits, c, False, True)[0])


def test_pack_and_unpack_refuse_bad_shapes():
    with pytest.raises(ConfigError, match=r"codes \[N, C\]"):
        pack_rows(torch.zeros(8, dtype=torch.uint8), 8)
    with pytest.raises(ConfigError, match="out must be uint8"):
        pack_rows(torch.zeros((2, 8), dtype=torch.uint8), 4, out=torch.empty((2, 9), dtype=torch.uint8))
    with pytest.raises(ConfigError, match="out must be uint8"):
        pack_rows(torch.zeros((2, 8), dtype=torch.uint8), 4, out=torch.empty((2, 8), dtype=torch.int8))
    rows = pack_rows(torch.zeros((2, 8), dtype=torch.uint8), 4)
    with pytest.raises(ConfigError, match="must be uint8"):
        unpack_rows(rows, 4, 9)  # 9 channels need 9 bytes, not 8
    with pytest.raises(ConfigError, match="must be uint8"):
        unpack_rows(rows.view(torch.int8), 4, 8)
    with pytest.raises(ConfigError, match="must be uint8"):
        unpack_rows(rows, 4, 8, fields=False)


@st.composite
def tables(draw):
    """(bits, codes [n, c], scale [n], bias [n]) with float16-exact fields (float32 ones at 8 bits)."""
    bits = draw(st.sampled_from(CONTAINER_BITS))
    n, c = draw(st.integers(0, 6)), draw(st.integers(0, 40))
    codes = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n * c, max_size=n * c))
    scale = draw(st.lists(st.integers(1, 2047), min_size=n, max_size=n))
    bias = draw(st.lists(st.integers(-2048, 2048), min_size=n, max_size=n))
    return (bits, torch.tensor(codes, dtype=torch.uint8).view(n, c),
            torch.tensor(scale, dtype=torch.float32) / 1024, torch.tensor(bias, dtype=torch.float32) / 8)


@FAST
@given(tables())
def test_round_trip_property(case):
    bits, u, scale, bias = case
    n, c = u.shape
    rows = pack_rows(u, bits, scale, bias)
    assert rows.shape == (n, row_bytes(c, bits))
    got_u, got_s, got_b = unpack_rows(rows, bits, c)
    assert torch.equal(got_u, u) and torch.equal(got_s, scale) and torch.equal(got_b, bias)
    if c:  # zero channels: fields alone (QRows writes them so), never a codes-only table
        got_u, _, _ = unpack_rows(pack_rows(u, bits, fields=False), bits, c, fields=False)
        assert torch.equal(got_u, u)


# --------------------------------------------------------------------------------------------------
# aggregation: fbgemm against the reference
# --------------------------------------------------------------------------------------------------


def weighted_cases():
    """(mode, weighted): a mean takes no edge weights."""
    return [("sum", False), ("sum", True), ("mean", False)]


@needs_fbgemm
@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize(("mode", "weighted"), weighted_cases())
@pytest.mark.parametrize("c", CHANNELS)
def test_fbgemm_matches_reference(bits, mode, weighted, c):
    g = torch.Generator().manual_seed(7 * bits + c)
    n = 40
    u = random_codes(n, c, bits, g)
    scale, bias = field_values(n, bits, g)
    rows = pack_rows(u, bits, scale, bias)
    degrees = torch.randint(0, 13, (50,), generator=g)
    degrees[[0, 17, 49]] = 0  # isolated targets: first, middle and last
    indptr, indices = csr(degrees, n, g)
    weights = torch.randn(indices.numel(), generator=g) if weighted else None
    assert_close_to_reference(rows, bits, c, indptr, indices, weights, mode)


@needs_fbgemm
@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize("itype", [torch.int32, torch.int64])
def test_index_dtypes(bits, itype):
    g = torch.Generator().manual_seed(bits)
    rows = pack_rows(random_codes(30, 13, bits, g), bits, *field_values(30, bits, g))
    indptr, indices = csr(torch.randint(0, 6, (25,), generator=g), 30, g, itype)
    weights = torch.rand(indices.numel(), generator=g)
    out, _ = assert_close_to_reference(rows, bits, 13, indptr, indices, weights)
    # mixed index dtypes give the same numbers (indices follow indptr's dtype)
    other = indices.to(torch.int64 if itype == torch.int32 else torch.int32)
    assert torch.equal(rowwise_aggregate(rows, bits, 13, indptr, other, weights, backend="fbgemm"), out)
    # float64 edge weights are read as float32
    assert torch.equal(rowwise_aggregate(rows, bits, 13, indptr, indices, weights.double(), backend="fbgemm"), out)


@needs_fbgemm
@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize(("mode", "weighted"), weighted_cases())
def test_single_node(bits, mode, weighted):
    rows = pack_rows(torch.tensor([[1, (1 << bits) - 1, 0]]), bits, 0.5, -1.0)
    w = torch.tensor([-2.0]) if weighted else None
    out, ref = assert_close_to_reference(rows, bits, 3, torch.tensor([0, 1]), torch.tensor([0]), w, mode)
    v = torch.tensor([[-0.5, 0.5 * ((1 << bits) - 1) - 1, -1.0]])
    assert torch.equal(ref, v * (-2.0 if weighted else 1.0))
    # one node without edges: a zero row
    for backend in ("fbgemm", "reference"):
        none = rowwise_aggregate(rows, bits, 3, torch.tensor([0, 0]), torch.tensor([], dtype=torch.int64),
                                 None, mode, backend)
        assert torch.equal(none, torch.zeros((1, 3)))


@needs_fbgemm
@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("itype", [torch.int32, torch.int64])
def test_empty_graph(bits, mode, itype):
    rows = pack_rows(random_codes(5, 13, bits, torch.Generator().manual_seed(0)), bits, 2.0, 1.0)
    indptr, indices = torch.zeros(6, dtype=itype), torch.zeros(0, dtype=itype)
    for backend in ("fbgemm", "reference", "auto"):
        out = rowwise_aggregate(rows, bits, 13, indptr, indices, None, mode, backend)
        assert out.dtype == torch.float32 and torch.equal(out, torch.zeros((5, 13)))
    # the fbgemm kernel itself, below the dispatcher's shortcut, agrees
    assert torch.equal(rowwise_aggregate_fbgemm(rows, bits, 13, indptr, indices, None, mode), torch.zeros((5, 13)))
    # and no targets at all
    out = rowwise_aggregate(rows, bits, 13, torch.zeros(1, dtype=itype), indices, None, mode, "fbgemm")
    assert out.shape == (0, 13)


@needs_fbgemm
@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize(("mode", "weighted"), weighted_cases())
def test_hub_of_100k_neighbours(bits, mode, weighted):
    g = torch.Generator().manual_seed(bits)
    n, c = 2000, 13
    rows = pack_rows(random_codes(n, c, bits, g), bits, *field_values(n, bits, g))
    indptr, indices = csr([3, HUB, 0, 5], n, g, torch.int32)
    weights = torch.rand(indices.numel(), generator=g) if weighted else None
    out, ref = assert_close_to_reference(rows, bits, c, indptr, indices, weights, mode)
    assert float(ref[1].abs().max()) > 0


@needs_fbgemm
@pytest.mark.parametrize("bits", CONTAINER_BITS)
@pytest.mark.parametrize(("mode", "weighted"), weighted_cases())
@pytest.mark.parametrize("c", [3, 13, 64])
def test_runtime_rows_are_summed_exactly(bits, mode, weighted, c):
    """The runtime's rows (scale 1, bias −z per row, integer codes) and integer edge weights: every partial
    sum is an integer below 2^24, so the float32 kernel is exact (the hub included)."""
    g = torch.Generator().manual_seed(bits + c)
    n = 500
    z = torch.randint(0, 1 << bits, (n,), generator=g).to(torch.float32)
    rows = pack_rows(random_codes(n, c, bits, g), bits, 1.0, -z)
    degrees = torch.randint(0, 20, (60,), generator=g)
    degrees[[3, 59]] = 0
    degrees[10] = HUB
    indptr, indices = csr(degrees, n, g)
    weights = torch.randint(-2, 3, (indices.numel(),), generator=g).to(torch.float32) if weighted else None
    # the precondition: every running sum of the hub is an integer below 2^24 (guaranteed at 4 / 2 bits,
    # 100,000 · 2 · 15 < 2^24; at 8 bits these zero-mean random terms stay far below it)
    u, _, b = unpack_rows(rows, bits, c)
    a, e = int(indptr[10]), int(indptr[11])
    terms = u.double().add_(b.double().view(-1, 1)).index_select(0, indices[a:e])
    terms = terms if weights is None else terms * weights[a:e].double().view(-1, 1)
    assert float(terms.cumsum(0).abs().max()) < 2**24
    ref = rowwise_aggregate_reference(rows, bits, c, indptr, indices, weights, mode)
    out = rowwise_aggregate(rows, bits, c, indptr, indices, weights, mode, backend="fbgemm")
    if mode == "sum":
        assert torch.equal(out, ref)
    else:  # the exact sum, then one float32 division on each side (reference: float64, then rounded)
        assert torch.allclose(out, ref, rtol=2 * U, atol=0)


@needs_fbgemm
def test_bias_only_rows_and_zero_scale():
    # scale 0: every value is the row's bias (what a table of constant rows holds)
    rows = pack_rows(torch.full((3, 5), 9), 4, 0.0, torch.tensor([1.0, -2.0, 0.5]))
    indptr, indices = torch.tensor([0, 2, 3]), torch.tensor([0, 1, 2])
    out, ref = assert_close_to_reference(rows, 4, 5, indptr, indices)
    assert torch.equal(ref, torch.tensor([[-1.0] * 5, [0.5] * 5]))


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

MALFORMED = {
    "indptr does not start at 0": ([1, 2, 3], [0, 1, 2], None),
    "indptr decreases": ([0, 2, 1, 3], [0, 1, 2], None),
    "indptr ends short of nnz": ([0, 3], [0, 1, 2, 2], None),
    "indptr ends past nnz": ([0, 1, 3], [0, 1], None),
    "index past the table": ([0, 1, 2], [0, 3], None),
    "negative index": ([0, 1, 2], [0, -1], None),
    "weights of another length": ([0, 1, 2], [0, 1], [1.0, 1.0, 1.0]),
    "2-D indptr": ([[0, 1]], [0], None),
    "empty indptr": ([], [], None),
}


def _malformed(name):
    ptr, idx, w = MALFORMED[name]
    rows = pack_rows(torch.ones((3, 5), dtype=torch.uint8), 8)
    return rows, torch.tensor(ptr, dtype=torch.int64), torch.tensor(idx, dtype=torch.int64), (
        None if w is None else torch.tensor(w))


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_csr_is_refused_by_the_reference(name):
    rows, ptr, idx, w = _malformed(name)
    with pytest.raises(ConfigError, match="CSR"):
        check_csr(ptr, idx, w, rows.size(0))
    with pytest.raises(ConfigError, match="CSR"):
        rowwise_aggregate(rows, 8, 5, ptr, idx, w, backend="reference")


@needs_fbgemm
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_csr_is_refused_by_the_fbgemm_path(name):
    rows, ptr, idx, w = _malformed(name)
    with pytest.raises(ConfigError, match="CSR"):
        rowwise_aggregate(rows, 8, 5, ptr, idx, w, backend="fbgemm")


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_modes_and_backends_are_checked(backend):
    rows = pack_rows(torch.ones((2, 3), dtype=torch.uint8), 8)
    ptr, idx = torch.tensor([0, 1]), torch.tensor([1])
    with pytest.raises(ConfigError, match="aggregation mode"):
        rowwise_aggregate(rows, 8, 3, ptr, idx, mode="max", backend=backend)
    with pytest.raises(ConfigError, match="no edge weights"):
        rowwise_aggregate(rows, 8, 3, ptr, idx, torch.ones(1), mode="mean", backend=backend)
    with pytest.raises(ConfigError, match="aggregation backend"):
        rowwise_aggregate(rows, 8, 3, ptr, idx, backend="numba")
    with pytest.raises(ConfigError, match="aggregation mode"):
        rowwise_aggregate_reference(rows, 8, 3, ptr, idx, mode="max")


def test_reference_sum_is_the_exact_value():
    # scale / bias / weights whose float32 products are inexact: the reference sums in float64 and rounds once
    rows = pack_rows(torch.tensor([[3], [5]]), 8, torch.tensor([0.1, 0.3]), torch.tensor([0.7, -0.2]))
    w = torch.tensor([1 / 3, 2 / 3])
    out = rowwise_aggregate_reference(rows, 8, 1, torch.tensor([0, 2]), torch.tensor([0, 1]), w)
    s, b = torch.tensor([0.1, 0.3]).double(), torch.tensor([0.7, -0.2]).double()
    v = torch.tensor([3.0, 5.0]).double() * s + b
    exact = float((v * w.double()).sum())
    assert out.item() == torch.tensor(exact, dtype=torch.float32).item()
    assert math.isclose(out.item(), exact, rel_tol=U)
