"""Fake-quantization primitives: rounding, clamping and affine fake-quant with straight-through gradients.

Everything here is a pure function of tensors; the quantizer modules in :mod:`qgnn.quant.quantizers`
only decide *which* scale / zero-point to pass in.

Affine (asymmetric) uniform quantization, Jacob et al., CVPR 2018 ("Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference")::

    q  = clamp(round(x / s) + z, qmin, qmax)        integer code
    x̂  = (q - z) · s                                fake-quantized value

with scale ``s > 0`` and an *integer* zero-point ``z``, so that the real value 0 is exactly representable
(code ``z``). Symmetric quantization is the special case ``z = 0``.

Rounding is round-half-to-even (``torch.round``), the same rule as NumPy and the integer runtime.

Gradients (the round has zero derivative almost everywhere, so training needs an estimator):

* ``"ste"``: straight-through estimator, Bengio et al. 2013 ("Estimating or Propagating Gradients Through
  Stochastic Neurons"): d x̂ / dx = 1 everywhere.
* ``"clipped_ste"``: d x̂ / dx = 1 inside the representable range (qmin <= x/s + z <= qmax), 0 outside,
  i.e. the true derivative of the clamp with the round treated as identity.

With ``"clipped_ste"`` the scale gradient is the LSQ one, Esser et al., ICLR 2020 ("Learned Step Size
Quantization"); with u = x/s::

    d x̂ / ds = -u + round(u)         if qmin <= u + z <= qmax   (the paper's -x/s + round(x/s))
               qmin - z or qmax - z  otherwise                  (the paper's -Q_N / Q_P for z = 0)
    d x̂ / dz = 0 inside, -s outside  (LSQ+, Bhalgat et al. 2020, with z rounded straight-through)

Rounding happens before the zero-point is added (``round(x/s) + z``, as in Jacob et al.), never as
``round(x/s + z)``: with ties to even the two differ for odd z, and the sum x/s + z loses low bits of x/s
when z is large.

1-bit signed codes are *binary*: ``{-1, +1}`` (no zero code), x̂ = s · sign(x) with sign(0) = +1, the
BinaryConnect / XNOR-Net quantizer. A two's-complement 1-bit grid ``{-1, 0}`` can only represent one sign,
so it is never useful; unsigned 1-bit stays the affine grid ``{0, 1}``.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from qgnn.errors import ConfigError, lookup

__all__ = [
    "MIN_BITS",
    "MAX_BITS",
    "SCALE_EPS",
    "ESTIMATORS",
    "validate_bits",
    "parse_estimator",
    "qrange",
    "is_binary",
    "round_ste",
    "clamp_ste",
    "clamp_clipped",
    "sign_ste",
    "grad_scale",
    "fake_quant",
    "binary_fake_quant",
    "quantize",
    "dequantize",
    "code_dtype",
    "calc_qparams",
]

MIN_BITS, MAX_BITS = 1, 8
# Smallest scale we ever divide by: a constant or all-zero tensor has zero range, and s = 0 would give
# x / s = NaN. float32 machine epsilon is also what torch.ao uses as its scale floor.
SCALE_EPS = float(torch.finfo(torch.float32).eps)

# canonical estimator names; lookup() also accepts "clipped-ste", "Clipped_STE", ...
ESTIMATORS = {"ste": "ste", "clipped_ste": "clipped_ste"}


def validate_bits(bits) -> int:
    """Return ``bits`` as an int, or raise :class:`ConfigError` unless it is an integer in 1..8."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return int(bits)


def parse_estimator(name: str) -> str:
    """Canonical gradient-estimator name (``"ste"`` or ``"clipped_ste"``); UnknownNameError otherwise."""
    return lookup("estimator", name, ESTIMATORS)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)``.

    * signed, bits >= 2: two's complement ``[-2^(b-1), 2^(b-1) - 1]`` (8 bits: [-128, 127])
    * signed, bits == 1: ``(-1, 1)``: binary codes {-1, +1} (see :func:`binary_fake_quant`); 0 is not a code
    * unsigned: ``[0, 2^b - 1]`` (8 bits: [0, 255]; 1 bit: {0, 1})
    """
    bits = validate_bits(bits)
    if not signed:
        return 0, (1 << bits) - 1
    if bits == 1:
        return -1, 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def is_binary(bits: int, signed: bool) -> bool:
    """True when the codes are {-1, +1} (signed 1-bit), which uses the sign quantizer."""
    return bits == 1 and signed


# --------------------------------------------------------------------------------------------------
# straight-through building blocks
# --------------------------------------------------------------------------------------------------


class _RoundSTE(torch.autograd.Function):
    # A Function instead of x + (round(x) - x).detach(): one elementwise pass instead of three.
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class _ClampSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        return torch.clamp(x, lo, hi)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g):
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` (half to even) with identity gradient (STE, Bengio et al. 2013)."""
    return _RoundSTE.apply(x)


