"""A2Q: aggregation-aware quantization with a learned step *and* a learned bit-width per entry.

Zhu et al., "A2Q: Aggregation-Aware Quantization for Graph Neural Networks", ICLR 2023, arXiv 2302.00193.
Nodes with different in-degrees aggregate values of very different magnitudes, so A2Q gives every node
(for weights: every output channel) its own step ``s`` and its own *continuous* bit-width ``b``, both
learned. With ``B = clamp(round(b), B_lo, 8)`` the integer width of the forward pass::

    signed   (weights, X·W):          qmin = −2^(B−1),  qmax = 2^(B−1) − 1          (B >= 2)
    unsigned (post-ReLU / bag of words): qmin = 0,       qmax = 2^B − 1             (B >= 1)
    x̂ = s · clamp(round(x / s), qmin, qmax)

Gradients (:func:`a2q_fake_quant`, one autograd Function), with u = x/s and "inside" meaning
qmin <= u <= qmax:

* ∂x̂/∂x = 1 inside, 0 outside (clipped straight-through estimator);
* ∂x̂/∂s = round(u) − u inside, qmin or qmax outside (the LSQ gradient, Esser et al. 2020), optionally
  scaled by 1/sqrt(N · qmax) with N the number of elements sharing s;
* ∂x̂/∂b = 0 inside; s · ∂qmax/∂B = s · 2^(B−1) · ln 2 (signed) or s · 2^B · ln 2 (unsigned) above the
  range; s · ∂qmin/∂B = −s · 2^(B−1) · ln 2 below it (signed; unsigned qmin = 0 does not move), the
  rounding of b passed straight through. A wider grid changes nothing for values already inside it, so
  the bit-width only grows where values are clipped; something else (the memory penalty,
  :class:`A2QMemoryPenalty`) must push it down.

Granularities: ``"tensor"``, ``"channel"`` (weights: ``ch_axis=0``), ``"node"`` (one (s, b) per node;
``num_nodes=None`` sizes the table from the first batch, transductive only) and ``"nn"``, A2Q's
nearest-neighbour strategy for graph-level (inductive) tasks: ``groups`` shared (s, b) pairs, each row
using the group whose range r_j = s_j · qmax_j is nearest to max|x_row|.

**Local gradient** (``local_grad=True``, A2Q's choice for semi-supervised node tasks, where most nodes
have no label and their (s, b) would get no task gradient): the forward output uses s and b detached
(x keeps its straight-through gradient), and the quantizer keeps, computed with x detached,

    local_weight · Σ_entries mean_{elements of the entry} ℓ((x − x̂(s, b)) / s̄)

with ℓ = |·| (``local_loss="l1"``, default; the authors' code back-propagates the sign of the error) or
(·)² (``"l2"``), and s̄ the entry's step detached (``local_norm="step"``, default) or 1 (``"none"``: the
plain squared error). :meth:`penalty` returns it during training, so the training loop adds it to the
loss (:func:`qgnn.train.tasks.penalty_modules`); it reaches s and b only. Why the error is measured in
steps: the raw squared error of row-normalised bag-of-words features is ~1e-6, so its gradient lost to
the optimizer's weight decay and the steps never moved (measured on Cora); in steps it is scale-free,
and L1 keeps one badly clipped node from dominating (its gradient per element is bounded).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError

from . import sync
from .granularity import Layout, parse_granularity
from .primitives import MAX_BITS, MIN_BITS, SCALE_EPS, clamp_ste, code_dtype, validate_bits
from .quantizers import Quantizer
from .registry import register_quantizer

__all__ = ["A2QQuantizer", "A2QMemoryPenalty", "a2q_fake_quant", "a2q_grid", "DEFAULT_GROUPS"]

LN2 = math.log(2.0)
# Nearest-neighbour groups. A2Q uses 1000; a group only learns from the rows that pick it, and a
# mini-batch of 32 small graphs (TU datasets: ~20-40 nodes each) has ~1000 rows, so with 1000 groups
# most groups see one row or none per step and their (s, b) barely train. 64 groups still resolve the
# range of max|x_row| to ~1.5% (quantile spacing) while every group sees rows most steps.
DEFAULT_GROUPS = 64
_LOCAL_LOSSES = ("l2", "l1")
_LOCAL_NORMS = ("step", "none")


# --------------------------------------------------------------------------------------------------
# the grid and the fake-quant Function
# --------------------------------------------------------------------------------------------------


def a2q_grid(width: Tensor, signed: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(qmin, qmax, ∂qmin/∂B, ∂qmax/∂B) for integer widths ``width`` (float tensor, any shape)."""
    if signed:
        half = torch.exp2(width - 1)
        return -half, half - 1, -half * LN2, half * LN2
    full = torch.exp2(width)
    zero = torch.zeros_like(full)
    return zero, full - 1, zero, full * LN2


def integer_width(b: Tensor, lo: int, hi: int = MAX_BITS) -> Tensor:
    """B = clamp(round(b), lo, hi) (no gradient)."""
    return torch.round(b.detach()).clamp_(lo, hi)


