"""The quantized linear layer on stored codes (qgnn.kernels.reference.qlinear) by each backend of the
dispatcher (qgnn.kernels.intops.qlinear): "reference", "int_mm", "fbgemm" and "auto"; and the dispatcher's
choices with their reasons.

What must agree, and how closely:

* ``int_mm``: its int32 accumulator equals the reference's int64 one (exact integers) and its rescale is the
  same float32 ops in the same order, so the float output and the requantized codes equal the reference's
  bit for bit.
* ``fbgemm`` float output (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``): the same exact
  accumulator, a rescale in another order: |Δ| <= 8 · 2^-24 · (|s_x s_w acc| + |bias|) (a few float32
  roundings of the product chain and of the bias add; measured <= 2 · 2^-24).
* ``fbgemm`` requantized codes (``quantized::linear``, rounding fused): equal to the reference's except where
  y / s_y lies within float32 rounding of a half-integer; such ties are counted: at most 1 in 1,000 codes
  differ, each by at most 1.
* Full-range codes (u = 255, w = −128) give accumulators that are exact in float32 at K = 256
  (255 · 128 · 256 < 2^24): every backend returns the int64 product exactly.
"""

from __future__ import annotations

import pytest
import torch

from qgnn.errors import ConfigError
from qgnn.kernels import intops
from qgnn.kernels.cpu import fbgemm as fbgemm_mod
from qgnn.kernels.cpu.fbgemm import fbgemm_available, fbgemm_linear_exact
from qgnn.kernels.intops import (
    AGGREGATE_BACKENDS,
    LINEAR_BACKENDS,
    CodeBuffer,
    PreparedLinear,
    ShapeChoice,
    aggregate_backend,
    linear_backend,
    qlinear,
    qlinear_from_float,
    runtime_backends,
)
from qgnn.kernels.reference.qlinear import qlinear_reference

FBGEMM_OK = fbgemm_linear_exact()[0]
needs_fbgemm = pytest.mark.skipif(not FBGEMM_OK, reason=f"fbgemm linear unusable here: {fbgemm_linear_exact()[1]}")

U = 2.0**-24
FBGEMM_RTOL = 8 * U
MAX_TIE_FRACTION = 1e-3


def weights(o: int, k: int, per_channel: bool, zero: bool, gen: torch.Generator, bias: bool = True):
    """(int8 codes [O, K], zero-point, scale, bias): per tensor (0-d) or per output channel ([O])."""
    w = torch.randint(-128, 128, (o, k), generator=gen, dtype=torch.int8)
    if per_channel:
        scale = torch.rand(o, generator=gen) * 0.02 + 1e-3
        z = torch.randint(-6, 7, (o,), generator=gen) if zero else torch.zeros(o, dtype=torch.int64)
    else:
        scale, z = torch.tensor(0.0073), torch.tensor(5 if zero else 0)
    b = torch.randn(o, generator=gen) if bias else None
    return w, z, scale, b


def activations(m: int, k: int, gen: torch.Generator, top: int = 255):
    return torch.randint(0, top + 1, (m, k), generator=gen, dtype=torch.uint8)


def magnitude(u, x_zero, x_scale, w, w_zero, w_scale, bias) -> torch.Tensor:
    """|s_x s_w acc| + |bias| per output, float64 (the fbgemm tolerance's scale)."""
    zx = torch.as_tensor(x_zero, dtype=torch.int64)
    zx = zx.view(-1, 1) if zx.numel() > 1 else zx
    zw = torch.as_tensor(w_zero, dtype=torch.int64)
    zw = zw.view(-1, 1) if zw.numel() > 1 else zw
    acc = (u.long() - zx) @ (w.long() - zw).t()
    sx = torch.as_tensor(x_scale, dtype=torch.float64)
    sx = sx.view(-1, 1) if sx.numel() > 1 else sx
    sw = torch.as_tensor(w_scale, dtype=torch.float64)
    sw = sw.view(1, -1) if sw.numel() > 1 else sw
    out = (acc.double() * sx * sw).abs()
    return out if bias is None else out + bias.double().abs()


def output_grid(y: torch.Tensor, u_max: int) -> tuple[float, int, int]:
    """(s_y, z_y, u_max): a grid of ±2 standard deviations of ``y`` around its mean, so that most codes are
    interior (not clamped) at any u_max."""
    s_y = 4 * float(y.std()) / u_max
    z_y = min(max(round(u_max / 2 - float(y.mean()) / s_y), 0), u_max)
    return s_y, z_y, u_max


