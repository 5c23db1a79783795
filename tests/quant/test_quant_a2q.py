"""A2Q quantizer: forward formula, step / bit-width gradients, local gradient, memory penalty,
nearest-neighbour groups, lazy per-node tables, degenerate inputs, export and state dicts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch_geometric.nn import GCNConv

from qgnn.errors import ConfigError
from qgnn.nn import QuantGCNConv
from qgnn.quant import dequantize, make_quantizer
from qgnn.quant.a2q import A2QMemoryPenalty, A2QQuantizer, a2q_fake_quant, a2q_grid

LN2 = math.log(2.0)


def grid(width: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (width - 1)), 2 ** (width - 1) - 1) if signed else (0, 2**width - 1)


def reference(x, s, b, signed):
    """x̂ row by row with Python-int grids: the formula of the paper, written out."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        width = min(max(round(float(b[i])), 2 if signed else 1), 8)
        qmin, qmax = grid(width, signed)
        out[i] = s[i] * torch.clamp(torch.round(x[i] / s[i]), qmin, qmax)
    return out


def codes_away_from_bounds(widths, signed, cols, seed=0):
    """u = x/s per row: integers k ∉ {qmin, qmax} (inside or beyond the range) plus a fraction in
    (-0.4, 0.4), so that finite differences never cross a rounding or clamping kink."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for w in widths:
        qmin, qmax = grid(w, signed)
        ks = [k for k in range(qmin - 3, qmax + 4) if k not in (qmin, qmax)]
        k = torch.tensor(ks, dtype=torch.float64)[torch.randint(len(ks), (cols,), generator=g)]
        rows.append(k + (torch.rand(cols, generator=g, dtype=torch.float64) - 0.5) * 0.8)
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("signed", [True, False])
def test_forward_matches_formula_per_row_widths(signed):
    torch.manual_seed(0)
    x = torch.randn(6, 9, dtype=torch.float64) * 3
    s = torch.rand(6, dtype=torch.float64) + 0.05
    b = torch.tensor([1.2, 2.49, 2.51, 3.7, 6.0, 9.5], dtype=torch.float64)  # 9.5 clamps to 8; 1.2 to 2 signed
    got = a2q_fake_quant(x, s.view(-1, 1), b.view(-1, 1), signed)
    torch.testing.assert_close(got, reference(x, s, b, signed), rtol=0, atol=0)


def test_grid_and_its_width_derivatives():
    w = torch.tensor([1.0, 2.0, 4.0, 8.0])
    qmin, qmax, dqmin, dqmax = a2q_grid(w, signed=False)
    assert qmin.tolist() == [0, 0, 0, 0] and qmax.tolist() == [1, 3, 15, 255]
    torch.testing.assert_close(dqmax, 2**w * LN2)
    assert dqmin.tolist() == [0, 0, 0, 0]
    qmin, qmax, dqmin, dqmax = a2q_grid(w[1:], signed=True)
    assert qmin.tolist() == [-2, -8, -128] and qmax.tolist() == [1, 7, 127]
    torch.testing.assert_close(dqmax, 2 ** (w[1:] - 1) * LN2)
    torch.testing.assert_close(dqmin, -(2 ** (w[1:] - 1)) * LN2)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "node"])
@pytest.mark.parametrize("signed", [True, False, None])
def test_quantizer_forward_is_the_formula_with_its_tables(granularity, signed):
    torch.manual_seed(1)
    x = torch.randn(7, 5) if signed is not False else torch.rand(7, 5)
    q = A2QQuantizer(3, signed=signed, granularity=granularity, ch_axis=0)
    y = q(x)
    assert q.signed == (signed if signed is not None else False if signed is False else bool((x < 0).any()))
    s, b = q.step.detach(), q.b.detach()
    if granularity == "tensor":
        s, b = s.expand(7), b.expand(7)
    if granularity == "channel":
        assert s.shape == (7,)
    torch.testing.assert_close(y, reference(x, s, b, q.signed), rtol=0, atol=0)
    # initialisation maps each entry's max |x| (unsigned: max x) to qmax
    qmax = grid(3, q.signed)[1]
    mag = x.abs() if q.signed else x.clamp(min=0)
    amax = mag.amax() if granularity == "tensor" else mag.amax(1)
    torch.testing.assert_close(q.scale * qmax, amax.reshape(-1))
    assert q.bit_width.tolist() == [3] * q.scale.numel()


# ------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("signed", [True, False])
def test_gradients_match_the_analytic_forms(signed):
    widths = [2, 3, 4, 5] if signed else [1, 2, 3, 4]
    u = codes_away_from_bounds(widths, signed, cols=11)
    s = torch.tensor([0.3, 0.05, 1.7, 0.8], dtype=torch.float64).view(-1, 1)
    b = torch.tensor(widths, dtype=torch.float64).view(-1, 1) + 0.2  # rounds to the listed widths
    x = (u * s).requires_grad_()
    s_, b_ = s.clone().requires_grad_(), b.clone().requires_grad_()
    g = torch.randn_like(x)
    (a2q_fake_quant(x, s_, b_, signed) * g).sum().backward()

    w = torch.tensor(widths, dtype=torch.float64).view(-1, 1)
    qmin, qmax, dqmin, dqmax = a2q_grid(w, signed)
    above, below = u > qmax, u < qmin
    inside = ~(above | below)
    q = torch.clamp(torch.round(u), qmin, qmax)
    torch.testing.assert_close(x.grad, g * inside)
    ds = torch.where(inside, torch.round(u) - u, q)  # round(u) - u inside; qmin or qmax outside
    torch.testing.assert_close(s_.grad, (g * ds).sum(1, keepdim=True))
    db = torch.where(above, s * dqmax, torch.where(below, s * dqmin, torch.zeros_like(u)))
    torch.testing.assert_close(b_.grad, (g * db).sum(1, keepdim=True))
    assert (above.any() and (below.any() or not signed)), "the test data must clip on both sides"
    if not signed:
        assert (b_.grad != 0).any()


def _mask_form(u, qmin, qmax):
    """The quantization's pieces with bool masks, torch.where and a tensor-bound clamp: the plain form that
    qgnn.quant.a2q._quantize computes in float arithmetic (faster on CPU), kept as its reference."""
    r = torch.round(u)
    q = torch.clamp(r, qmin, qmax)
    above, below = u > qmax, u < qmin
    return q, above, below, torch.where(above | below, q, r - u)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_form_of_the_quantization_is_the_mask_form_bit_for_bit(signed, dtype):
    from qgnn.quant.a2q import _quantize

    g = torch.Generator().manual_seed(3)
    widths = torch.randint(1 if not signed else 2, 9, (300, 1), generator=g).to(dtype)
    qmin, qmax, _, _ = a2q_grid(widths, signed)
    u = torch.randn(300, 40, generator=g, dtype=dtype) * widths.exp2()  # inside and well beyond each grid
    u[:, :3] = torch.tensor([math.inf, -math.inf, 0.0], dtype=dtype)  # infinite inputs: clipped, not NaN
    u[:, 3] = qmax.view(-1) + 0.5  # a rounding tie at the top of the grid, and exact bounds
    u[:, 4], u[:, 5] = qmax.view(-1), qmin.view(-1)
    q_ref, above, below, ds_ref = _mask_form(u, qmin, qmax)
    q, side, ds = _quantize(u.clone(), qmin, qmax, True)
    assert torch.equal(q, q_ref) and torch.equal(ds, ds_ref) and torch.isfinite(ds).all()
    assert torch.equal(side > 0, above) and torch.equal(side < 0, below) and set(side.unique().tolist()) <= {-1, 0, 1}
    assert _quantize(u.clone(), qmin, qmax, False)[2] is None


def test_infinite_inputs_give_finite_step_and_width_gradients():
    x = torch.tensor([[math.inf, -math.inf, 0.7, 30.0]], requires_grad=True)
    s = torch.tensor([[0.5]], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    y = a2q_fake_quant(x, s, b, True)
    assert torch.equal(y.detach(), torch.tensor([[1.5, -2.0, 0.5, 1.5]]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    assert torch.isfinite(s.grad).all() and torch.isfinite(b.grad).all() and b.grad.item() != 0


@pytest.mark.parametrize("s_shape,b_shape", [("row", "row"), ("tensor", "row"), ("row", "tensor"),
                                             ("tensor", "tensor")])
def test_gradients_when_step_and_width_broadcast_differently(s_shape, b_shape):
    """The width gradient is summed before it is scaled where s · ∂q/∂B has b's shape; the other layouts
    take the general path: both give Σ over the broadcast entries of g · (s ∂qmax/∂B above, s ∂qmin/∂B below)."""
    torch.manual_seed(5)
    x = (torch.randn(6, 9, dtype=torch.float64) * 2).requires_grad_()
    s = torch.tensor([[0.3], [0.5], [0.2], [0.9], [0.4], [0.25]], dtype=torch.float64)
    b = torch.tensor([[2.2], [3.1], [2.4], [4.0], [2.9], [3.3]], dtype=torch.float64)
    s = s[:1, :1].reshape(()) if s_shape == "tensor" else s
    b = b[:1, :1].reshape(()) if b_shape == "tensor" else b
    s_, b_ = s.clone().requires_grad_(), b.clone().requires_grad_()
    g = torch.randn_like(x)
    (a2q_fake_quant(x, s_, b_, True) * g).sum().backward()
    qmin, qmax, dqmin, dqmax = a2q_grid(torch.round(b).clamp(2, 8), True)
    u = x.detach() / s
    db = torch.where(u > qmax, s * dqmax, torch.where(u < qmin, s * dqmin, torch.zeros_like(u)))
    want = (g * db).sum() if b.dim() == 0 else (g * db).sum(1, keepdim=True)
    torch.testing.assert_close(b_.grad, want)
    assert (b_.grad != 0).any()


@pytest.mark.parametrize("signed", [True, False])
def test_gradients_match_finite_differences(signed):
    """The rounding is straight-through, so the finite differences are taken of the surrogate in which
    round(u) is frozen as u + δ (step), and of the grid with a continuous width 2^b (bit-width), in
    float64 at points away from every kink."""
    widths = [2, 3, 5] if signed else [1, 3, 5]
    u0 = codes_away_from_bounds(widths, signed, cols=13, seed=3)
    s0 = torch.tensor([0.4, 0.07, 2.5], dtype=torch.float64).view(-1, 1)
    x = u0 * s0
    w = torch.tensor(widths, dtype=torch.float64).view(-1, 1)
    g = torch.randn_like(x, dtype=torch.float64)
    xr, sr, br = x.clone().requires_grad_(), s0.clone().requires_grad_(), w.clone().requires_grad_()
    (a2q_fake_quant(xr, sr, br, signed) * g).sum().backward()

    delta = torch.round(u0) - u0
    qmin, qmax, _, _ = a2q_grid(w, signed)

    def loss_s(s):  # round(x/s) frozen as x/s + δ
        return (g * s * torch.clamp(x / s + delta, qmin, qmax)).sum(1)

    def loss_x(xx):
        return g * s0 * torch.clamp(xx / s0 + delta, qmin, qmax)

    def loss_b(bb):  # continuous grid: qmax(b) = 2^(b-1) - 1 (signed) or 2^b - 1
        lo, hi = (-torch.exp2(bb - 1), torch.exp2(bb - 1) - 1) if signed else (torch.zeros_like(bb), torch.exp2(bb) - 1)
        return (g * s0 * torch.minimum(torch.maximum(torch.round(u0), lo), hi)).sum(1)

    h = 1e-6
    fd_s = (loss_s(s0 + h * s0) - loss_s(s0 - h * s0)) / (2 * h * s0.view(-1))
    fd_x = (loss_x(x + h) - loss_x(x - h)) / (2 * h)
    fd_b = (loss_b(w + h) - loss_b(w - h)) / (2 * h)
    torch.testing.assert_close(sr.grad.view(-1), fd_s.view(-1), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(xr.grad, fd_x, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(br.grad.view(-1), fd_b.view(-1), rtol=1e-6, atol=1e-8)


def test_bit_width_gradient_only_where_values_are_clipped():
    s, b = torch.tensor(0.1, requires_grad=True), torch.tensor(4.0, requires_grad=True)
    a2q_fake_quant(torch.linspace(-0.7, 0.7, 21), s, b, signed=True).sum().backward()
    assert b.grad == 0  # 4-bit signed covers [-0.8, 0.7]: nothing clipped
    a2q_fake_quant(torch.tensor([2.0]), s, b, signed=True).sum().backward()
    assert b.grad == pytest.approx(0.1 * 8 * LN2)  # clipped at qmax = 7: s · 2^(B-1) · ln 2


def test_lsq_gradient_scale_per_entry():
    torch.manual_seed(0)
    x = torch.rand(4, 10)
    grads = {}
    for scale in (True, False):
        q = A2QQuantizer(3, signed=False, granularity="node", grad_scale=scale)
        q(x).sum().backward()
        grads[scale] = q.step_log.grad.clone()
    # N = 10 elements per node, qmax = 7
    torch.testing.assert_close(grads[True], grads[False] / math.sqrt(10 * 7))


def test_parameters_are_step_log_and_bit_offset():
    torch.manual_seed(0)
    q = A2QQuantizer(4, signed=True, granularity="channel", ch_axis=0, bits_lr_scale=5.0, step_lr_scale=2.0)
    w = torch.randn(3, 8)
    q(w)
    with torch.no_grad():
        q.step_log.fill_(0.5)
        q.b_delta.fill_(-0.3)
    torch.testing.assert_close(q.scale, q.step_init * math.exp(1.0))
    torch.testing.assert_close(q.b, torch.full((3,), 4.0 - 1.5))
    assert q.bit_width.tolist() == [2, 2, 2]
    q.train()
    with torch.no_grad():
        q.b_delta.fill_(10.0)
    q(w)  # a training forward projects the stored width back into [b_min, b_max]
    torch.testing.assert_close(q.b, torch.full((3,), 8.0))


# ------------------------------------------------------------------------------------------------- local gradient


@pytest.mark.parametrize("norm", ["step", "none"])
@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_local_gradient_mode(norm, loss):
    torch.manual_seed(0)
    x = (torch.rand(5, 6) * 3).requires_grad_()
    q = A2QQuantizer(2, signed=False, granularity="node", local_grad=True, local_weight=0.5, local_loss=loss,
                     local_norm=norm)
    assert q.penalty() == 0.0  # before any forward
    q.train()
    y = q(x * 1.0)
    with torch.no_grad():  # quantizing with a narrower step clips: the bit-width gradient is not 0
        q.step_log.fill_(-1.0)
    y = q(x * 1.0)
    y.sum().backward()
    # the task loss reaches x (clipped STE) but neither s nor b
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.step_log.grad is None and q.b_delta.grad is None
    x_grad = x.grad.clone()
    pen = q.penalty()
    s = q.step.detach().view(-1, 1)
    diff = (x.detach() - y.detach()) / (s if norm == "step" else 1.0)
    err = diff.square() if loss == "l2" else diff.abs()
    torch.testing.assert_close(pen.detach(), 0.5 * err.mean(1).sum())
    pen.backward()
    assert q.step_log.grad.abs().sum() > 0 and q.b_delta.grad.abs().sum() > 0
    torch.testing.assert_close(x.grad, x_grad)  # the local term does not touch x
    q.eval()
    q(x)
    assert q.penalty() == 0.0


def test_without_local_gradient_the_task_loss_trains_step_and_width():
    x = torch.rand(5, 6) * 3
    q = A2QQuantizer(2, signed=False, granularity="node")
    q.train()
    q(x)
    with torch.no_grad():
        q.step_log.fill_(-1.0)
    q(x).sum().backward()
    assert q.step_log.grad.abs().sum() > 0 and q.b_delta.grad.abs().sum() > 0 and q.penalty() == 0.0


def test_local_term_does_not_break_deepcopy():
    q = A2QQuantizer(3, signed=False, granularity="node", local_grad=True)
    q.train()
    q(torch.rand(4, 3, requires_grad=True))
    assert isinstance(q.penalty(), torch.Tensor)
    c = copy.deepcopy(q)
    assert c.penalty() == 0.0 and torch.equal(c.scale, q.scale)


# ------------------------------------------------------------------------------------------------- memory penalty


def _node_quantizers():
    torch.manual_seed(0)
    q1 = A2QQuantizer(4, signed=False, granularity="node")
    q2 = A2QQuantizer(4, signed=True, granularity="node")
    q1(torch.rand(10, 100))
    q2(torch.randn(10, 20))
    return q1, q2


def test_memory_penalty_zero_below_target_positive_above_with_the_right_gradient():
    q1, q2 = _node_quantizers()
    kb = 10 * (100 + 20) * 4 / 8 / 1024
    pen = A2QMemoryPenalty([q1, q2], target_kb=kb + 0.01, weight=1.0)
    pen.train()
    m, target = pen.memory()
    assert float(m.detach()) == pytest.approx(kb) and target == pytest.approx(kb + 0.01)
    assert pen.penalty() == 0.0 or float(pen.penalty()) == 0.0
    # average-bit target: 2 bits over the same 10 · 120 elements
    pen = A2QMemoryPenalty([q1, q2], target_avg_bits=2.0, weight=1.0)
    pen.train()
    assert pen.memory()[1] == pytest.approx(10 * 120 * 2 / 8 / 1024)
    p = pen.penalty()
    assert float(p.detach()) == pytest.approx((kb - 10 * 120 * 2 / 8 / 1024) ** 2)
    p.backward()
    # widening any node's grid increases the penalty, so descent lowers every width; wider rows more
    assert (q1.b_delta.grad > 0).all() and (q2.b_delta.grad > 0).all()
    torch.testing.assert_close(q1.b_delta.grad / q2.b_delta.grad, torch.full((10,), 5.0))
    pen.eval()
    assert pen.penalty() == 0.0


def test_memory_penalty_keeps_quantizers_out_of_its_submodules_and_state():
    q1, q2 = _node_quantizers()
    pen = A2QMemoryPenalty([q1, q2])
    assert list(pen.children()) == [] and pen.state_dict() == {} and len(pen.quantizers) == 2
    empty = A2QMemoryPenalty([A2QQuantizer(4, granularity="node")])
    empty.train()
    assert empty.penalty() == 0.0  # no quantizer has seen data yet
    with pytest.raises(ConfigError, match="target_avg_bits"):
        A2QMemoryPenalty([q1], target_avg_bits=12)
    with pytest.raises(ConfigError, match="A2Q quantizers"):
        A2QMemoryPenalty([torch.nn.Identity()])


# ------------------------------------------------------------------------------------------------- nearest neighbour


def test_nearest_neighbour_picks_the_group_with_the_nearest_range():
    q = A2QQuantizer(3, signed=False, granularity="nn", groups=4)
    q(torch.rand(8, 5))  # initialise, then set known tables
    with torch.no_grad():
        q.step_init.copy_(torch.tensor([1.0, 0.1, 0.5, 2.0]))
        q.step_log.zero_()
        q.b_delta.copy_(torch.tensor([0.0, 1.0, -1.0, 0.0]))  # widths 3, 4, 2, 3
    # ranges s · qmax = 7, 1.5, 1.5 ... group 2: 0.5 · 3 = 1.5; group 1: 0.1 · 15 = 1.5; group 3: 14
    ranges = q.scale * a2q_grid(q.width_table.float(), False)[1]
    torch.testing.assert_close(ranges, torch.tensor([7.0, 1.5, 1.5, 14.0]))
    f = torch.tensor([6.0, 12.0, 0.2, 100.0, 9.0, 11.0])
    x = torch.zeros(6, 5)
    x[:, 0] = f
    idx = q._assign(x)
    expect = [(ranges - v).abs().argmin().item() for v in f.tolist()]
    expect[2] = 1  # tie between groups 1 and 2 (both 1.5): the sorted order keeps the first
    assert sorted(set(idx.tolist())) == sorted(set(expect)) and idx[[0, 1, 3, 4, 5]].tolist() == [0, 3, 3, 0, 3]
    assert idx[2].item() in (1, 2)
    # the forward uses each row's group, and only chosen groups get gradient
    q.train()
    y = q(x)
    s, b = q.scale[idx], q.b.detach()[idx]
    torch.testing.assert_close(y, reference(x, s, b, False))
    y.sum().backward()
    chosen = torch.zeros(4, dtype=torch.bool)
    chosen[idx] = True
    assert (q.b_delta.grad[~chosen] == 0).all() and (q.step_log.grad[~chosen] == 0).all()
    assert q.bit_width.shape == (6,)  # widths of the rows of the last forward


def test_nearest_neighbour_groups_span_the_observed_row_maxima_and_work_on_unseen_graphs():
    f = torch.linspace(0.5, 50.0, 200)
    x = torch.rand(200, 4) * f.view(-1, 1)
    x[:, 0] = f
    q = A2QQuantizer(4, signed=False, granularity="nn", groups=8)
    q(x)
    ranges = q.scale * 15
    assert ranges.min() == pytest.approx(0.5) and ranges.max() == pytest.approx(50.0)
    assert (ranges[1:] >= ranges[:-1]).all()
    y = q(torch.rand(37, 4) * 10)  # another graph, another size: fine for groups
    assert y.shape == (37, 4) and torch.isfinite(y).all()


# ------------------------------------------------------------------------------------------------- degenerate


@pytest.mark.parametrize("case", ["constant", "zeros", "single", "negative_unsigned"])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "node", "nn"])
def test_degenerate_inputs_never_nan(case, granularity):
    x = {"constant": torch.full((6, 4), 3.0), "zeros": torch.zeros(6, 4), "single": torch.tensor([[2.5]]),
         "negative_unsigned": -torch.rand(6, 4)}[case]
    q = A2QQuantizer(2, signed=False if case == "negative_unsigned" else None, granularity=granularity,
                     local_grad=True)
    q.train()
    xr = x.clone().requires_grad_()
    y = q(xr)
    (y.sum() + q.penalty()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(q.scale).all() and (q.scale > 0).all()
    assert torch.isfinite(xr.grad).all() and torch.isfinite(q.step_log.grad).all()
    assert torch.isfinite(q.b_delta.grad).all()
    if case == "constant" and granularity != "nn":
        torch.testing.assert_close(y, x)  # the max maps to qmax exactly
    if case == "zeros":
        assert (y == 0).all()


@pytest.mark.parametrize("granularity", ["tensor", "node", "nn"])
def test_empty_tensor_passes_through_then_initialises_on_real_data(granularity):
    q = A2QQuantizer(4, signed=None, granularity=granularity)
    e = torch.empty(0, 3)
    assert q(e) is e and not q._initialized
    codes, s, z = q.quant_int(e)
    assert codes.shape == (0, 3)
    assert torch.isfinite(q(torch.randn(5, 3))).all() and q._initialized


def test_isolated_and_absent_nodes_get_finite_mean_steps():
    x = torch.rand(6, 3) + 0.5
    x[2] = 0  # an isolated node with an all-zero row
    q = A2QQuantizer(3, signed=False, granularity="node", num_nodes=8)
    q(x[:5], torch.tensor([0, 1, 2, 3, 4]))  # nodes 5..7 absent from the first batch
    seen = x[[0, 1, 3, 4]].amax(1) / 7
    torch.testing.assert_close(q.scale[[0, 1, 3, 4]], seen)
    torch.testing.assert_close(q.scale[[2, 5, 6, 7]], seen.mean().expand(4))
    assert torch.isfinite(q(x[[5, 2]], torch.tensor([5, 2]))).all()


def test_lazy_node_table_is_sized_by_the_first_batch_and_refuses_another_graph():
    q = A2QQuantizer(4, signed=None, granularity="node")
    assert q.layout.describe() == "per_node(lazy)" and q.bit_width == 4
    q(torch.randn(9, 3))
    assert q.layout.num_nodes == 9 and q.scale.shape == (9,) and q.bit_width.shape == (9,)
    with pytest.raises(ConfigError, match="node_strategy='nn'"):
        q(torch.randn(12, 3))
    with pytest.raises(ConfigError, match="node_strategy='nn'"):
        q(torch.randn(4, 3))


def test_first_call_under_inference_mode_then_training():
    q = A2QQuantizer(4, signed=None, granularity="node")
    with torch.inference_mode():
        q(torch.randn(5, 3))
    q.train()
    x = torch.randn(5, 3, requires_grad=True)
    q(x).sum().backward()
    assert q.step_log.grad is not None and x.grad is not None


# ------------------------------------------------------------------------------------------------- layers


def test_per_node_quantizer_in_a_layer_is_permutation_equivariant():
    torch.manual_seed(0)
    n = 12
    x = torch.rand(n, 5)
    ei = torch.randint(0, n, (2, 30))
    conv = QuantGCNConv.from_float(GCNConv(5, 4), {"input": A2QQuantizer(2, signed=None, granularity="node"),
                                                   "xw": A2QQuantizer(3, signed=None, granularity="node")})
    conv.eval()
    y = conv(x, ei)
    with torch.no_grad():  # give every node its own step and width
        for q in conv.quant.values():
            q.step_log.uniform_(-0.3, 0.3)
            q.b_delta.uniform_(-1.4, 1.4)
    y = conv(x, ei)
    perm = torch.randperm(n)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    conv2 = QuantGCNConv.from_float(GCNConv(5, 4), {"input": A2QQuantizer(2, signed=None, granularity="node"),
                                                    "xw": A2QQuantizer(3, signed=None, granularity="node")})
    state = conv.state_dict()
    for k in list(state):
        if k.startswith("quant.") and state[k].dim() == 1 and state[k].numel() == n:
            state[k] = state[k][perm]
    conv2.load_state_dict(state)
    conv2.eval()
    y2 = conv2(x[perm], inv[ei])
    torch.testing.assert_close(y2, y[perm], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- export / state


@pytest.mark.parametrize("granularity", ["tensor", "channel", "node", "nn"])
@pytest.mark.parametrize("signed", [True, False])
def test_quant_int_reproduces_forward_exactly(granularity, signed):
    torch.manual_seed(0)
    x = torch.randn(9, 6) * 2
    q = A2QQuantizer(3, signed=signed, granularity=granularity, ch_axis=0, groups=4 if granularity == "nn" else None)
    q(x)
    if q.b_delta.numel() > 1:
        with torch.no_grad():
            q.b_delta.copy_(torch.linspace(-2.2, 4.6, q.b_delta.numel()))
    q.eval()
    codes, s, z = q.quant_int(x)
    assert codes.dtype == (torch.int8 if signed else torch.uint8) and (z == 0).all()  # b_max = 8
    assert torch.equal(dequantize(codes, s, z), q(x))
    w = q.bit_width
    if granularity != "nn":
        qmin, qmax = (-(2 ** (w - 1)), 2 ** (w - 1) - 1) if signed else (torch.zeros_like(w), 2**w - 1)
        view = (-1, 1) if granularity != "tensor" else ()
        assert (codes >= qmin.view(view)).all() and (codes <= qmax.view(view)).all()


def test_unsigned_eight_bit_codes_are_uint8():
    q = A2QQuantizer(8, signed=False)
    x = torch.rand(4, 4)
    q(x)
    codes, s, z = q.quant_int(x)
    assert codes.dtype == torch.uint8 and int(codes.max()) == 255
    q7 = A2QQuantizer(7, signed=False, b_max=7)
    q7(x)
    assert q7.quant_int(x)[0].dtype == torch.int8


@pytest.mark.parametrize("granularity", ["channel", "node", "nn"])
def test_state_dict_round_trip_into_a_fresh_lazy_quantizer(granularity):
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    kw = {"signed": None, "granularity": granularity, "ch_axis": 0}
    q = A2QQuantizer(3, **kw)
    q(x)
    with torch.no_grad():
        q.step_log.uniform_(-0.5, 0.5)
        q.b_delta.uniform_(-1.0, 2.0)
    q.eval()
    fresh = A2QQuantizer(3, **kw).eval()
    fresh.load_state_dict(q.state_dict())
    assert fresh._initialized and fresh.signed == q.signed
    assert torch.equal(fresh(x), q(x)) and torch.equal(fresh.bit_width, q.bit_width)
    assert set(q.state_dict()) == {"step_log", "b_delta", "step_init", "b_init", "initialized", "signed_flag"}


# ------------------------------------------------------------------------------------------------- config


def test_registry_and_repr():
    q = make_quantizer("a2q", 4, granularity="node", signed=None)
    assert isinstance(q, A2QQuantizer)
    assert "per_node(lazy)" in repr(q) and "signed=auto" in repr(q)
    q(torch.rand(3, 2))
    assert "mean_width=4.00" in repr(q) and "signed=False" in repr(q)


@pytest.mark.parametrize("kwargs, match", [
    ({"bits": 0}, r"1\.\.8"),
    ({"bits": 9}, r"1\.\.8"),
    ({"bits": 2.5}, r"1\.\.8"),
    ({"bits": 1, "signed": True}, "at least 2 bits"),
    ({"bits": 4, "b_min": 5}, r"\[b_min, b_max\]"),
    ({"bits": 4, "b_min": 6, "b_max": 3}, "b_min"),
    ({"bits": 4, "b_max": 11}, "b_max"),
    ({"bits": 4, "granularity": "graph"}, "unknown A2Q granularity"),
    ({"bits": 4, "groups": 8}, "groups applies"),
    ({"bits": 4, "granularity": "nn", "groups": 0}, "groups"),
    ({"bits": 4, "local_loss": "huber"}, "local_loss"),
    ({"bits": 4, "local_norm": "range"}, "local_norm"),
    ({"bits": 4, "local_weight": -1}, "local_weight"),
    ({"bits": 4, "bits_lr_scale": 0}, "bits_lr_scale"),
])
def test_bad_configuration_raises_config_error_naming_it(kwargs, match):
    kwargs = dict(kwargs)
    bits = kwargs.pop("bits")
    with pytest.raises(ConfigError, match=match):
        A2QQuantizer(bits, **kwargs)


@pytest.mark.parametrize("signed", [False, True])
def test_one_pass_output_and_local_error_equal_two_quantizations(signed):
    """a2q_out_and_local (A2Q's local-gradient forward in one pass) gives the values and gradients of quantizing
    twice: x̂ with s, b detached, and x.detach() − Q(x.detach(); s, b)."""
    from qgnn.quant.a2q import a2q_fake_quant, a2q_out_and_local

    torch.manual_seed(3)
    x0 = torch.randn(7, 5) * 4
    s0, b0 = torch.rand(7, 1) + 0.2, torch.rand(7, 1) * 5 + 1.5
    grads = []
    for fused in (False, True):
        x, s, b = (t.clone().requires_grad_() for t in (x0, s0, b0))
        lo = 2 if signed else 1
        if fused:
            out, d = a2q_out_and_local(x, s, b, signed, lo, 8)
        else:
            out = a2q_fake_quant(x, s.detach(), b.detach(), signed, lo, 8)
            d = x.detach() - a2q_fake_quant(x.detach(), s, b, signed, lo, 8)
        w = torch.linspace(-1, 2, x0.numel()).view_as(x0)
        ((out * w).sum() + d.abs().sum()).backward()
        grads.append((out.detach(), d.detach(), x.grad, s.grad, b.grad))
    for a, c in zip(*grads, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-6)
