"""Fake-quant primitives against hand-written formulas, and their gradients against analytic forms."""

from __future__ import annotations

import pytest
import torch

from qgnn.errors import ConfigError, UnknownNameError
from qgnn.quant import (
    SCALE_EPS,
    binary_fake_quant,
    calc_qparams,
    clamp_clipped,
    clamp_ste,
    code_dtype,
    dequantize,
    fake_quant,
    grad_scale,
    qrange,
    quantize,
    round_ste,
    sign_ste,
    validate_bits,
)

BITS = range(1, 9)


def reference(x, s, z, qmin, qmax):
    """The formula, written independently: (clamp(round(x/s) + z, qmin, qmax) - z) * s."""
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


def grid_params(bits, signed, per_channel=False, seed=0):
    """Random (scale, zero_point) with an integer zero-point inside the code range."""
    g = torch.Generator().manual_seed(seed)
    qmin, qmax = qrange(bits, signed)
    shape = (1, 5) if per_channel else ()
    s = torch.rand(shape, generator=g) * 0.5 + 0.05
    z = torch.randint(qmin, qmax + 1, shape, generator=g).float()
    return s, z, qmin, qmax


# ---------------------------------------------------------------------------------------- ranges / bits


def test_qrange_values():
    assert qrange(8, True) == (-128, 127)
    assert qrange(8, False) == (0, 255)
    assert qrange(4, True) == (-8, 7)
    assert qrange(2, True) == (-2, 1)
    assert qrange(1, False) == (0, 1)
    assert qrange(1, True) == (-1, 1)  # binary codes {-1, +1}
    for b in BITS:
        assert qrange(b, False)[1] - qrange(b, False)[0] + 1 == 2**b


@pytest.mark.parametrize("bad", [0, 9, -1, 16, 4.0, "4", None, True])
def test_bits_out_of_range_raise_config_error(bad):
    with pytest.raises(ConfigError, match=r"1\.\.8"):
        validate_bits(bad)
    with pytest.raises(ConfigError, match=r"1\.\.8"):
        qrange(bad, True)


def test_unknown_estimator_lists_choices():
    with pytest.raises(UnknownNameError) as e:
        fake_quant(torch.zeros(3), 1.0, None, -8, 7, estimator="sgd")
    assert "clipped_ste" in str(e.value) and "ste" in e.value.valid
    # spelling variants resolve
    fake_quant(torch.zeros(3), 1.0, None, -8, 7, estimator="Clipped-STE")


# ---------------------------------------------------------------------------------------- forward values


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quant_matches_formula_exactly(bits, signed, per_channel):
    s, z, qmin, qmax = grid_params(bits, signed, per_channel, seed=bits)
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(1)) * 3
    for est in ("ste", "clipped_ste"):
        out = fake_quant(x, s, z, qmin, qmax, estimator=est)
        assert torch.equal(out, reference(x, s, z, qmin, qmax))
    assert torch.equal(fake_quant(x, s, None, qmin, qmax), reference(x, s, 0.0, qmin, qmax))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_grid_values_unchanged_and_idempotent(bits, signed):
    s, z, qmin, qmax = grid_params(bits, signed, per_channel=True, seed=bits + 10)
    codes = torch.arange(qmin, qmax + 1, dtype=torch.float32)[:, None].expand(-1, 5)
    on_grid = (codes - z) * s
    assert torch.equal(fake_quant(on_grid, s, z, qmin, qmax), on_grid)
    x = torch.randn(300, 5) * 4
    once = fake_quant(x, s, z, qmin, qmax)
    assert torch.equal(fake_quant(once, s, z, qmin, qmax), once)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_outputs_and_codes_inside_range(bits, signed):
    qmin, qmax = qrange(bits, signed)
    s = torch.tensor(0.3)
    x = torch.randn(1000) * 10
    if bits == 1 and signed:
        out = binary_fake_quant(x, s)
        codes = quantize(x, s, None, qmin, qmax, binary=True)
        assert set(codes.unique().tolist()) <= {-1, 1}
        assert set(out.unique().tolist()) <= {-s.item(), s.item()}
        return
    z = torch.tensor(float((qmin + qmax) // 2))
    out = fake_quant(x, s, z, qmin, qmax)
    assert out.min() >= (qmin - z) * s and out.max() <= (qmax - z) * s
    codes = quantize(x, s, z, qmin, qmax)
    assert codes.dtype == code_dtype(qmin, qmax)
    assert codes.min() >= qmin and codes.max() <= qmax
    assert torch.equal(dequantize(codes, s, z), out)  # integer path agrees bit for bit


def test_round_before_adding_the_zero_point():
    # round(x/s) + z (Jacob et al.), not round(x/s + z): they differ at ties for odd z (ties go to even)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5])
    z = torch.tensor(3.0)
    assert quantize(x, 1.0, z, 0, 15).tolist() == [3, 5, 5, 3]
    assert torch.equal(fake_quant(x, 1.0, z, 0, 15), torch.tensor([0.0, 2.0, 2.0, 0.0]))
    xg = x.clone().requires_grad_(True)
    s = torch.tensor(1.0, requires_grad=True)
    fake_quant(xg, s, z, 0, 15, "clipped_ste").sum().backward()
    assert s.grad.item() == pytest.approx(sum([-0.5, 0.5, -0.5, 0.5]))


def test_code_dtypes():
    assert code_dtype(*qrange(8, True)) == torch.int8
    assert code_dtype(*qrange(8, False)) == torch.uint8
    assert code_dtype(*qrange(4, False)) == torch.int8
    assert code_dtype(*qrange(1, True)) == torch.int8


def test_binary_forward():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.1, 3.0])
    assert torch.equal(binary_fake_quant(x, 0.5), torch.tensor([-0.5, -0.5, 0.5, 0.5, 0.5]))
    assert torch.equal(sign_ste(x), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))


