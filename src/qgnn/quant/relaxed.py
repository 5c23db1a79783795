"""Relaxed mixed-precision quantizer: a softmax-weighted mixture of K bit-widths (MixQ-GNN's search).

MixQ-GNN (Moustafa, Kriege & Gansterer, ICDE 2025, arXiv 2505.09361) gives each quantized component a set
of candidate bit-widths b_1..b_K (default {2, 4, 8}) and learnable logits α, and during the search
replaces the choice by its continuous relaxation (as DARTS does for operations)::

    x̂ = Σ_k softmax(α / T)_k · Q_{b_k}(x)          E[b] = Σ_k softmax(α / T)_k · b_k

Each Q_{b_k} is uniform fake quantization with the STE. All candidates share one range observer
(the range of x does not depend on b), so each candidate only adds its own grid
s_k = range / (q_max,k − q_min,k), not a copy of anything: the memory cost is K fake-quantized copies of x
during the forward, no extra parameters beyond α. After the search :meth:`RelaxedQuantizer.chosen_bits`
(the arg-max of α) is this slot's entry in a :class:`~qgnn.search.BitAssignment`, which
``quantize_`` takes as per-module overrides to build the fixed-bit model.

``bit_width`` is the expected width E[b] as a 0-dim tensor (the cost model counts it as a fractional width;
the BitOPs penalty of :mod:`qgnn.search.penalty` differentiates :meth:`expected_bits` instead).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError

from .observers import Observer
from .primitives import (
    _add_,
    _inside,
    _round_codes_,
    _sign_codes,
    binary_fake_quant,
    calc_qparams,
    fake_quant,
    is_binary,
    parse_estimator,
    qrange,
    validate_bits,
)
from .quantizers import UniformQuantizer

__all__ = ["RelaxedQuantizer", "parse_candidates", "mixture_fake_quant", "mixture_fake_quant_reference", "SAMPLINGS"]

SAMPLINGS = ("softmax", "gumbel")


def parse_candidates(candidates) -> tuple[int, ...]:
    """Sorted unique candidate bit-widths, each in 1..8; ConfigError for an empty or bad set."""
    try:
        values = [int(b) for b in candidates]
    except (TypeError, ValueError):
        raise ConfigError(f"candidate bit-widths must be integers, got {candidates!r}") from None
    if not values:
        raise ConfigError("the candidate bit-width set is empty; give at least one width in 1..8, e.g. 2 4 8")
    return tuple(sorted({validate_bits(b) for b in values}))


def _candidate(x: Tensor, s: Tensor, z: Tensor | None, qmin: int, qmax: int, binary: bool, clipped: bool):
    """One candidate's fake-quantized copy (q - z)·s and, for the clipped STE, where it passes gradient (the
    ops and order of :func:`~qgnn.quant.primitives.fake_quant`'s forward)."""
    u = x / s
    inside = _inside(u, z, qmin, qmax, binary) if clipped else None
    if binary:
        return _sign_codes(u).mul_(s), inside
    q = _round_codes_(u.round_(), z, qmin, qmax)
    return _add_(q, z, alpha=-1).mul_(s), inside


class _Mixture(torch.autograd.Function):
    """x̂ = Σ_k w_k · Q_k(x) in one autograd node (:func:`mixture_fake_quant`)."""

    @staticmethod
    def forward(ctx, x, w, grids, clipped):
        out, saved, masks = None, [], []
        for k, (s, z, qmin, qmax, binary) in enumerate(grids):
            xq, inside = _candidate(x, s, z, qmin, qmax, binary, clipped)
            saved.append(xq)
            masks.append(inside)
            out = xq * w[k] if out is None else out.addcmul_(xq, w[k])
        ctx.clipped = clipped
        ctx.save_for_backward(w, *saved, *(m for m in masks if m is not None))
        ctx.k, ctx.x_dtype = len(grids), x.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        w, *rest = ctx.saved_tensors
        saved, masks = rest[:ctx.k], rest[ctx.k:]
        gx = gw = None
        if ctx.needs_input_grad[0]:
            if ctx.clipped:  # the STE passes Σ_k w_k where candidate k is inside its range
                pass_through = masks[0] * w[0]
                for k in range(1, ctx.k):
                    pass_through.addcmul_(masks[k], w[k])
                gx = (g * pass_through).to(ctx.x_dtype)
            else:
                gx = (g * w.sum()).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            flat = g.reshape(-1)
            gw = torch.stack([torch.dot(flat, xq.reshape(-1).to(flat.dtype)) for xq in saved]).to(w.dtype)
        return gx, gw, None, None