SHAPES = [(64, 37, 19), (1, 5, 3), (300, 64, 40), (17, 130, 9)]  # K = 37, 5, 130 not multiples of 8


@pytest.mark.parametrize(("m", "k", "o"), SHAPES)
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("zero", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_float_output(m, k, o, per_channel, zero, bias):
    g = torch.Generator().manual_seed(m + k + o)
    w, wz, ws, b = weights(o, k, per_channel, zero, g, bias)
    u = activations(m, k, g)
    lin = PreparedLinear(w, wz, ws, b)
    ref = qlinear_reference(u, 3, 0.021, w, wz, ws, b)
    assert ref.dtype == torch.float32 and ref.shape == (m, o)
    assert torch.equal(qlinear(u, 3, 0.021, lin, backend="reference"), ref)
    assert torch.equal(qlinear(u, 3, 0.021, lin, backend="int_mm"), ref)
    assert torch.equal(qlinear(u, 3, 0.021, lin, backend="float"), ref)
    if not FBGEMM_OK:  # full-range 8-bit codes: auto is the exact fallback
        assert torch.equal(qlinear(u, 3, 0.021, lin), ref)
        return
    bound = FBGEMM_RTOL * magnitude(u, 3, 0.021, w, wz, ws, b)
    for backend in ("fbgemm", "auto"):
        y = qlinear(u, 3, 0.021, lin, backend=backend)
        assert y.dtype == torch.float32 and y.shape == (m, o)
        assert bool(((y.double() - ref.double()).abs() <= bound).all()), backend


def count_ties(y: torch.Tensor, ref: torch.Tensor) -> int:
    d = y.to(torch.int16) - ref.to(torch.int16)
    assert int(d.abs().max()) <= 1 if d.numel() else True
    return int((d != 0).sum())


@pytest.mark.parametrize("u_max", [255, 15, 3])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("zero", [False, True])
def test_requantized_codes(u_max, per_channel, zero):
    g = torch.Generator().manual_seed(u_max)
    m, k, o = 4000, 45, 24
    w, wz, ws, b = weights(o, k, per_channel, zero, g)
    b *= 0.1
    u = activations(m, k, g, top=15)  # 4-bit activation codes, the runtime's common case
    lin = PreparedLinear(w, wz, ws, b)
    grid = output_grid(qlinear_reference(u, 7, 0.05, w, wz, ws, b), u_max)
    ref = qlinear_reference(u, 7, 0.05, w, wz, ws, b, grid)
    assert ref.dtype == torch.uint8 and int(ref.max()) <= u_max
    interior = ((ref > 0) & (ref < u_max)).float().mean()
    assert float(interior) > 0.5  # most codes lie inside the grid, not on its clamps
    assert torch.equal(qlinear(u, 7, 0.05, lin, grid, "reference"), ref)
    assert torch.equal(qlinear(u, 7, 0.05, lin, grid, "int_mm"), ref)  # the same float ops
    assert torch.equal(qlinear(u, 7, 0.05, lin, grid, "float"), ref)
    if not FBGEMM_OK:
        assert torch.equal(qlinear(u, 7, 0.05, lin, grid), ref)  # u_max 255 with 8-bit weights: the fallback
        return
    for backend in ("fbgemm", "auto"):
        y = qlinear(u, 7, 0.05, lin, grid, backend)
        assert y.dtype == torch.uint8 and y.shape == (m, o) and int(y.max()) <= u_max
        assert count_ties(y, ref) <= MAX_TIE_FRACTION * ref.numel(), backend


@pytest.mark.parametrize("out", [False, True])
def test_codes_written_into_a_code_buffer(out):
    # the runtime unpacks each chunk into one CodeBuffer and hands fbgemm its quint8 view (no wrapping copy):
    # the same result as from plain codes, on every backend, chunk after chunk
    g = torch.Generator().manual_seed(11)
    w, wz, ws, b = weights(19, 37, False, True, g)
    lin = PreparedLinear(w, wz, ws, b)
    buf = CodeBuffer(64, 37, 0.021, 3)
    for m in (64, 17, 1):
        u = activations(m, 37, g)
        grid = output_grid(qlinear_reference(u, 3, 0.021, w, wz, ws, b), 255) if out else None
        view, qx = buf.take(m)
        view.copy_(u)
        assert torch.equal(qx.int_repr(), u) and qx.q_scale() == 0.021 and qx.q_zero_point() == 3
        for backend in ("reference", "int_mm", "float", "auto") + (("fbgemm",) if FBGEMM_OK else ()):
            want = qlinear(u, 3, 0.021, lin, grid, backend)
            assert torch.equal(qlinear(view, 3, 0.021, lin, grid, backend, qx), want)
    # a view of another grid is not read as this one's: qlinear wraps the codes itself
    view, qx = buf.take(5)
    assert torch.equal(qlinear(view, 4, 0.03, lin, None, "auto", qx), qlinear(view.clone(), 4, 0.03, lin))


@needs_fbgemm
def test_float_output_backend_is_measured_per_shape():
    # codes in, float out: the first call of a shape times both backends and keeps the faster; later calls of
    # the same rows bucket, K and O run it; either gives the reference's sums within float32 rounding
    class Clock(ShapeChoice):  # the timings a test decides
        faster = "fbgemm"
        measured: list = []

        def _measure(self, name, fn):
            self.measured.append(name)
            return (0.0 if name == self.faster else 1.0), fn()

    g = torch.Generator().manual_seed(5)
    w, wz, ws, b = weights(19, 37, False, True, g)
    lin = PreparedLinear(w, wz, ws, b)
    choice = Clock(trials=1)
    other = intops.exact_backend()[0]  # int_mm, or the exact float GEMM where _int_mm is slow
    for m, faster in ((40, "fbgemm"), (60, other), (100, other), (128, "fbgemm")):
        choice.faster = faster
        u = activations(m, 37, g)
        y = choice.run(u, 3, 0.021, lin)
        ref = qlinear_reference(u, 3, 0.021, w, wz, ws, b)
        assert bool(((y.double() - ref.double()).abs() <= FBGEMM_RTOL * magnitude(u, 3, 0.021, w, wz, ws, b)).all())
    # 40 and 60 rows share the 64-row bucket (measured once, at 40 rows); 100 and 128 the 128-row one
    assert choice.table == {(64, 37, 19): "fbgemm", (128, 37, 19): other}
    assert choice.measured == ["fbgemm", other] * 2
    chosen = ShapeChoice(trials=2)  # real timings: whichever it keeps, the result is the reference's
    u = activations(33, 37, g)
    y = chosen.run(u, 3, 0.021, lin)
    assert set(chosen.table.values()) <= {"fbgemm", other} and torch.equal(y, chosen.run(u, 3, 0.021, lin))


@pytest.mark.parametrize("u_max", [255, 15])
def test_linear_from_float_rows(u_max):
    # float rows quantized on the way in: the same as the codes round(x / s) + z (ties to even, both clamps)
    # through qlinear; rows already on the grid (decoded codes, on_grid) skip the snap and give the same result
    g = torch.Generator().manual_seed(u_max)
    w, wz, ws, b = weights(23, 45, False, True, g)
    lin = PreparedLinear(w, wz, ws, b)
    s, z = 0.037, 6
    x = torch.randn(300, 45, generator=g) * s * u_max / 3
    x[:5] = (torch.arange(45) - 20 + 0.5) * s  # exact ties: x / s on half-integers
    x[5] = 1e9
    u = torch.div(x, s).round_().add_(z).clamp_(0, u_max).to(torch.uint8)
    fb = lin.fbgemm_exact(u_max)  # everywhere with AVX512-VNNI; at 4 bits (u_max 15) on any x86 CPU
    for backend in ("reference", "int_mm", "float", "auto") + (("fbgemm",) if fb else ()):
        # from float rows "auto" is fbgemm's float-input kernel where it is exact for the layer's codes (no
        # per-shape choice), else the exact fallback
        auto = "fbgemm" if fb else intops.exact_backend()[0]
        want = qlinear(u, z, s, lin, None, auto if backend == "auto" else backend, u_max=u_max)
        assert torch.equal(qlinear_from_float(x, z, s, u_max, lin, backend), want), backend
        y = x.clone()
        assert torch.equal(qlinear_from_float(y, z, s, u_max, lin, backend, scratch=True), want), backend
        grid = (u.to(torch.float32) - z) * s
        assert torch.equal(qlinear_from_float(grid, z, s, u_max, lin, backend, on_grid=True), want), backend


@needs_fbgemm
@pytest.mark.parametrize("s_y", [2.0, 4.0, 0.5])
def test_exact_half_integers_round_to_even(s_y):
    # unit scales: y = acc exactly and y / s_y is a half-integer for many outputs (s_y = 2: every odd acc);
    # the reference rounds half to even (torch.round) and so must the fused requantisation
    g = torch.Generator().manual_seed(1)
    u = activations(2000, 24, g, top=3)
    w = torch.randint(-3, 4, (16, 24), generator=g, dtype=torch.int8)
    lin = PreparedLinear(w, torch.tensor(0), torch.tensor(1.0))
    grid = (s_y, 7, 15)
    ref = qlinear_reference(u, 0, 1.0, w, 0, 1.0, None, grid)
    acc = u.long() @ w.long().t()
    halves = ((acc.double() / s_y) % 1 == 0.5) & (ref > 0) & (ref < 15)
    assert s_y < 1 or int(halves.sum()) > 100  # many exact ties inside the grid
    for backend in ("int_mm", "float", "fbgemm"):
        assert torch.equal(qlinear(u, 0, 1.0, lin, grid, backend), ref), backend


def test_per_row_activation_scales():
    g = torch.Generator().manual_seed(2)
    m, k, o = 200, 33, 12
    u = activations(m, k, g, top=127)
    xs = torch.rand(m, generator=g) * 0.1 + 1e-3
    xz = torch.randint(0, 128, (m,), generator=g, dtype=torch.int32)
    for per_channel, zero in ((False, False), (True, True), (False, True)):
        w, wz, ws, b = weights(o, k, per_channel, zero, g)
        lin = PreparedLinear(w, wz, ws, b)
        ref = qlinear_reference(u, xz, xs, w, wz, ws, b)
        for backend in ("auto", "int_mm", "float"):  # auto: the exact fallback (fbgemm takes one scale a tensor)
            assert torch.equal(qlinear(u, xz, xs, lin, backend=backend), ref)
        grid = output_grid(ref, 15)
        codes = qlinear_reference(u, xz, xs, w, wz, ws, b, grid)
        for backend in ("auto", "int_mm", "float"):
            assert torch.equal(qlinear(u, xz, xs, lin, grid, backend), codes)
        with pytest.raises(ConfigError, match="one activation scale per tensor"):
            qlinear(u, xz, xs, lin, backend="fbgemm")


def test_per_row_zero_points_with_one_scale():
    g = torch.Generator().manual_seed(3)
    u = activations(6, 9, g)
    w, wz, ws, b = weights(4, 9, False, False, g)
    xz = torch.arange(6)
    ref = qlinear_reference(u, xz, 0.1, w, wz, ws, b)
    assert torch.equal(qlinear(u, xz, 0.1, PreparedLinear(w, wz, ws, b)), ref)


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
def test_full_range_codes_are_exact(backend):
    if backend == "fbgemm" and not FBGEMM_OK:
        pytest.skip("fbgemm linear unusable here")
    g = torch.Generator().manual_seed(4)
    k = 256  # 255 · 128 · 256 < 2^24: every accumulator is exact in float32
    u = torch.cat([torch.full((4, k), 255, dtype=torch.uint8), torch.zeros((1, k), dtype=torch.uint8),
                   activations(27, k, g)])
    w = torch.cat([torch.full((3, k), -128, dtype=torch.int8), torch.full((2, k), 127, dtype=torch.int8),
                   torch.randint(-128, 128, (11, k), generator=g, dtype=torch.int8)])
    exact = (u.long() @ w.long().t()).to(torch.float32)
    assert float(exact.abs().max()) == 255 * 128 * k
    lin = PreparedLinear(w, torch.tensor(0), torch.tensor(1.0))
    assert torch.equal(qlinear(u, 0, 1.0, lin, backend=backend), exact)
    # the zero-point correction at its extremes: z_x = 255 turns u = 0 into −255
    exact = ((u.long() - 255) @ w.long().t()).to(torch.float32)
    assert torch.equal(qlinear(u, 255, 1.0, lin, backend=backend), exact)


@pytest.mark.parametrize("backend", LINEAR_BACKENDS)
@pytest.mark.parametrize("out", [None, (0.5, 3, 15)])
def test_zero_rows(backend, out):
    if backend == "fbgemm" and not FBGEMM_OK:
        pytest.skip("fbgemm linear unusable here")
    g = torch.Generator().manual_seed(5)
    w, wz, ws, b = weights(7, 13, True, True, g)
    y = qlinear(torch.zeros((0, 13), dtype=torch.uint8), 2, 0.1, PreparedLinear(w, wz, ws, b), out, backend)
    assert y.shape == (0, 7) and y.dtype == (torch.float32 if out is None else torch.uint8)
    ref = qlinear_reference(torch.zeros((0, 13), dtype=torch.uint8), 2, 0.1, w, wz, ws, b, out)
    assert ref.shape == (0, 7) and ref.dtype == y.dtype


def test_prepared_linear():
    g = torch.Generator().manual_seed(6)
    w, wz, ws, b = weights(5, 11, True, True, g)
    lin = PreparedLinear(w, wz, ws, b)
    assert (lin.out_features, lin.in_features) == (5, 11)
    assert torch.equal(lin.rowsum, w.to(torch.int32).sum(1))
    assert torch.equal(lin.transposed(), w.t()) and lin.transposed().is_contiguous()
    assert lin.transposed() is lin.transposed()  # built once
    assert lin.nbytes() == 5 * 11 + 4 * (5 + 5)
    one = PreparedLinear(w, torch.tensor([0]), torch.tensor([0.5]))  # one value given as [1]: per tensor
    assert one.scale.dim() == 0 and one.zero.dim() == 0 and one.bias is None
    if FBGEMM_OK:
        assert lin.packed() is lin.packed()
    with pytest.raises(ConfigError, match="int8 codes"):
        PreparedLinear(w.to(torch.int16), wz, ws)
    with pytest.raises(ConfigError, match="int8 codes"):
        PreparedLinear(w[0], wz, ws)


def test_bad_operands_are_refused():
    g = torch.Generator().manual_seed(7)
    w, wz, ws, b = weights(5, 11, True, False, g)
    lin = PreparedLinear(w, wz, ws, b)
    with pytest.raises(ConfigError, match="uint8 activation codes"):
        qlinear(torch.zeros((2, 11), dtype=torch.int8), 0, 1.0, lin)
    with pytest.raises(ConfigError, match="int8 weight codes"):
        qlinear(torch.zeros((2, 10), dtype=torch.uint8), 0, 1.0, lin)
    with pytest.raises(ConfigError, match="linear backend"):
        qlinear(torch.zeros((2, 11), dtype=torch.uint8), 0, 1.0, lin, backend="cuda")
    with pytest.raises(ConfigError, match="weight scale must be one value or 5"):
        qlinear_reference(torch.zeros((2, 11), dtype=torch.uint8), 0, 1.0, w, 0, torch.ones(4))
    with pytest.raises(ConfigError, match="activation scale must be one value or 2"):
        qlinear_reference(torch.zeros((2, 11), dtype=torch.uint8), 0, torch.ones(3), w, 0, 1.0)


# --------------------------------------------------------------------------------------------------
# the exact float GEMM and fbgemm's pair bound
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 514, 515, 2000])
@pytest.mark.parametrize("precision", ["highest", "high"])
def test_exact_mm_blocks(k, precision):
    # full-range centred codes against full-range weights: 514 columns is the largest single float32 block
    # (514 · 255 · 128 < 2^24 < 515 · 255 · 128); beyond it blocks summed in float64; at reduced float32 matmul
    # precision float64 throughout. Every case is the exact integer product rounded once to float32.
    g = torch.Generator().manual_seed(k)
    w = torch.randint(-128, 128, (9, k), generator=g, dtype=torch.int8)
    c = torch.randint(-255, 256, (40, k), generator=g).to(torch.float32)
    if k:
        c[:3], w[:2] = 255, -128  # the extremes: |acc| = 255 · 128 · k, past 2^24 from k = 515
    lin = PreparedLinear(w, torch.tensor(0), torch.tensor(1.0))
    want = (c.long() @ w.long().t()).to(torch.float32)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        assert torch.equal(intops.exact_mm(c, lin, 255), want)
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_float_backend_on_wide_codes(precision):
    # codes converted one block of columns at a time (3 blocks of at most 514 at K = 1,433; 512-column float64
    # blocks below 'highest'), per-tensor and per-row zero-points, float and requantized output: the reference
    g = torch.Generator().manual_seed(9)
    k = 1433
    u = activations(70, k, g)
    u[:3] = 255
    w, wz, ws, b = weights(16, k, True, True, g)
    w[:2] = -128
    lin = PreparedLinear(w, wz, ws, b)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        for xz in (0, 17, torch.randint(0, 256, (70,), generator=g)):
            ref = qlinear_reference(u, xz, 0.01, w, wz, ws, b)
            assert torch.equal(qlinear(u, xz, 0.01, lin, backend="float"), ref)
            grid = output_grid(ref, 255)
            assert torch.equal(qlinear(u, xz, 0.01, lin, grid, "float"), qlinear_reference(u, xz, 0.01, w, wz, ws, b,
                                                                                            grid))
    finally:
        torch.set_float32_matmul_precision(old)