def test_output_keeps_input_dtype():
    x = torch.randn(10, dtype=torch.float16)
    assert fake_quant(x, torch.tensor(0.1), None, -8, 7).dtype == torch.float16
    assert fake_quant(x.double(), torch.tensor(0.1), None, -8, 7).dtype == torch.float64


def test_empty_tensor():
    x = torch.zeros(0, 4, requires_grad=True)
    out = fake_quant(x, torch.tensor(0.1), torch.tensor(3.0), 0, 15, "clipped_ste")
    assert out.shape == (0, 4)
    out.sum().backward()
    assert x.grad.shape == (0, 4)


# ---------------------------------------------------------------------------------------- qparams


@pytest.mark.parametrize("bits", BITS)
def test_calc_qparams_asymmetric_represents_zero(bits):
    g = torch.Generator().manual_seed(bits)
    mn = -torch.rand(20, generator=g) * 5
    mx = torch.rand(20, generator=g) * 5
    mn[:5] = torch.rand(5, generator=g) + 0.5  # all-positive ranges are widened to contain 0
    s, z = calc_qparams(mn, mx, bits, symmetric=False)
    qmin, qmax = qrange(bits, False)
    assert torch.equal(z, torch.round(z)) and z.min() >= qmin and z.max() <= qmax
    assert torch.all(fake_quant(torch.zeros(20), s, z, qmin, qmax) == 0)
    # the range endpoints are reproduced within half a step
    lo, hi = torch.clamp(mn, max=0), torch.clamp(mx, min=0)
    assert torch.all((fake_quant(lo, s, z, qmin, qmax) - lo).abs() <= s / 2 + 1e-6)
    assert torch.all((fake_quant(hi, s, z, qmin, qmax) - hi).abs() <= s / 2 + 1e-6)


def test_calc_qparams_symmetric():
    mn, mx = torch.tensor([-3.0, -1.0]), torch.tensor([1.0, 2.0])
    s, z = calc_qparams(mn, mx, 8, symmetric=True)
    assert torch.allclose(s, torch.tensor([3.0, 2.0]) / 127.5) and torch.all(z == 0)
    s, z = calc_qparams(mn, mx, 8, symmetric=True, signed=False)
    assert torch.allclose(s, torch.tensor([1.0, 2.0]) / 255)
    s, _ = calc_qparams(mn, mx, 1, symmetric=True)  # binary: s = absmax
    assert torch.allclose(s, torch.tensor([3.0, 2.0]))


@pytest.mark.parametrize("symmetric", [True, False])
def test_calc_qparams_degenerate_ranges_are_finite(symmetric):
    mn = torch.tensor([0.0, 2.0, -2.0, float("inf")])
    mx = torch.tensor([0.0, 2.0, -2.0, -float("inf")])  # zero range, constants, never-observed sentinel
    for bits in BITS:
        if bits == 1 and not symmetric:
            continue
        s, z = calc_qparams(mn, mx, bits, symmetric=symmetric, signed=symmetric)
        assert torch.isfinite(s).all() and (s >= SCALE_EPS).all() and torch.isfinite(z).all()
        qmin, qmax = qrange(bits, symmetric)
        x = torch.tensor([0.0, 2.0, -2.0, 1.0])
        assert torch.isfinite(fake_quant(x, s, None if symmetric else z, qmin, qmax)).all()


def test_calc_qparams_rejects_signed_binary_affine():
    with pytest.raises(ConfigError, match="binary"):
        calc_qparams(torch.tensor([-1.0]), torch.tensor([1.0]), 1, symmetric=False, signed=True)