def _check_grids(grids) -> None:
    for s, z, *_ in grids:
        if s.requires_grad or (z is not None and z.requires_grad):
            raise ValueError("mixture_fake_quant takes fixed grids; a learnable scale needs the reference")


def mixture_fake_quant(x: Tensor, weights: Tensor, grids, estimator: str = "ste") -> Tensor:
    """MixQ-GNN's relaxed quantization x̂ = Σ_k w_k · Q_k(x), Q_k(x) = (clamp(round(x/s_k) + z_k, qmin_k, qmax_k)
    - z_k)·s_k (or s_k·sign(x) for a binary grid), as one autograd node.

    ``weights``: [K] mixture weights (softmax(α/T) or a Gumbel sample; differentiable); ``grids``: K tuples
    (scale, zero_point or None, qmin, qmax, binary), the scales and zero points broadcasting against ``x`` and
    fixed (no gradient). Gradients: dx̂/dx = Σ_k w_k (STE) or Σ_k w_k·1[x inside grid k] (clipped STE);
    dx̂/dw_k = Q_k(x). The same values as :func:`mixture_fake_quant_reference` (K fake-quant nodes, K products,
    K - 1 sums) in one node: the search runs this on every activation and weight at every step. Forward and
    backward of a slot with candidates {2, 4, 8}, one thread: 1.0 against 1.35 ms at [1250, 64] (a TU batch),
    10.9 against 19.9 ms at [20000, 64].
    """
    _check_grids(grids)
    return _Mixture.apply(x, weights, tuple(grids), parse_estimator(estimator) == "clipped_ste")


def mixture_fake_quant_reference(x: Tensor, weights: Tensor, grids, estimator: str = "ste") -> Tensor:
    """Plain-torch reference of :func:`mixture_fake_quant`: a sum of K :func:`fake_quant` /
    :func:`binary_fake_quant` outputs weighted by ``weights`` (autograd does the gradients)."""
    out = None
    for k, (s, z, qmin, qmax, binary) in enumerate(grids):
        xq = binary_fake_quant(x, s, estimator) if binary else fake_quant(x, s, z, qmin, qmax, estimator)
        term = weights[k] * xq
        out = term if out is None else out + term
    return out