def test_fbgemm_pairs_exact_bound(monkeypatch):
    # the int16 bound of vpmaddubsw's pair sums, where fbgemm is not exact for full-range codes
    monkeypatch.setattr(fbgemm_mod, "fbgemm_linear_exact", lambda: (False, "no VNNI"))
    monkeypatch.setattr(fbgemm_mod, "fbgemm_available", lambda: (True, "fbgemm"))
    for u_max, lo, hi, ok in [(255, -64, 64, True), (255, -65, 64, False), (255, -64, 65, False),
                              (128, -128, 127, True), (129, -128, 127, False), (15, -128, 127, True),
                              (255, -8, 7, True), (255, 0, 0, True), (0, -128, 127, True)]:
        assert fbgemm_mod.fbgemm_pairs_exact(u_max, lo, hi) is ok, (u_max, lo, hi)
    monkeypatch.setattr(fbgemm_mod, "fbgemm_linear_exact", lambda: (True, "VNNI"))
    assert fbgemm_mod.fbgemm_pairs_exact(255, -128, 127)


@pytest.mark.skipif(not fbgemm_available()[0], reason="no fbgemm engine")
@pytest.mark.parametrize(("u_max", "lo", "hi"), [(255, -64, 64), (255, -64, 63), (128, -128, 127), (127, -128, 127),
                                                 (15, -128, 127), (255, -8, 7), (255, -128, 127)])