def clamp_ste(x: Tensor, lo: float, hi: float) -> Tensor:
    """``clamp(x, lo, hi)`` with identity gradient everywhere (plain STE: clipped values keep learning)."""
    return _ClampSTE.apply(x, lo, hi)


def clamp_clipped(x: Tensor, lo: float, hi: float) -> Tensor:
    """``clamp(x, lo, hi)`` with its true gradient: 1 inside [lo, hi] (bounds included), 0 outside."""
    return torch.clamp(x, lo, hi)


def sign_ste(x: Tensor) -> Tensor:
    """Binary sign, +1 for x >= 0 and -1 otherwise; gradient 1 for |x| <= 1, 0 outside (hardtanh STE,
    Courbariaux et al. 2016 / Hubara et al. 2016)."""
    return _SignSTE.apply(x)


def grad_scale(x: Tensor, g: float) -> Tensor:
    """Identity in the forward pass, multiplies the gradient by ``g`` (LSQ's step-size gradient scale)."""
    return _GradScale.apply(x, float(g))


# --------------------------------------------------------------------------------------------------
# fused fake-quant
# --------------------------------------------------------------------------------------------------


def _add_(t: Tensor, other: Tensor | None, alpha: int = 1) -> Tensor:
    # in place when `other` broadcasts into `t` (always, for per-tensor / channel / node parameters)
    if other is None:
        return t
    if torch.broadcast_shapes(t.shape, other.shape) == t.shape:
        return t.add_(other, alpha=alpha)
    return t.add(other, alpha=alpha)


def _round_codes_(r: Tensor, zero_point: Tensor | None, qmin: int, qmax: int) -> Tensor:
    """In place: r = round(x/s) -> q = clamp(r + z, qmin, qmax)."""
    return _add_(r, zero_point).clamp_(qmin, qmax)


def _codes_float(x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: int, qmax: int) -> Tensor:
    """q = clamp(round(x/s) + z, qmin, qmax) as floats.

    The definition of the codes; fake_quant performs exactly these ops (one fresh buffer, then in place),
    so that ``quantize`` and ``fake_quant`` agree bit for bit.
    """
    return _round_codes_((x / scale).round_(), zero_point, qmin, qmax)


def _sign_codes(v: Tensor) -> Tensor:
    # sign with sign(0) = +1 (torch.sign(0) = 0 would leave a third level)
    return torch.where(v >= 0, 1.0, -1.0).to(v.dtype)


def _reduce_to(grad: Tensor, like: Tensor) -> Tensor:
    # Undo broadcasting: sum the gradient over the dimensions `like` was broadcast along.
    if grad.shape != like.shape:
        grad = grad.sum_to_size(like.shape) if like.dim() else grad.sum()
    return grad.to(like.dtype)


def _reduce_product(g: Tensor, d: Tensor, like: Tensor) -> Tensor:
    """Sum of g·d over the broadcast dimensions of ``like``; one dot product for a per-tensor scale."""
    if like.numel() == 1 and g.numel() > 1:
        return torch.dot(g.reshape(-1).to(d.dtype), d.reshape(-1)).reshape(like.shape).to(like.dtype)
    return _reduce_to(g * d, like)


def _inside(u: Tensor, zero_point: Tensor | None, qmin: int, qmax: int, binary: bool) -> Tensor:
    """Where ``u = x / s`` is inside the representable range, qmin <= u + z <= qmax (binary: |u| <= 1): where the
    clipped STE passes gradient."""
    if binary:
        return u.abs() <= 1
    if zero_point is None:
        return (u >= qmin).logical_and_(u <= qmax)
    return (u >= qmin - zero_point).logical_and_(u <= qmax - zero_point)


