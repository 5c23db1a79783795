"""The fused relaxed mixture (qgnn.quant.relaxed.mixture_fake_quant) against its plain-torch reference."""

import pytest
import torch

from qgnn.quant import RelaxedQuantizer
from qgnn.quant.primitives import calc_qparams, qrange
from qgnn.quant.relaxed import mixture_fake_quant, mixture_fake_quant_reference


def _grids(x, widths, symmetric=False, per_row=False):
    if per_row:
        mn, mx = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    else:
        mn, mx = x.min().reshape(1), x.max().reshape(1)
    out = []
    for b in widths:
        signed = symmetric
        qmin, qmax = qrange(b, signed)
        binary = symmetric and b == 1
        s, z = calc_qparams(mn, mx, b, symmetric, signed)
        out.append((s, None if (symmetric or binary) else z, qmin, qmax, binary))
    return out


def _both(x, w_logits, grids, estimator):
    results = []
    for fn in (mixture_fake_quant, mixture_fake_quant_reference):
        xx = x.clone().requires_grad_(True)
        a = w_logits.clone().requires_grad_(True)
        w = torch.softmax(a, 0)
        out = fn(xx, w, grids, estimator)
        g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * g).sum().backward()
        results.append((out.detach(), xx.grad, a.grad))
    return results


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste"])
@pytest.mark.parametrize("symmetric,widths", [(False, (2, 4, 8)), (True, (1, 4, 8)), (False, (3,))])
@pytest.mark.parametrize("per_row", [False, True])
def test_fused_mixture_matches_reference_values_and_gradients(estimator, symmetric, widths, per_row):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, 11, generator=gen, dtype=torch.float64) * 3
    grids = _grids(x[:, :6] if not per_row else x, widths, symmetric, per_row)  # a narrower range: some clip
    logits = torch.randn(len(widths), generator=gen, dtype=torch.float64)
    (o1, gx1, ga1), (o2, gx2, ga2) = _both(x, logits, grids, estimator)
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga1, ga2, rtol=1e-10, atol=1e-10)


def test_clipped_ste_blocks_gradient_outside_every_grid():
    x = torch.tensor([[-10.0, 0.5, 10.0]], dtype=torch.float64, requires_grad=True)
    grids = _grids(torch.tensor([[-1.0, 1.0]], dtype=torch.float64), (2, 8))
    out = mixture_fake_quant(x, torch.tensor([0.25, 0.75], dtype=torch.float64), grids, "clipped_ste")
    out.sum().backward()
    assert x.grad[0, 0] == 0 and x.grad[0, 2] == 0
    assert x.grad[0, 1] == pytest.approx(1.0)


def test_constant_and_zero_range_inputs_stay_finite():
    for x in (torch.zeros(5, 3), torch.full((5, 3), 2.5)):
        x = x.double().requires_grad_(True)
        a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        out = mixture_fake_quant(x, torch.softmax(a, 0), _grids(x.detach(), (2, 4, 8)))
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all() and torch.isfinite(a.grad).all()


def test_learnable_grids_are_refused():
    x = torch.randn(4, 2)
    s = torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match="fixed grids"):
        mixture_fake_quant(x, torch.ones(1), [(s, None, -8, 7, False)])


def test_relaxed_quantizer_keeps_float16_inputs_float16():
    q = RelaxedQuantizer((4, 8), observer="minmax")
    x = torch.randn(6, 4).half().requires_grad_(True)
    out = q(x)
    out.float().sum().backward()
    assert out.dtype == torch.float16 and x.grad.dtype == torch.float16


def test_relaxed_quantizer_per_node_rows_match_reference():
    # per-node grids gathered with an index (A2Q-style layout): the module's fused forward equals the reference sum
    q = RelaxedQuantizer((2, 4), granularity="node", num_nodes=5, observer="minmax")
    x = torch.randn(7, 3, dtype=torch.float64)
    q = q.double()
    index = torch.tensor([0, 1, 1, 2, 4, 4, 4])
    out = q(x, index)
    mn, mx = q.observer.range()
    grids = []
    for b in q.candidates:
        s, z = calc_qparams(mn, mx, b, False, False)
        qmin, qmax = qrange(b, False)
        grids.append((q.layout.expand(s, x, index), q.layout.expand(z, x, index), qmin, qmax, False))
    ref = mixture_fake_quant_reference(x, q.probs().detach(), grids)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-12, atol=1e-12)