def test_fbgemm_is_exact_where_the_bound_says(u_max, lo, hi):
    # on the CPU the tests run on: wherever fbgemm_pairs_exact holds, fbgemm's GEMM is the exact product (codes
    # at the bound's extremes in adjacent columns, as vpmaddubsw pairs them)
    if not fbgemm_mod.fbgemm_pairs_exact(u_max, lo, hi):
        pytest.skip("outside the bound on this CPU")
    g = torch.Generator().manual_seed(u_max + hi)
    for m, k, o in ((64, 256, 32), (5, 1433, 16), (300, 64, 64)):
        u = torch.randint(0, u_max + 1, (m, k), generator=g, dtype=torch.uint8)
        u[:4] = u_max
        w = torch.randint(lo, hi + 1, (o, k), generator=g, dtype=torch.int8)
        w[:4], w[4:8] = lo, hi
        lin = PreparedLinear(w, torch.tensor(0), torch.tensor(1.0))
        y = qlinear(u, 0, 1.0, lin, backend="fbgemm", u_max=u_max)
        assert torch.equal(y, (u.long() @ w.long().t()).to(torch.float32)), (m, k, o)  # rounded once


def test_exact_fallback_is_timed_once():
    fast, why = intops.int_mm_fast()
    assert isinstance(fast, bool) and why and intops.int_mm_fast() == (fast, why)
    assert intops.exact_backend()[0] == ("int_mm" if fast else "float")