class _FakeQuant(torch.autograd.Function):
    """x̂ = (q - z)·s with the gradients given in the module docstring, in one Function: the forward pass
    is a few elementwise kernels working in place on one buffer (it runs on every training step over
    every activation), and the backward needs only a bool mask, plus one float tensor when the scale is
    learnable."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, clipped, binary):
        need_x, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_z = zero_point is not None and ctx.needs_input_grad[2]
        u = x / scale  # the one fresh full-size buffer; the rest works in place where it can
        # "inside" the representable range, qmin <= u + z <= qmax: where the clipped STE passes gradient
        inside = _inside(u, zero_point, qmin, qmax, binary) if clipped and (need_x or need_s or need_z) else None
        ds = None
        if binary:
            q = _sign_codes(u)
            if need_s:  # d x̂/ds = sign(u) - u inside, sign(u) outside
                ds = torch.sub(q, u, out=u)
                ds = ds if inside is None else torch.where(inside, ds, q)
            out = q.mul_(scale)
        elif need_s:
            r = torch.round(u)
            ds = torch.sub(r, u, out=u)  # round(u) - u (u is not needed any more)
            qz = _add_(_round_codes_(r, zero_point, qmin, qmax), zero_point, alpha=-1)  # q - z
            if inside is not None:  # outside: qmin - z or qmax - z
                ds = torch.where(inside, ds, qz)
            out = qz.mul_(scale)
        else:
            q = _round_codes_(u.round_(), zero_point, qmin, qmax)
            out = _add_(q, zero_point, alpha=-1).mul_(scale)
        ctx.has_z = zero_point is not None
        ctx.save_for_backward(inside, ds, scale, zero_point)
        ctx.x_dtype = x.dtype
        # keep the caller's dtype (a float16 activation stays float16 even with float32 scales)
        return out.to(x.dtype) if x.is_floating_point() else out

    @staticmethod
    def backward(ctx, g):
        inside, ds, scale, zero_point = ctx.saved_tensors
        gx = gs = gz = None
        if ctx.needs_input_grad[0]:
            gx = (g if inside is None else g * inside).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            gs = _reduce_product(g, ds, scale)
        if ctx.has_z and ctx.needs_input_grad[2]:
            if inside is None:  # plain STE: d x̂/dz = s·(1 - 1) = 0
                gz = torch.zeros_like(zero_point)
            elif scale.shape == zero_point.shape:  # -s outside, 0 inside: sum g first, then scale (one pass)
                gz = _reduce_to(g.masked_fill(inside, 0), zero_point).mul_(scale.to(zero_point.dtype)).neg_()
            else:  # -s outside, 0 inside
                gz = _reduce_to(g.mul(scale).masked_fill_(inside, 0).neg_(), zero_point)
        return gx, gs, gz, None, None, None, None


def _as_tensor(v, x: Tensor) -> Tensor:
    if isinstance(v, Tensor):
        return v
    return torch.as_tensor(v, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)


def fake_quant(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | float | None,
    qmin: int,
    qmax: int,
    estimator: str = "ste",
) -> Tensor:
    """Affine fake quantization ``x̂ = (clamp(round(x/s) + z, qmin, qmax) - z) · s`` (Jacob et al. 2018).

    ``scale`` and ``zero_point`` broadcast against ``x`` (a scalar, a per-channel ``[1, C]`` view, a
    per-node ``[N, 1]`` gather, ...). ``zero_point`` must hold integers (or be None for symmetric);
    ``scale`` must be positive. Gradients flow to ``x`` (STE or clipped STE, per ``estimator``), to
    ``scale`` (LSQ formula) and to ``zero_point`` if they require grad. The output has the dtype of ``x``.
    """
    clipped = parse_estimator(estimator) == "clipped_ste"
    scale = _as_tensor(scale, x)
    zero_point = None if zero_point is None else _as_tensor(zero_point, x)
    return _FakeQuant.apply(x, scale, zero_point, int(qmin), int(qmax), clipped, False)


def binary_fake_quant(x: Tensor, scale: Tensor | float, estimator: str = "clipped_ste") -> Tensor:
    """Binary (signed 1-bit) fake quantization ``x̂ = s · sign(x)``, sign(0) = +1, codes {-1, +1}.

    Gradients: d x̂/dx = 1 (``"ste"``) or 1 for |x/s| <= 1 (``"clipped_ste"``, the usual hardtanh STE);
    d x̂/ds = sign(x) - x/s inside, sign(x) outside (the LSQ formula with round replaced by sign).
    """
    clipped = parse_estimator(estimator) == "clipped_ste"
    return _FakeQuant.apply(x, _as_tensor(scale, x), None, -1, 1, clipped, True)


# --------------------------------------------------------------------------------------------------
# integer codes
# --------------------------------------------------------------------------------------------------


def code_dtype(qmin: int, qmax: int) -> torch.dtype:
    """Smallest integer dtype holding [qmin, qmax]: int8, else uint8, else int16 / int32."""
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    if qmin >= -(1 << 15) and qmax < (1 << 15):
        return torch.int16
    return torch.int32


def quantize(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | float | None,
    qmin: int,
    qmax: int,
    dtype: torch.dtype | None = None,
    binary: bool = False,
) -> Tensor:
    """Integer codes ``clamp(round(x/s) + z, qmin, qmax)`` (no gradient), as ``dtype`` (default
    :func:`code_dtype`). With ``binary=True`` the codes are sign(x) in {-1, +1}.
    ``dequantize(quantize(x, ...), ...)`` equals ``fake_quant(x, ...)`` bit for bit."""
    with torch.no_grad():
        scale = _as_tensor(scale, x)
        if binary:
            q = _sign_codes(x / scale)
        else:
            zero_point = None if zero_point is None else _as_tensor(zero_point, x)
            q = _codes_float(x, scale, zero_point, int(qmin), int(qmax))
        return q.to(dtype or code_dtype(qmin, qmax))


def dequantize(codes: Tensor, scale: Tensor | float, zero_point: Tensor | float | None = None) -> Tensor:
    """Real values ``(codes - z) · s`` (float32 unless ``scale`` is another float dtype)."""
    scale = _as_tensor(scale, codes)
    q = codes.to(scale.dtype if scale.is_floating_point() else torch.float32)
    if zero_point is None:
        return q * scale
    return (q - _as_tensor(zero_point, q)) * scale


# --------------------------------------------------------------------------------------------------
# quantization parameters from a range
# --------------------------------------------------------------------------------------------------


def calc_qparams(
    min_val: Tensor,
    max_val: Tensor,
    bits: int,
    symmetric: bool = False,
    signed: bool | None = None,
    eps: float = SCALE_EPS,
) -> tuple[Tensor, Tensor]:
    """Scale and integer zero-point (both float tensors, shape of ``min_val``) covering [min_val, max_val].

    * asymmetric (Jacob et al. 2018): the range is first widened to contain 0 (min <= 0 <= max), then
      ``s = (max - min) / (qmax - qmin)`` and ``z = qmin - round(min / s)`` clamped to [qmin, qmax], so
      real 0 maps exactly to code ``z`` and nothing in the range is clipped beyond half a step.
    * symmetric signed: ``z = 0``, ``s = max(|min|, |max|) / ((qmax - qmin) / 2)`` (the torch.ao rule:
      8 bits gives absmax / 127.5; binary gives s = absmax).
    * symmetric unsigned (e.g. after ReLU): ``z = 0``, ``s = max(max, 0) / qmax``; negatives clip to 0.

    ``signed`` defaults to ``symmetric``. ``s`` is floored at ``eps``: a constant, all-zero or never
    observed (±inf sentinel) range gives a tiny positive scale, never 0, inf or NaN.
    """
    if signed is None:
        signed = symmetric
    qmin, qmax = qrange(bits, signed)
    min_neg = torch.clamp(min_val, max=0.0)  # min(min, 0): 0 must be in range (also maps +inf -> 0)
    max_pos = torch.clamp(max_val, min=0.0)  # max(max, 0) (also maps -inf -> 0)
    if symmetric:
        if signed:
            scale = torch.maximum(-min_neg, max_pos) / ((qmax - qmin) / 2)
        else:
            scale = max_pos / qmax
        scale = scale.clamp(min=eps)
        return scale, torch.zeros_like(scale)
    if is_binary(bits, signed):
        raise ConfigError(
            "1-bit signed codes are binary {-1, +1} and have no zero-point: use symmetric=True for the "
            "binary quantizer, or signed=False for the affine 1-bit grid {0, 1}"
        )
    scale = ((max_pos - min_neg) / (qmax - qmin)).clamp(min=eps)
    zero_point = (qmin - torch.round(min_neg / scale)).clamp(qmin, qmax)
    return scale, zero_point