def _sum_to(grad: Tensor, like: Tensor) -> Tensor:
    # undo broadcasting: sum over the dimensions `like` was broadcast along
    if grad.shape != like.shape:
        grad = grad.sum_to_size(like.shape) if like.dim() else grad.sum()
    return grad.to(like.dtype)


def _quantize(u: Tensor, qmin: Tensor, qmax: Tensor, need_ds: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """(q, side, ds) of the scaled input ``u`` = x/s (overwritten): the codes q = clamp(round(u), qmin, qmax);
    ``side`` +1 where u > qmax, −1 where u < qmin, 0 inside (float, u's dtype); ``ds`` the factor of ∂x̂/∂s,
    round(u) − u inside and q outside (None unless ``need_ds``).

    Written in float arithmetic only: on CPU, torch's comparison, ``where`` and ``masked_fill`` kernels on
    bool masks and ``clamp`` with tensor bounds each cost several float passes (A2Q on REDDIT-BINARY GIN, a
    14k x 64 batch: ``where`` 3.4 ms against 0.13 ms for a multiply); this form took the quantizer's forward
    and backward from 23 to 16 ms there. Equal bit for bit to the mask form (the reference in
    tests/quant/test_quant_a2q.py) for finite and infinite u: the clipped entries of ``ds`` come from u
    clamped into the grid times 0, so ±inf does not make NaN."""
    q = torch.round(u)
    torch.minimum(q, qmax, out=q)
    torch.maximum(q, qmin, out=q)
    # sign(relu(·)) is 1 where u is beyond the bound and 0 elsewhere (a − b > 0 exactly when a > b)
    side = (u - qmax).relu_().sign_().sub_((qmin - u).relu_().sign_())
    ds = None
    if need_ds:
        inside = side.abs().neg_().add_(1)
        torch.minimum(u, qmax, out=u)
        torch.maximum(u, qmin, out=u)  # inside: u itself (q − u = round(u) − u); clipped: times 0 below
        ds = u.mul_(inside).neg_().add_(q)
    return q, side, ds


def _side_grads(g: Tensor, side: Tensor, b: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """∂/∂b of the clipped entries: Σ g · up above the grid, Σ g · down below it, summed to b's shape."""
    above, below = side.clamp(min=0), side.neg().clamp_(min=0)
    if up.shape == b.shape:  # constant over the summed dimensions: sum first, then scale
        return (_sum_to(g * above, b) * up + _sum_to(g * below, b) * down).to(b.dtype)
    return _sum_to(g * (above * up + below * down), b)


class _A2QFakeQuant(torch.autograd.Function):
    """x̂ = s · clamp(round(x/s), qmin(B), qmax(B)) with the gradients of the module docstring.

    Written for few passes over x (the activations of a bag-of-words layer are millions of elements): the
    codes, the side of the grid each entry is clipped to and ∂x̂/∂s in float arithmetic (:func:`_quantize`),
    and ∂/∂b summed from the gradient before it is multiplied by the per-entry factors where those have b's
    shape (as in every A2QQuantizer layout; other broadcasts take the general path)."""

    @staticmethod
    def forward(ctx, x, s, b, signed, lo, hi):
        width = integer_width(b, lo, hi)
        qmin, qmax, dqmin, dqmax = a2q_grid(width, signed)
        grads = any(ctx.needs_input_grad[:3])
        q, side, ds = _quantize(x / s, qmin, qmax, grads and ctx.needs_input_grad[1])
        out = q * s  # exactly dequantize(codes, s): codes q, zero-point 0
        if grads:  # saved only when a gradient will be asked for
            ctx.save_for_backward(side, ds, s, b, dqmin, dqmax)
        return out.to(x.dtype) if x.is_floating_point() else out

    @staticmethod
    def backward(ctx, g):
        side, ds, s, b, dqmin, dqmax = ctx.saved_tensors
        gx = gs = gb = None
        if ctx.needs_input_grad[0]:
            gx = g * side.abs().neg_().add_(1)  # 1 inside, 0 clipped
        if ctx.needs_input_grad[1]:
            gs = _sum_to(g * ds, s)
        if ctx.needs_input_grad[2]:
            # s·dqmax/dB above the range, s·dqmin/dB below it, 0 inside
            gb = _side_grads(g, side, b, s * dqmax, s * dqmin)
        return gx, gs, gb, None, None, None


class _PassThrough(torch.autograd.Function):
    """Returns ``value`` (computed without autograd) with the gradient of x: ``g`` inside the grid, 0 where
    ``side`` (:func:`_quantize`) says the entry was clipped."""

    @staticmethod
    def forward(ctx, x, value, side):
        ctx.save_for_backward(side)
        return value.view_as(value)

    @staticmethod
    def backward(ctx, g):
        (side,) = ctx.saved_tensors
        return g * side.abs().neg_().add_(1), None, None


class _LocalError(torch.autograd.Function):
    """Returns the local error ``d = x − Q(x; s, b)`` (computed without autograd) with its gradient to s and b
    only (Q's, with the opposite sign), from the clipped side and ``ds`` the quantization saved."""

    @staticmethod
    def forward(ctx, s, b, d, side, ds, dqmin, dqmax):
        ctx.save_for_backward(s, b, side, ds, dqmin, dqmax)
        return d.view_as(d)

    @staticmethod
    def backward(ctx, g):
        s, b, side, ds, dqmin, dqmax = ctx.saved_tensors
        gq = -g
        gs = _sum_to(gq * ds, s) if ctx.needs_input_grad[0] else None
        gb = _side_grads(gq, side, b, s * dqmax, s * dqmin) if ctx.needs_input_grad[1] else None
        return gs, gb, None, None, None, None, None


def a2q_out_and_local(x: Tensor, s: Tensor, b: Tensor, signed: bool, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """The two uses of one quantization under A2Q's local gradient, from one pass over x: the output
    x̂ = Q(x; s, b), whose gradient reaches x only (straight-through, as with s and b detached), and the local
    error d = x − Q(x; s, b), whose gradient reaches s and b only (as with x detached). Quantizing x twice, once
    per use, did x/s, the rounding, the clamp and the clip masks twice. Equal in values and gradients to
    ``a2q_fake_quant(x, s.detach(), b.detach())`` and ``x.detach() − a2q_fake_quant(x.detach(), s, b)``."""
    with torch.no_grad():
        xd, sd, bd = x.detach(), s.detach(), b.detach()
        qmin, qmax, dqmin, dqmax = a2q_grid(integer_width(bd, lo, hi), signed)
        q, side, ds = _quantize(xd / sd, qmin, qmax, True)
        value = q * sd
        value = value.to(x.dtype) if x.is_floating_point() else value
        d = xd - value
    return _PassThrough.apply(x, value, side), _LocalError.apply(s, b, d, side, ds, dqmin, dqmax)


def a2q_fake_quant(x: Tensor, s: Tensor, b: Tensor, signed: bool, lo: int | None = None,
                   hi: int = MAX_BITS) -> Tensor:
    """A2Q fake quantization ``s · clamp(round(x/s), qmin(B), qmax(B))``, ``B = clamp(round(b), lo, hi)``.

    ``s`` (positive) and ``b`` (continuous widths) broadcast against ``x``; gradients flow to all three
    as in the module docstring. ``lo`` defaults to 2 for signed grids and 1 for unsigned ones.
    """
    lo = (2 if signed else 1) if lo is None else int(lo)
    return _A2QFakeQuant.apply(x, s, b, bool(signed), lo, int(hi))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by a (per-entry) factor ``g`` (LSQ's gradient scale)."""

    @staticmethod
    def forward(ctx, t, g):
        ctx.save_for_backward(g)
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        (g,) = ctx.saved_tensors
        return grad * g, None


# --------------------------------------------------------------------------------------------------
# layout: the base Layout plus a lazily sized node table and nearest-neighbour groups
# --------------------------------------------------------------------------------------------------


class A2QLayout(Layout):
    """:class:`~qgnn.quant.granularity.Layout` for A2Q: ``num_nodes=None`` is allowed for ``"node"``
    (sized from the first batch), and ``"nn"`` has ``groups`` entries shared by rows."""

    def __init__(self, granularity="tensor", ch_axis=-1, num_nodes=None, num_channels=None, groups=None):
        g = str(granularity).lower()
        nearest = g in ("nn", "nearest", "nearest_neighbor", "nearest_neighbour")
        if not nearest:
            try:
                g = parse_granularity(granularity)
            except KeyError:
                raise ConfigError(
                    f"unknown A2Q granularity {granularity!r}; valid: tensor, channel, node, nn"
                ) from None
        # build as per-tensor, then set the fields the base constructor would refuse (num_nodes=None)
        super().__init__("tensor" if g in ("node", "nn") or nearest else g, ch_axis, None, num_channels)
        self.granularity = "nn" if nearest else g
        self.groups = None
        if self.granularity == "node":
            self.num_nodes = _positive("num_nodes", num_nodes) if num_nodes is not None else None
        if self.granularity == "nn":
            self.groups = _positive("groups", DEFAULT_GROUPS if groups is None else groups)
        elif groups is not None:
            raise ConfigError(f"groups applies to granularity 'nn' (nearest-neighbour), not {self.granularity!r}")

    @property
    def size(self):
        if self.granularity == "nn":
            return self.groups
        return super().size

    def describe(self):
        if self.granularity == "nn":
            return f"nearest_neighbour({self.groups})"
        if self.granularity == "node" and self.num_nodes is None:
            return "per_node(lazy)"
        return super().describe()

    def same_as(self, other):
        return super().same_as(other) and getattr(other, "groups", None) == self.groups

    def check(self, x, index=None):
        if self.granularity in ("node", "nn") and x.dim() == 0:
            raise ConfigError("A2Q per-node / nearest-neighbour quantization needs one row per node, got a scalar")
        if self.granularity == "nn":
            return self.groups
        if self.granularity == "node":
            if index is not None:
                return super().check(x, index) if self.num_nodes is not None else _index_ok(x, index)
            if self.num_nodes is not None and x.shape[0] != self.num_nodes:
                raise ConfigError(
                    f"per-node A2Q table has {self.num_nodes} nodes but x has {x.shape[0]} rows: per-node "
                    "tables are transductive (one fixed graph). For graph-level or inductive tasks use "
                    "node_strategy='nn' (granularity 'nn'), or pass index (the node id of each row)"
                )
            return self.num_nodes if self.num_nodes is not None else x.shape[0]
        return super().check(x, index)

    def group_size(self, x):
        if self.granularity == "nn":
            return x[0].numel() if x.shape[0] else 0
        return super().group_size(x)


def _positive(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _index_ok(x: Tensor, index: Tensor) -> int:
    if index.dim() != 1 or index.shape[0] != x.shape[0]:
        raise ConfigError(f"index must be 1-d with one node id per row of x ({x.shape[0]}), got {tuple(index.shape)}")
    if index.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"index must be an integer (long) tensor of node ids, got {index.dtype}")
    return int(index.max()) + 1 if index.numel() else 0


# --------------------------------------------------------------------------------------------------
# the quantizer
# --------------------------------------------------------------------------------------------------


def _bits_bound(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not MIN_BITS <= v <= MAX_BITS:
        raise ConfigError(f"{name} must be a number in {MIN_BITS}..{MAX_BITS}, got {v!r}")
    return float(v)


def nearest_group(x: Tensor, ranges: Tensor, signed: bool) -> Tensor:
    """A2Q's nearest-neighbour strategy: the group j of each row of ``x`` with the range r_j = s_j · qmax_j
    nearest the row's max |x| (max x⁺ when unsigned), argmin_j |f_row − r_j|; ties go to the smaller range.
    Shared by :class:`A2QQuantizer` and the integer runtime (``qgnn.export.runtime``), which must agree."""
    rows = x.reshape(x.shape[0], -1)
    f = (rows.abs() if signed else rows.clamp(min=0)).amax(dim=1)
    r_sorted, order = ranges.sort()
    f = f.to(r_sorted.dtype).contiguous()
    hi = torch.searchsorted(r_sorted, f).clamp_(max=ranges.numel() - 1)
    lo = (hi - 1).clamp_(min=0)
    pick = torch.where((f - r_sorted[lo]).abs() <= (r_sorted[hi] - f).abs(), lo, hi)
    return order[pick]


@register_quantizer("a2q")
class A2QQuantizer(Quantizer):
    """A2Q quantizer: learned step ``s`` and continuous bit-width ``b`` per entry (module docstring).

    Args:
        bits: initial bit-width, an integer in ``[b_min, b_max]`` (ConfigError otherwise).
        signed: True (two's-complement grid, B >= 2), False (unsigned, for non-negative data) or None
            (decided on the first batch: unsigned when it has no negative value). A signed grid starts
            at max(bits, 2) when ``signed=None`` picks it; ``signed=True`` with ``bits=1`` is refused.
        granularity: ``"tensor"``, ``"channel"`` (with ``ch_axis``), ``"node"`` (``num_nodes``, or None
            to size the table from the first batch) or ``"nn"`` (``groups`` shared entries, default 64).
        b_min, b_max: bounds of the continuous width (default 1 and 8; signed grids use max(b_min, 2)).
            During training the stored ``b`` is projected back into them before every forward.
        grad_scale: scale the step gradient by 1 / sqrt(N · qmax) per entry (LSQ; default True).
        local_grad, local_weight, local_loss, local_norm: the local gradient (module docstring).
        bits_lr_scale: k in b = b_init + k · b_delta (default 1): under Adam the width moves k times
            faster than the other parameters (k² under SGD); A2Q trains bits with their own learning rate.
        step_lr_scale: k in s = step_init · exp(k · step_log) (default 1), the same for the step.

    Parameterisation. ``s = step_init · exp(k_s · step_log)`` and ``b = b_init + k · b_delta``, with the buffers
    ``step_init`` / ``b_init`` set at initialisation and the parameters ``step_log`` / ``b_delta``
    starting at 0 (:attr:`step` and :attr:`b` give s and b). Why not s itself as the parameter (as
    LSQ): per-node steps of normalised features are ~1e-3 and Adam moves every parameter by about its
    learning rate per step whatever its scale, so lr = 0.01 multiplied steps by 5-50 within a few
    epochs (measured on Cora); in log space a step of 0.01 is a 1% change. And the weight decay the
    optimizer applies to all parameters then pulls s and b towards their initial values, not towards 0
    (which drove every width down by one bit per 100 epochs with no other force acting). Buffers
    ``initialized`` and ``signed_flag`` (the grid chosen at initialisation).

    Initialisation (first non-empty batch, any mode): ``b = bits``, ``s = max|x| / qmax`` per entry
    (unsigned: max(x, 0)); entries whose max is 0 (all-zero rows, per node the nodes absent from the
    batch) take the mean max of the others, or 1 when the whole batch is 0; per group, the ranges
    s_j · qmax spread over the quantiles of max|x_row|.
    """

    kind = "a2q"

    def __init__(
        self,
        bits: int = 4,
        *,
        signed: bool | None = True,
        granularity: str = "tensor",
        ch_axis: int = -1,
        num_nodes: int | None = None,
        num_channels: int | None = None,
        groups: int | None = None,
        b_min: float = 1.0,
        b_max: float = 8.0,
        grad_scale: bool = True,
        local_grad: bool = False,
        local_weight: float = 1.0,
        local_loss: str = "l1",
        local_norm: str = "step",
        bits_lr_scale: float = 1.0,
        step_lr_scale: float = 1.0,
    ):
        bits = validate_bits(bits)
        self.b_min, self.b_max = _bits_bound("b_min", b_min), _bits_bound("b_max", b_max)
        if self.b_min > self.b_max:
            raise ConfigError(f"b_min ({b_min}) must not exceed b_max ({b_max})")
        if not self.b_min <= bits <= self.b_max:
            raise ConfigError(f"initial bits {bits} must lie in [b_min, b_max] = [{b_min}, {b_max}]")
        if signed is True and bits < 2:
            raise ConfigError("a signed A2Q grid needs at least 2 bits (2^(B-1) - 1 = 0 at B = 1); "
                              "use bits >= 2, or signed=False for non-negative data")
        if signed is True and self.b_max < 2:
            raise ConfigError(f"a signed A2Q grid needs b_max >= 2, got {b_max}")
        # The base class sees a plain signed/unsigned grid of `bits` (its qmin/qmax are informative only:
        # forward and quant_int below use the per-entry widths).
        super().__init__(max(bits, 2) if signed is not False else bits, symmetric=True,
                         signed=signed is not False, granularity="tensor")
        self.bits = bits
        self.binary = False
        self.layout = A2QLayout(granularity, ch_axis, num_nodes, num_channels, groups)
        self.estimator = "clipped_ste"
        self.auto_signed = signed is None
        self.grad_scale = bool(grad_scale)
        self.local_grad = bool(local_grad)
        if isinstance(local_weight, bool) or not isinstance(local_weight, numbers.Real) or local_weight < 0:
            raise ConfigError(f"local_weight must be a number >= 0, got {local_weight!r}")
        self.local_weight = float(local_weight)
        if local_loss not in _LOCAL_LOSSES:
            raise ConfigError(f"unknown local_loss {local_loss!r}; valid: {', '.join(_LOCAL_LOSSES)}")
        self.local_loss = local_loss
        if local_norm not in _LOCAL_NORMS:
            raise ConfigError(f"unknown local_norm {local_norm!r}; valid: {', '.join(_LOCAL_NORMS)}")
        self.local_norm = local_norm
        if isinstance(bits_lr_scale, bool) or not isinstance(bits_lr_scale, numbers.Real) or bits_lr_scale <= 0:
            raise ConfigError(f"bits_lr_scale must be a number > 0, got {bits_lr_scale!r}")
        self.bits_lr_scale = float(bits_lr_scale)
        if isinstance(step_lr_scale, bool) or not isinstance(step_lr_scale, numbers.Real) or step_lr_scale <= 0:
            raise ConfigError(f"step_lr_scale must be a number > 0, got {step_lr_scale!r}")
        self.step_lr_scale = float(step_lr_scale)
        p = self.layout.size or 0  # 0: sized at initialisation (per channel, lazy per node)
        # s = step_init · exp(step_log), b = b_init + bits_lr_scale · b_delta (see the class docstring)
        self.step_log = nn.Parameter(torch.zeros(p))
        self.b_delta = nn.Parameter(torch.zeros(p))
        self.register_buffer("step_init", torch.ones(p))
        self.register_buffer("b_init", torch.tensor(float(bits)))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed_flag", torch.tensor(self.signed))
        self._initialized = False
        self._local: Tensor | None = None  # the local-gradient term of the last training forward
        self._last_idx: Tensor | None = None  # nearest-neighbour groups of the last forward's rows
        self.last_dim: int | None = None  # elements per table entry in the last forward (memory penalty)

    # ------------------------------------------------------------------ bounds
    @property
    def width_lo(self) -> int:
        """Smallest integer width of the grid: 2 signed, 1 unsigned."""
        return 2 if self.signed else 1

    def _b_range(self) -> tuple[float, float]:
        lo = max(self.b_min, float(self.width_lo))
        return lo, max(lo, self.b_max)

    def on_full_graph(self, edge_index: Tensor, num_nodes: int) -> None:
        """Mini-batches of one graph (:func:`qgnn.nn.context.attach_graph`): a per-node table gets one entry
        per node of the whole graph, indexed by global id. Nodes absent from the first batch start from the
        mean range of the present ones (see ``initialize``); a table already sized is left as it is."""
        if self.layout.granularity == "node" and self.layout.num_nodes is None:
            self.layout.num_nodes = int(num_nodes)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def initialize(self, x: Tensor, index: Tensor | None = None) -> None:
        """(Re)initialise b and s from ``x`` (see the class docstring); automatic on the first batch."""
        p = self.layout.check(x, index)
        x = x.detach()
        if self.auto_signed:
            self.signed = sync.any_true(bool((x < 0).any()))  # distributed: every rank the same grid
        self.signed_flag.fill_(self.signed)
        lo, hi = self._b_range()
        b0 = min(max(float(self.bits), lo), hi)
        qmax0 = a2q_grid(integer_width(torch.tensor(b0), self.width_lo), self.signed)[1].item()
        mag = x.abs() if self.signed else x.clamp(min=0)
        g = self.layout.granularity
        if g == "tensor":
            amax = mag.amax().reshape(1)
        elif g == "channel":
            a = self.layout.axis(x)
            amax = mag.amax(dim=tuple(d for d in range(x.dim()) if d != a))
            self.layout.num_channels = p
        elif g == "node":
            self.layout.num_nodes = p
            rows = mag.reshape(x.shape[0], -1).amax(dim=1)
            amax = self.layout.scatter_rows(rows, index, "amax", -math.inf)
            amax = torch.where(torch.isfinite(amax), amax, torch.zeros_like(amax))
        else:  # nearest-neighbour groups: ranges at evenly spaced quantiles of the per-row maxima
            f = mag.reshape(x.shape[0], -1).amax(dim=1).sort().values
            pos = torch.linspace(0, f.numel() - 1, p, device=x.device).round().long()
            amax = f[pos]
        # A distributed run starts every rank from the ranges of all ranks' batches (qgnn.quant.sync): the max
        # of the maxima, the mean of the groups' quantiles.
        amax = sync.nanmean(amax)[0] if g not in ("tensor", "channel", "node") else sync.maximum(amax)
        # Entries with nothing to go by (all-zero rows, nodes absent from the batch) start from the mean
        # range of the others (1 if there are none): their step is multiplicative (s0 · exp(step_log)),
        # and one floored at epsilon could not grow to a useful size in any reasonable number of steps.
        amax = amax.to(self.step_init.dtype)
        seen = amax > 0
        fill = amax[seen].mean() if bool(seen.any()) else amax.new_ones(())
        step = (torch.where(seen, amax, fill) / qmax0).clamp(min=SCALE_EPS)
        self._set("step_init", step)
        self._set("step_log", torch.zeros_like(step))
        self._set("b_delta", torch.zeros_like(step))
        self.b_init.fill_(b0)
        self.initialized.fill_(True)
        self._initialized = True

    def _set(self, name: str, value: Tensor) -> None:
        t = getattr(self, name)
        if t.shape != value.shape:  # lazily sized table; keep the Parameter object for optimizers
            with torch.inference_mode(False):
                t.data = torch.empty(value.shape, dtype=t.dtype, device=value.device)
        t.data.copy_(value)

    # ------------------------------------------------------------------ parameters
    def _step(self) -> Tensor:
        return (self.step_init * torch.exp(self.step_lr_scale * self.step_log)).clamp(min=SCALE_EPS)

    def _raw_bits(self) -> Tensor:
        return self.b_init + self.bits_lr_scale * self.b_delta

    def _bits(self) -> Tensor:
        """Continuous widths clamped to [b_min, b_max] (straight-through, so b keeps its gradient)."""
        lo, hi = self._b_range()
        return clamp_ste(self._raw_bits(), lo, hi)

    def _width(self) -> Tensor:
        lo, hi = self._b_range()
        return integer_width(self._raw_bits().clamp(lo, hi), self.width_lo)

    @property
    def step(self) -> Tensor:
        """The step table s (differentiable in ``step_log``)."""
        return self._step()

    @property
    def b(self) -> Tensor:
        """The continuous bit-width table b clamped to [b_min, b_max] (differentiable in ``b_delta``)."""
        return self._bits()

    @property
    def bit_width(self) -> int | Tensor:
        """Integer widths per entry (int64 tensor); before initialisation the initial ``bits`` (int).

        Nearest-neighbour: the widths of the rows of the last forward (what those rows were stored
        with), or of the groups before any forward.
        """
        if not self._initialized or self.b_delta.numel() == 0:
            return self.bits
        w = self._width()
        if self.layout.granularity == "nn" and self._last_idx is not None:
            w = w.index_select(0, self._last_idx)
        return w.long()

    @property
    def width_table(self) -> Tensor:
        """Integer widths of the table entries (int64; nodes, channels, groups), detached."""
        return self._width().long()

    @property
    def scale(self) -> Tensor:
        return self._step().detach()

    @property
    def zero_point(self) -> Tensor:
        return torch.zeros_like(self.step_init)

    def memory_bits(self) -> tuple[Tensor, int] | None:
        """(Σ_entries dim · b with the continuous b, Σ_entries dim): the bits and elements of what this
        quantizer stores (dim: elements per entry in the last forward; nearest-neighbour: per row of the
        last forward), for :class:`A2QMemoryPenalty`; None before a forward has fixed the dimensions."""
        if not self._initialized or self.last_dim is None or self.b_delta.numel() == 0:
            return None
        b = self._bits()
        if self.layout.granularity == "nn":
            if self._last_idx is None:
                return None
            counts = torch.bincount(self._last_idx, minlength=b.numel()).to(b.dtype)
            return self.last_dim * (counts * b).sum(), self.last_dim * int(self._last_idx.numel())
        return self.last_dim * b.sum(), self.last_dim * b.numel()

    # ------------------------------------------------------------------ forward
    def _expanded(self, x: Tensor, index: Tensor | None, scale_grad: bool) -> tuple[Tensor, Tensor]:
        """s and b gathered / viewed to broadcast against x (nearest-neighbour: picks the groups)."""
        s, b = self._step(), self._bits()
        if self.layout.granularity == "nn":
            idx = self._assign(x)
            self._last_idx = idx
        if scale_grad and self.grad_scale and s.requires_grad:
            qmax = a2q_grid(self._width(), self.signed)[1].clamp(min=1)
            n = float(max(self.layout.group_size(x), 1))
            if self.layout.granularity == "nn":  # N = rows that picked the group × row size
                n = torch.bincount(idx, minlength=s.numel()).clamp(min=1).to(s.dtype) * n
            s = _ScaleGrad.apply(s, torch.rsqrt(n * qmax).to(s.dtype))
        if self.layout.granularity == "nn":
            shape = (x.shape[0],) + (1,) * (x.dim() - 1)
            return s.index_select(0, idx).view(shape), b.index_select(0, idx).view(shape)
        expand = self.layout.expand
        return expand(s, x, index), expand(b, x, index)

    @torch.no_grad()
    def _assign(self, x: Tensor) -> Tensor:
        """Group of each row: argmin_j |max|x_row| − s_j · qmax_j| (ties: the smaller range)."""
        return nearest_group(x.detach(), self._step() * a2q_grid(self._width(), self.signed)[1], self.signed)

    def _quant(self, x, s, b):
        lo, hi = self._b_range()
        return a2q_fake_quant(x, s, b, self.signed, self.width_lo, min(MAX_BITS, int(math.floor(hi))))

    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        if not self.enabled or x.numel() == 0:
            return x
        self.layout.check(x, index)
        if not self._initialized:
            self.initialize(x, index)
        if self.training:
            with torch.no_grad():  # projected gradient descent: keep the stored b inside its bounds
                lo, hi = self._b_range()
                k = self.bits_lr_scale
                self.b_delta.data.clamp_((lo - self.b_init) / k, (hi - self.b_init) / k)
        # elements per entry: a row for nodes / groups, numel / C per channel, numel per tensor
        self.last_dim = self.layout.group_size(x) if self.layout.granularity != "tensor" else x.numel()
        s, b = self._expanded(x, index, scale_grad=True)
        self._local = None
        if not self.local_grad:
            return self._quant(x, s, b)
        if not (self.training and torch.is_grad_enabled() and (s.requires_grad or b.requires_grad)):
            return self._quant(x, s.detach(), b.detach())
        # x̂ (gradient to x only) and the local error x − Q(x) (gradient to s and b only), in one pass
        hi = min(MAX_BITS, int(math.floor(self._b_range()[1])))
        out, diff = a2q_out_and_local(x, s, b, bool(self.signed), self.width_lo, hi)
        if self.local_norm == "step":  # the error in units of each entry's own step
            diff = diff / s.detach()
        err = diff.square() if self.local_loss == "l2" else diff.abs()
        self._local = self.local_weight * self._entry_sum(err)
        return out

    def _entry_sum(self, err: Tensor) -> Tensor:
        """Σ over entries of the mean error of each entry's elements (nodes / groups: per row)."""
        g = self.layout.granularity
        if g == "tensor":
            return err.mean()
        if g == "channel":
            a = self.layout.axis(err)
            return err.mean(dim=tuple(d for d in range(err.dim()) if d != a)).sum()
        return err.reshape(err.shape[0], -1).mean(dim=1).sum()

    def penalty(self) -> Tensor | float:
        """The local-gradient term of the last training forward (0 in eval, before any forward, or
        with ``local_grad=False``); the training loop adds it to the loss."""
        if not self.training or self._local is None:
            return 0.0
        return self._local

    # ------------------------------------------------------------------ export
    def _qparams(self, x, index, observe=True):
        if not self._initialized:
            self.initialize(x, index)
        return self._expanded(x, index, scale_grad=False)[0], None

    @torch.no_grad()
    def quant_int(self, x: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Integer codes of ``x`` with the per-entry grids, and (scale, zero_point = 0) broadcastable
        against them: ``dequantize(*q.quant_int(x, index))`` equals ``q(x, index)`` in eval mode.

        Codes are int8 (signed, or unsigned up to b_max = 7), uint8 for unsigned 8-bit."""
        lo, hi = self._b_range()
        top = min(MAX_BITS, int(math.floor(hi)))
        dtype = code_dtype(-(1 << (top - 1)), (1 << (top - 1)) - 1) if self.signed else code_dtype(0, (1 << top) - 1)
        if x.numel() == 0:
            empty = x.new_zeros(())
            return torch.empty(x.shape, dtype=dtype, device=x.device), empty, empty
        self.layout.check(x, index)
        if not self._initialized:
            self.initialize(x, index)
        s, b = self._expanded(x, index, scale_grad=False)
        qmin, qmax, _, _ = a2q_grid(integer_width(b, self.width_lo, top), self.signed)
        q = torch.maximum(torch.minimum(torch.round(x / s), qmax), qmin)
        return q.to(dtype), s.detach(), torch.zeros_like(s).detach()

    # ------------------------------------------------------------------ repr / state
    def _repr_fields(self):
        signed = "auto" if self.auto_signed and not self._initialized else self.signed
        fields = [f"bits={self.bits}", f"signed={signed}", f"granularity={self.layout.describe()}",
                  f"b_range=[{self.b_min:g}, {self.b_max:g}]"]
        if self._initialized and self.b_delta.numel():
            fields.append(f"mean_width={float(self._width().float().mean()):.2f}")
        if self.local_grad:
            fields.append(f"local_grad=True, local_weight={self.local_weight:g}, local_loss={self.local_loss}")
        return fields

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("step_log", "b_delta", "step_init"):
            saved, t = state_dict.get(prefix + name), getattr(self, name)
            lazy = self.layout.granularity in ("channel", "node") and self.layout.size is None
            if saved is not None and t.shape != saved.shape and (lazy or not self._initialized):
                t.data = torch.empty(saved.shape, dtype=t.dtype, device=t.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        n = self.step_init.numel()
        if n and self.layout.granularity == "channel":
            self.layout.num_channels = n
        if n and self.layout.granularity == "node":
            self.layout.num_nodes = n
        self.signed = bool(self.signed_flag)
        self._initialized = bool(self.initialized)

    def __getstate__(self):
        # the local term holds an autograd graph: deepcopy / pickle must not try to copy it
        state = self.__dict__.copy()
        state["_local"] = None
        return state


# --------------------------------------------------------------------------------------------------
# memory penalty
# --------------------------------------------------------------------------------------------------


class A2QMemoryPenalty(nn.Module):
    """A2Q's memory-size penalty: ``a · ReLU(M − M_target)²``.

    ``M = Σ_q Σ_rows dim_q · b_row / 8 / 1024`` is the storage of the node features in KB, summed over
    the per-node and nearest-neighbour A2Q quantizers ``quantizers`` (``dim_q``: the row width the
    quantizer saw last; ``b_row``: the continuous width of the row's entry, so the gradient reaches b).
    ``M_target`` is ``target_kb`` when given, else ``target_avg_bits · Σ_q dim_q · rows_q / 8 / 1024``
    (the storage at that average width). ``weight`` ``a`` is in 1/KB²: with the default 1e-4, an excess
    of 100 KB adds 1.0 to the loss. :meth:`penalty` is 0 in eval mode, below the target and before the
    quantizers have seen data.

    The quantizers are kept in a plain list (not registered as sub-modules): they already belong to the
    model's layers, and registering them twice would duplicate their state-dict entries.
    """

    def __init__(self, quantizers, target_avg_bits: float | None = 2.0, target_kb: float | None = None,
                 weight: float = 1e-4):
        super().__init__()
        qs = list(quantizers)
        bad = [type(q).__name__ for q in qs if not isinstance(q, A2QQuantizer)]
        if bad:
            raise ConfigError(f"A2QMemoryPenalty takes A2Q quantizers, got {', '.join(bad)}")
        if target_kb is None and target_avg_bits is None:
            raise ConfigError("A2QMemoryPenalty needs a target: target_avg_bits or target_kb")
        if target_kb is not None and (isinstance(target_kb, bool) or not isinstance(target_kb, numbers.Real)
                                      or target_kb < 0):
            raise ConfigError(f"target_kb must be a number >= 0 (KB), got {target_kb!r}")
        if target_avg_bits is not None and (isinstance(target_avg_bits, bool)
                                            or not isinstance(target_avg_bits, numbers.Real)
                                            or not MIN_BITS <= target_avg_bits <= MAX_BITS):
            raise ConfigError(f"target_avg_bits must be a number in 1..8, got {target_avg_bits!r}")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or weight < 0:
            raise ConfigError(f"memory weight must be a number >= 0, got {weight!r}")
        self._quantizers = qs  # plain list: see the class docstring
        self.target_avg_bits = None if target_avg_bits is None else float(target_avg_bits)
        self.target_kb = None if target_kb is None else float(target_kb)
        self.weight = float(weight)

    @property
    def quantizers(self) -> list[A2QQuantizer]:
        return list(self._quantizers)

    def memory(self) -> tuple[Tensor, float] | None:
        """(M in KB, differentiable in b; M_target in KB), or None before any quantizer has seen data."""
        total, elems = None, 0
        for q in self._quantizers:
            m = q.memory_bits() if q.enabled else None
            if m is None:
                continue
            bits, n = m
            total = bits if total is None else total + bits
            elems += n
        if total is None:
            return None
        target = self.target_kb if self.target_kb is not None else self.target_avg_bits * elems / 8 / 1024
        return total / 8 / 1024, target

    def penalty(self) -> Tensor | float:
        if not self.training or self.weight == 0:
            return 0.0
        m = self.memory()
        if m is None:
            return 0.0
        kb, target = m
        return self.weight * torch.relu(kb - target).square()

    def extra_repr(self) -> str:
        target = f"target_kb={self.target_kb:g}" if self.target_kb is not None else \
            f"target_avg_bits={self.target_avg_bits:g}"
        return f"quantizers={len(self._quantizers)}, {target}, weight={self.weight:g}"
