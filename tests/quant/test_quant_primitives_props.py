"""Property tests (hypothesis) of the quantize / dequantize primitives (qgnn.quant.primitives).

For any finite tensor and the range ``calc_qparams`` derives from it, at every width and grid kind:
the codes lie in [qmin, qmax]; inside the covered range the round trip errs by at most half a step
(s / 2, plus float32 rounding); a constant or all-zero tensor gives a finite scale; fake quantization is
idempotent and equals dequantize(quantize(x)) bit for bit.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qgnn.quant.primitives import calc_qparams, dequantize, fake_quant, qrange, quantize

# moderate: the suite's CI budget is 15 minutes; no deadline (a torch op's first call can be slow)
FAST = settings(max_examples=150, deadline=None, database=None)  # no .hypothesis/ folder in the tree

values = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
tensors = st.lists(values, min_size=1, max_size=64).map(lambda v: torch.tensor(v, dtype=torch.float32))
# (bits, symmetric, signed): every grid kind calc_qparams supports (signed 1-bit is binary: no affine grid)
grids = st.tuples(st.integers(1, 8), st.booleans(), st.booleans()).filter(lambda g: not (g[0] == 1 and g[2]))


def _qparams(x, bits, symmetric, signed):
    scale, zp = calc_qparams(x.min(), x.max(), bits, symmetric=symmetric, signed=signed)
    qmin, qmax = qrange(bits, signed)
    return scale, zp, qmin, qmax


def _covered(x, scale, zp, qmin, qmax):
    """Elements of x inside the real range the grid covers, [(qmin - z) s, (qmax - z) s]."""
    lo, hi = (qmin - zp) * scale, (qmax - zp) * scale
    return (x >= lo) & (x <= hi)


@FAST
@given(tensors, grids)
def test_codes_in_range_and_round_trip_error_at_most_half_a_step(x, grid):
    bits, symmetric, signed = grid
    scale, zp, qmin, qmax = _qparams(x, *grid)
    assert torch.isfinite(scale) and scale > 0
    codes = quantize(x, scale, zp, qmin, qmax)
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    err = (dequantize(codes, scale, zp).double() - x.double()).abs()
    # float32 rounding of x / s and of (q - z) · s: a few ulps of the values involved
    slack = 1e-6 * (x.double().abs() + float(scale) * (qmax - qmin))
    inside = _covered(x, scale, zp, qmin, qmax)
    assert (err[inside] <= float(scale) / 2 + slack[inside]).all()
    # the observed range, widened to contain 0 (unsigned symmetric grids start at 0: negatives clip by design),
    # is covered up to half a step at its ends (a rounded zero-point, or the symmetric grid's odd code count)
    lo = 0.0 if symmetric and not signed else min(float(x.min()), 0.0)
    in_range = (x >= lo) & (x <= max(float(x.max()), 0.0))
    assert (err[in_range] <= float(scale) / 2 + slack[in_range]).all()


@FAST
@given(values, st.integers(1, 64), grids)
def test_constant_tensor_has_a_finite_scale_and_is_reproduced(c, n, grid):
    x = torch.full((n,), c)
    bits, symmetric, signed = grid
    assume(not (symmetric and not signed and c < 0))  # unsigned symmetric grids clip negatives to 0 by design
    scale, zp, qmin, qmax = _qparams(x, *grid)
    assert torch.isfinite(scale) and scale > 0 and torch.isfinite(zp)
    y = dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp)
    assert torch.isfinite(y).all() and (y == y[0]).all()
    assert float((y[0].double() - c).abs()) <= float(scale) / 2 + 1e-6 * (abs(c) + float(scale) * (qmax - qmin))


@FAST
@given(st.integers(1, 64), grids)
def test_all_zero_tensor_is_exact(n, grid):
    x = torch.zeros(n)
    scale, zp, qmin, qmax = _qparams(x, *grid)
    assert torch.isfinite(scale) and scale > 0
    assert torch.equal(dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp), x)


@FAST
@given(tensors, grids)
def test_fake_quant_is_idempotent_and_equals_the_integer_round_trip(x, grid):
    scale, zp, qmin, qmax = _qparams(x, *grid)
    y = fake_quant(x, scale, zp, qmin, qmax)
    assert torch.equal(fake_quant(y, scale, zp, qmin, qmax), y)
    assert torch.equal(dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp), y)