# --------------------------------------------------------------------------------------------------
# backend choice and reasons
# --------------------------------------------------------------------------------------------------


def test_linear_backend_reasons():
    assert linear_backend(False, "reference") == ("reference", "requested")
    assert linear_backend(True, "int_mm") == ("int_mm", "requested")
    assert linear_backend(True, "float") == ("float", "requested")
    fallback, fallback_why = intops.exact_backend()
    assert fallback in ("int_mm", "float") and fallback_why
    name, why = linear_backend(True, "auto")
    assert name == fallback and "per row" in why and fallback_why in why
    name, why = linear_backend(False, "auto")
    if FBGEMM_OK:
        assert (name, why) == ("fbgemm", fbgemm_linear_exact()[1])
    else:
        assert name == fallback and fbgemm_linear_exact()[1] in why
    with pytest.raises(ConfigError, match="one activation scale per tensor"):
        linear_backend(True, "fbgemm")
    with pytest.raises(ConfigError, match="unknown linear backend 'numba'"):
        linear_backend(False, "numba")


@pytest.mark.parametrize("fast", [True, False])
def test_linear_falls_back_where_fbgemm_saturates(monkeypatch, fast):
    # a CPU without AVX512-VNNI: 8-bit codes against 8-bit weights go to the exact fallback (int_mm where it is
    # fast, else the exact float GEMM), a layer whose codes cannot saturate the int16 pair sums stays on fbgemm
    why = "fbgemm's uint8 x int8 GEMM saturates on full-range codes on this CPU (no AVX512-VNNI)"
    monkeypatch.setattr(intops, "fbgemm_linear_exact", lambda: (False, why))
    monkeypatch.setattr(fbgemm_mod, "fbgemm_linear_exact", lambda: (False, why))
    monkeypatch.setattr(intops, "int_mm_fast", lambda: (fast, "timed"))
    fallback = "int_mm" if fast else "float"
    g = torch.Generator().manual_seed(8)
    w, wz, ws, b = weights(6, 20, False, False, g)
    lin = PreparedLinear(w, wz, ws, b)
    assert linear_backend(False, "auto") == (fallback, f"{why}: timed")
    assert linear_backend(False, "auto", lin, 255) == (fallback, f"{why}: timed")
    assert linear_backend(False, "auto", lin, 15)[0] == ("fbgemm" if fbgemm_available()[0] else fallback)
    with pytest.raises(ConfigError, match="unusable here"):
        linear_backend(False, "fbgemm", lin, 255)
    assert runtime_backends()["runtime linear"] == (True, f"fbgemm where a layer's codes cannot saturate it (4-bit "
                                                          f"activations or weights), else timed ({why})")
    u = activations(9, 20, g)
    assert torch.equal(qlinear(u, 1, 0.5, lin), qlinear_reference(u, 1, 0.5, w, wz, ws, b))
    grid = (0.3, 4, 255)
    assert torch.equal(qlinear(u, 1, 0.5, lin, grid), qlinear_reference(u, 1, 0.5, w, wz, ws, b, grid))