# ---------------------------------------------------------------------------------------- gradients


def test_round_and_clamp_ste_gradients():
    x = torch.linspace(-3, 3, 13, requires_grad=True)
    round_ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(13))
    x.grad = None
    clamp_ste(x, -1, 1).sum().backward()
    assert torch.equal(x.grad, torch.ones(13))
    x.grad = None
    clamp_clipped(x, -1, 1).sum().backward()
    assert torch.equal(x.grad, ((x >= -1) & (x <= 1)).float())
    x.grad = None
    sign_ste(x).sum().backward()
    assert torch.equal(x.grad, (x.abs() <= 1).float())


def test_grad_scale():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = grad_scale(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([4.0, 8.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0]))


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64) * 3
    upstream = torch.randn(200, 5, generator=g, dtype=torch.float64)
    return x, upstream


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (4, False), (8, True)])
def test_ste_and_clipped_ste_input_gradients(bits, signed):
    s, z, qmin, qmax = grid_params(bits, signed, per_channel=True, seed=3)
    s, z = s.double(), z.double()
    x, up = _data()
    x.requires_grad_(True)
    fake_quant(x, s, z, qmin, qmax, "ste").backward(up)
    assert torch.equal(x.grad, up)  # STE: identity
    x.grad = None
    fake_quant(x, s, z, qmin, qmax, "clipped_ste").backward(up)
    v = x.detach() / s + z
    inside = (v >= qmin) & (v <= qmax)
    assert 0 < inside.sum() < inside.numel()  # both regions are exercised
    assert torch.equal(x.grad, up * inside)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (4, False), (8, True)])
@pytest.mark.parametrize("with_zp", [False, True])
def test_lsq_scale_and_zero_point_gradients_match_analytic(bits, signed, with_zp):
    s0, z0, qmin, qmax = grid_params(bits, signed, per_channel=True, seed=4)
    s = s0.double().requires_grad_(True)
    z = z0.double().requires_grad_(True) if with_zp else None
    x, up = _data(seed=bits)
    fake_quant(x, s, z, qmin, qmax, "clipped_ste").backward(up)
    # Esser et al. 2020, eq. 3, with u = x/s and "inside" = qmin <= u + z <= qmax:
    #   d x̂/ds = -u + round(u)  inside,  qmin - z / qmax - z  outside;   d x̂/dz = -s outside, 0 inside
    zz = z0.double() if with_zp else torch.zeros(())
    u = x / s0.double()
    inside = (u + zz >= qmin) & (u + zz <= qmax)
    ds = torch.where(inside, -u + torch.round(u), torch.where(u + zz < qmin, qmin - zz, qmax - zz))
    assert torch.allclose(s.grad, (up * ds).sum(0, keepdim=True), rtol=1e-12, atol=1e-12)
    if with_zp:
        dz = torch.where(inside, torch.zeros_like(u), -s0.double().expand_as(u))
        assert torch.allclose(z.grad, (up * dz).sum(0, keepdim=True), rtol=1e-12, atol=1e-12)


def test_lsq_gradient_z0_is_the_paper_formula():
    # the textbook form without zero-point, per tensor: -x/s + round(x/s), qmin, qmax
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([-10.0, -1.3, -0.2, 0.0, 0.6, 1.1, 3.4, 10.0], dtype=torch.float64)
    qmin, qmax = -4, 3
    grads = []
    for xi in x:
        s.grad = None
        fake_quant(xi, s, None, qmin, qmax, "clipped_ste").backward()
        grads.append(s.grad.item())
    expect = []
    for xi in x.tolist():
        v = xi / 0.5
        expect.append(qmin if v < qmin else qmax if v > qmax else -v + round(v))
    assert grads == pytest.approx(expect, abs=1e-12)


def test_binary_gradients():
    s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([-2.0, -0.3, 0.0, 0.2, 0.7], dtype=torch.float64, requires_grad=True)
    binary_fake_quant(x, s, "clipped_ste").sum().backward()
    v = x.detach() / 0.5
    inside = v.abs() <= 1
    sign = torch.where(v >= 0, 1.0, -1.0).double()
    assert torch.equal(x.grad, inside.double())
    assert torch.allclose(s.grad, torch.where(inside, sign - v, sign).sum())


def test_gradcheck_where_smooth():
    # Outside the code range the clipped fake-quant is exactly s·qmax (or s·qmin): smooth in x and s,
    # so finite differences must agree with the analytic (LSQ) gradients there.
    s = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x = torch.tensor([[9.0, -9.0], [12.0, -15.0], [-7.0, 8.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: fake_quant(x, s, z, -4, 3, "clipped_ste"), (x, s))
