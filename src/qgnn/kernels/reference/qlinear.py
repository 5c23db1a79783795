"""Quantized linear layer on stored codes: the plain-torch specification of the runtime's GEMM kernel.

Activations arrive as unsigned codes ``u`` [M, K] (``0 <= u <= 255``, the runtime's row storage) with a
zero-point ``z_x`` and scale ``s_x`` (one per tensor, or one per row: [M]); weights as int8 codes ``w``
[O, K] with zero-point ``z_w`` and scale ``s_w`` (one per tensor or one per output channel: [O]), and a float
bias. Jacob et al. (CVPR 2018, eq. 7)::

    acc[m, o] = Σ_k (u_mk − z_x)(w_ok − z_w)                                  (exact integers)
    y[m, o]   = s_x · s_w[o] · acc[m, o] + bias[o]                             (float32)

and, when an output grid ``(s_y, z_y, u_max)`` is given, the codes of the next quantizer, requantized in
place of the float output (the fused requantisation of fbgemm's ``quantized::linear``)::

    u_y[m, o] = clamp(round(y[m, o] / s_y) + z_y, 0, u_max)                  (uint8; round half to even)

The reference computes ``acc`` in int64 (exact for any K) and the rest in float32. Fast kernels
(:mod:`qgnn.kernels.cpu.fbgemm`, ``torch._int_mm``) must give the same ``acc`` bit for bit; their float
rescale may differ by float32 rounding, so a requantized code may differ by one where ``y / s_y`` lies
within rounding of a half-integer (tests count such ties).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgnn.errors import ConfigError

__all__ = ["qlinear_reference", "check_qlinear", "OutGrid"]

OutGrid = tuple[float, int, int]  # (s_y, z_y, u_max)


def _per(v, n: int, what: str, dtype) -> Tensor:
    t = torch.as_tensor(v, dtype=dtype)
    if t.numel() == 1:
        return t.reshape(())
    if t.numel() != n:
        raise ConfigError(f"{what} must be one value or {n}, got {t.numel()}")
    return t.reshape(-1)


def check_qlinear(u: Tensor, w: Tensor) -> None:
    if u.dtype != torch.uint8 or u.dim() != 2:
        raise ConfigError(f"quantized linear needs uint8 activation codes [M, K], got {u.dtype} {tuple(u.shape)}")
    if w.dtype != torch.int8 or w.dim() != 2 or w.size(1) != u.size(1):
        raise ConfigError(f"quantized linear needs int8 weight codes [O, {u.size(1)}], got {w.dtype} "
                          f"{tuple(w.shape)}")


def qlinear_reference(u: Tensor, x_zero, x_scale, w: Tensor, w_zero, w_scale, bias: Tensor | None = None,
                      out: OutGrid | None = None) -> Tensor:
    """``y = s_x s_w Σ_k (u − z_x)(w − z_w) + bias`` (float32 [M, O]), or its codes on ``out`` (uint8)."""
    check_qlinear(u, w)
    m, o = u.size(0), w.size(0)
    zx = _per(x_zero, m, "activation zero-point", torch.int64)
    sx = _per(x_scale, m, "activation scale", torch.float32)
    zw = _per(w_zero, o, "weight zero-point", torch.int64)
    sw = _per(w_scale, o, "weight scale", torch.float32)
    uc = u.to(torch.int64) - (zx.view(-1, 1) if zx.dim() else zx)
    wc = w.to(torch.int64) - (zw.view(-1, 1) if zw.dim() else zw)
    acc = uc @ wc.t()
    s = (sx.view(-1, 1) if sx.dim() else sx) * (sw.view(1, -1) if sw.dim() else sw)
    y = acc.to(torch.float32) * s
    if bias is not None:
        y = y + bias.to(torch.float32).view(1, -1)
    if out is None:
        return y
    s_y, z_y, u_max = out
    return torch.clamp(torch.round(y / s_y) + z_y, 0, u_max).to(torch.uint8)