def test_aggregate_backend_reasons(monkeypatch):
    rows = torch.zeros((2, 9), dtype=torch.uint8)
    assert aggregate_backend(rows, "reference") == ("reference", "requested")
    ok, why = fbgemm_available()
    assert aggregate_backend(rows, "auto") == (("fbgemm", "fbgemm rowwise embedding bag") if ok else ("reference", why))
    if ok:
        assert aggregate_backend(rows, "fbgemm") == ("fbgemm", "requested")
    meta = torch.empty((2, 9), dtype=torch.uint8, device="meta")
    name, why = aggregate_backend(meta, "auto")
    assert name == "reference" and "meta" in why
    with pytest.raises(ConfigError, match="needs CPU tensors"):
        aggregate_backend(meta, "fbgemm")
    with pytest.raises(ConfigError, match="unknown aggregation backend"):
        aggregate_backend(rows, "numba")
    monkeypatch.setattr(intops, "fbgemm_available", lambda: (False, "torch has no fbgemm engine (engines: none)"))
    assert aggregate_backend(rows, "auto") == ("reference", "torch has no fbgemm engine (engines: none)")
    with pytest.raises(ConfigError, match="no fbgemm engine"):
        aggregate_backend(rows, "fbgemm")
    agg = runtime_backends()["runtime aggregation"]
    assert agg == (True, "reference (torch has no fbgemm engine (engines: none))")