class RelaxedQuantizer(UniformQuantizer):
    """Σ_k softmax(α/T)_k · Q_{b_k}(x) over candidate widths ``candidates`` (see the module docstring).

    Args: ``candidates`` (bit-widths, default (2, 4, 8)); ``temperature`` T of the softmax; ``init`` of
    α: ``"uniform"`` (α = 0, every width equally likely, the usual start) or a bit-width from the
    candidates to favour at the start (its logit set to ``init_logit``); ``sampling``: ``"softmax"`` (the
    deterministic mixture above, MixQ-GNN) or ``"gumbel"`` (a hard
    Gumbel-softmax sample per forward, SNAS / FBNet style, see :meth:`_mixture_weights`); ``observer`` /
    ``observer_kwargs`` as :class:`~qgnn.quant.UniformQuantizer` (default an EMA of min / max with
    momentum 0.9); plus the grid options of :class:`~qgnn.quant.Quantizer`. It is a UniformQuantizer whose
    grid width is a choice: ``scale`` / ``zero_point`` / ``quant_int`` read the arg-max width's grid.
    """

    kind = "relaxed"
    integer_exact = False  # its output mixes several grids; quant_int gives the arg-max grid's codes

    def __init__(
        self,
        candidates=(2, 4, 8),
        *,
        symmetric: bool = False,
        signed: bool | None = None,
        granularity: str = "tensor",
        ch_axis: int = -1,
        num_nodes: int | None = None,
        num_channels: int | None = None,
        estimator: str = "ste",
        observer: str | Observer = "ema",
        observer_kwargs: dict | None = None,
        temperature: float = 1.0,
        init: str | int = "uniform",
        init_logit: float = 1.0,
        sampling: str = "softmax",
    ):
        if isinstance(candidates, int):
            candidates = (candidates,)
        cands = parse_candidates(candidates)
        if observer == "ema" and observer_kwargs is None:
            observer_kwargs = {"momentum": 0.9}
        super().__init__(max(cands), symmetric=symmetric, signed=signed, granularity=granularity,
                         ch_axis=ch_axis, num_nodes=num_nodes, num_channels=num_channels, estimator=estimator,
                         observer=observer, observer_kwargs=observer_kwargs)
        for b in cands:
            if is_binary(b, self.signed) and not self.symmetric:
                raise ConfigError("candidate width 1 with signed codes is binary and needs symmetric=True")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
        self.sampling = sampling
        self.candidates = cands
        self.temperature = float(temperature)
        alpha = torch.zeros(len(cands))
        if init != "uniform":
            if init not in cands:
                raise ConfigError(f"init must be 'uniform' or one of the candidates {list(cands)}, got {init!r}")
            alpha[cands.index(init)] = float(init_logit)
        self.alpha = nn.Parameter(alpha)
        self.alpha.qgnn_no_weight_decay = True  # decay would pull α toward the uniform mixture
        self.register_buffer("_widths", torch.tensor(cands, dtype=torch.float32), persistent=False)
        self._grids = [(b, *qrange(b, self.signed), is_binary(b, self.signed)) for b in cands]

    # ------------------------------------------------------------------ the choice
    def probs(self) -> Tensor:
        """softmax(α / T): the weight of each candidate (differentiable)."""
        return torch.softmax(self.alpha / self.temperature, dim=0)

    def _mixture_weights(self) -> Tensor:
        """The weights of the forward's mixture: softmax(α/T); with ``sampling="gumbel"`` a one-hot
        Gumbel-softmax sample in training (straight-through: the gradient of the soft sample) and the
        arg-max one-hot in eval, so the network trains and is evaluated at discrete widths."""
        if self.sampling == "softmax":
            return self.probs()
        if self.training:
            return torch.nn.functional.gumbel_softmax(self.alpha, tau=self.temperature, hard=True)
        return torch.nn.functional.one_hot(self.alpha.detach().argmax(), len(self.candidates)).to(self.alpha.dtype)

    def expected_bits(self) -> Tensor:
        """E[b] = Σ_k softmax(α/T)_k · b_k, differentiable in α (0-dim tensor)."""
        return (self.probs() * self._widths.to(self.alpha.device)).sum()

    def chosen_bits(self) -> int:
        """The arg-max candidate: this slot's width in the searched assignment."""
        return self.candidates[int(torch.argmax(self.alpha.detach()))]

    @property
    def bit_width(self) -> Tensor:
        return self.expected_bits().detach()

    # ------------------------------------------------------------------ grids
    def _table(self, bits: int | None = None) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) of the ``bits`` grid over the observed range (default: the arg-max width)."""
        mn, mx = self.observer.range()
        return calc_qparams(mn, mx, bits or self.chosen_bits(), self.symmetric, self.signed)

    @torch.no_grad()
    def quant_int(self, x: Tensor, index: Tensor | None = None):
        """Codes at the chosen width (what the fixed-bit model after the search would store)."""
        b, qmin, qmax, binary = self._grids[self.candidates.index(self.chosen_bits())]
        saved = (self.bits, self.qmin, self.qmax, self.binary)
        self.bits, self.qmin, self.qmax, self.binary = b, qmin, qmax, binary
        try:
            return super().quant_int(x, index)
        finally:
            self.bits, self.qmin, self.qmax, self.binary = saved

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        if not self.enabled or x.numel() == 0:
            return x
        self.layout.check(x, index)
        obs = self.observer
        if obs.training or not obs.observed:
            obs.update(x, index)
        expand = self.layout.expand
        mn, mx = obs.range()  # one range for every candidate (the range of x does not depend on b)
        grids = []
        for b, qmin, qmax, binary in self._grids:
            scale, zero_point = calc_qparams(mn, mx, b, self.symmetric, self.signed)
            z = None if (binary or self.symmetric) else expand(zero_point, x, index)
            grids.append((expand(scale, x, index), z, qmin, qmax, binary))
        return mixture_fake_quant(x, self._mixture_weights(), grids, self.estimator)

    def _repr_fields(self):
        fields = [f for f in super()._repr_fields() if not f.startswith("bits=")]
        probs = ", ".join(f"{b}:{float(w):.2f}" for b, w in zip(self.candidates, self.probs().detach(), strict=True))
        return [f"candidates={list(self.candidates)}", f"probs={{{probs}}}", *fields]