def test_runtime_backends():
    info = runtime_backends()
    assert set(info) == {"runtime aggregation", "runtime linear", "runtime linear, small layers"}
    assert "exact float32 GEMM" in info["runtime linear, small layers"][1]  # the tests run at 'highest'
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert "not 'highest'" in runtime_backends()["runtime linear, small layers"][1]
    finally:
        torch.set_float32_matmul_precision(old)
    for ok, why in info.values():
        assert ok is True and isinstance(why, str) and why
    if fbgemm_available()[0]:
        assert info["runtime aggregation"][1] == fbgemm_available()[1]
    if FBGEMM_OK:
        assert info["runtime linear"][1] == fbgemm_linear_exact()[1]
    assert AGGREGATE_BACKENDS[0] == LINEAR_BACKENDS[0] == "auto"


@pytest.mark.parametrize(("x_zero", "u_max"), [(0, 255), (128, 255), (200, 255), (7, 15), (0, 15), (2, 3)])
@pytest.mark.parametrize(("per_channel", "zero"), [(False, False), (True, False), (True, True), (False, True)])
def test_int_mm_from_float_equals_the_reference(x_zero, u_max, per_channel, zero):
    # the codes formed on the way in: centred (u − z fits int8: 4-bit grids, z = 128) or shifted by 128, with
    # symmetric or asymmetric weights; the same value as the reference on the codes, bit for bit
    g = torch.Generator().manual_seed(x_zero + u_max)
    w, wz, ws, b = weights(13, 29, per_channel, zero, g)
    lin = PreparedLinear(w, wz, ws, b)
    s = 0.041
    x = torch.randn(70, 29, generator=g) * s * u_max / 2
    x[:3] = (torch.arange(29) - 14 + 0.5) * s  # exact ties
    x[3, :4] = torch.tensor([1e9, -1e9, 0.0, -0.0])
    u = torch.div(x, s).round_().add_(x_zero).clamp_(0, u_max).to(torch.uint8)
    want = qlinear_reference(u, x_zero, s, w, wz, ws, b)
    got = intops._int_mm_from_float(x.clone(), x_zero, s, u_max, lin)
    assert torch.equal(got, want)
    y = x.clone()
    assert torch.equal(intops._int_mm_from_float(y, x_zero, s, u_max, lin, scratch=True), want)
    assert torch.equal(intops._int_mm_from_float(x[:0], x_zero, s, u_max, lin), want[:0])


@pytest.mark.parametrize(("x_zero", "u_max"), [(0, 255), (128, 255), (7, 15), (2, 3)])
@pytest.mark.parametrize(("per_channel", "zero"), [(False, False), (True, False), (True, True)])
def test_exact_float_gemm_equals_the_reference(x_zero, u_max, per_channel, zero):
    # a small layer's GEMM as a float32 GEMM on the centred codes: every partial sum an integer within 2^24, so
    # the accumulators are the reference's and so is the float result, bit for bit; ties and huge inputs clamp
    g = torch.Generator().manual_seed(3 * x_zero + u_max)
    w, wz, ws, b = weights(9, 64, per_channel, zero, g)
    lin = PreparedLinear(w, wz, ws, b)
    s = 0.029
    x = torch.randn(40, 64, generator=g) * s * u_max / 2
    x[:2] = (torch.arange(64) - 30 + 0.5) * s
    x[2, :3] = torch.tensor([1e9, -1e9, -0.0])
    u = torch.div(x, s).round_().add_(x_zero).clamp_(0, u_max).to(torch.uint8)
    want = qlinear_reference(u, x_zero, s, w, wz, ws, b)
    assert torch.equal(intops._float_exact_from_float(x.clone(), x_zero, s, lin, u_max), want)
    assert torch.equal(qlinear_from_float(x.clone(), x_zero, s, u_max, lin, "auto", small=True), want)
    y = x.clone()
    assert torch.equal(qlinear_from_float(y, x_zero, s, u_max, lin, "auto", scratch=True, small=True), want)


@pytest.mark.parametrize("precision", ["highest", "medium"])
def test_small_layer_past_one_float32_block(precision):
    # a small layer over Cora's 1,433 features with 8-bit codes: 1433 · 255 · 128 > 2^24, so the float path
    # sums float32 blocks of 514 columns in float64 (float64 blocks at a lowered matmul precision, TF32 / bf16):
    # the reference's value bit for bit either way
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (4, 1433), generator=g, dtype=torch.int8)
    w[0] = torch.randint(-128, -100, (1433,), generator=g, dtype=torch.int8)
    lin = PreparedLinear(w, torch.tensor(0), torch.tensor(0.01))
    assert lin.centred_float()[1] == 128
    x = torch.rand(30, 1433, generator=g) * 2
    x[0] = 2.0 + torch.rand(1433, generator=g) * 0.55  # codes 200-255 against weights -128..-101: |acc| > 2^24
    u = torch.div(x, 0.01).round_().clamp_(0, 255).to(torch.uint8)
    assert int((u.long() @ w.long().t()).abs().max()) > 2**24
    want = qlinear(u, 0, 0.01, lin, None, "reference")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        assert torch.equal(qlinear_from_float(x, 0, 0.01, 255, lin, "auto", small=True), want)
    finally:
        torch.set_float32_matmul_precision(old)
