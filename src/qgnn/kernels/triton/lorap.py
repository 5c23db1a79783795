"""Fused LoRAP prompt injection in Triton: ``out = s + softmax(s W_aᵀ) U V`` in one pass over row blocks.

Specification: :func:`qgnn.kernels.reference.lorap_inject_reference` (same signature). Each program owns
``BLOCK_N`` rows of s [N, d]:

* forward: the logits z = s W_aᵀ ([BLOCK_N, k]) accumulate over d-tiles in registers, the softmax p and
  a = p U ([BLOCK_N, r]) stay there too, and a second sweep over the d-tiles writes s + a V. Only s is read
  and only out written per row: the k-wide logits and the [k, d] product U V never reach memory.
* backward (g = ∂L/∂out): the same program recomputes z, p and a, then
  da = g Vᵀ, dp = da Uᵀ, dz = p ⊙ (dp − Σ_k p ⊙ dp), and writes ds = g + dz W_a; the parameter gradients
  dW_a = dzᵀ s, dU = pᵀ da, dV = aᵀ g are sums over rows, accumulated per program with atomic adds (in
  float32; their summation order, and so their last bits, vary between runs).

Padding: k and r are padded to powers of two >= 16 (``tl.dot`` needs tiles of at least 16); padded
logits are −inf, so they get weight 0. Matrix products use ``input_precision="ieee"`` (no TF32), so the
kernel agrees with the float32 reference to float32 rounding. Inputs of any float dtype are computed in
float32 and stored in s's dtype.

This module imports triton at import time; import it only through :mod:`qgnn.kernels.lorap` (the
dispatcher), which does so lazily. ``TRITON_INTERPRET=1`` (set before triton is imported) runs the
kernels on CPU tensors through Triton's interpreter: that is how the tests check them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["lorap_inject_triton"]


@triton.jit
def _logits_softmax(S, WA, rows, rmask, ks, kmask, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    z = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        s = tl.load(S + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
        w = tl.load(WA + ks[:, None] * D + ds[None, :], mask=kmask[:, None] & dmask[None, :], other=0.0)
        z += tl.dot(s.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
    z = tl.where(kmask[None, :], z, float("-inf"))
    z = z - tl.max(z, axis=1)[:, None]
    e = tl.exp(z)
    return e / tl.sum(e, axis=1)[:, None]


@triton.jit
def _lorap_fwd_kernel(S, WA, U, V, OUT, N, D, K, R, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    rs = tl.arange(0, BLOCK_R)
    rsmask = rs < R
    p = _logits_softmax(S, WA, rows, rmask, ks, kmask, D, BLOCK_N, BLOCK_D, BLOCK_K)
    u = tl.load(U + ks[:, None] * R + rs[None, :], mask=kmask[:, None] & rsmask[None, :], other=0.0)
    a = tl.dot(p, u.to(tl.float32), input_precision="ieee")  # [BLOCK_N, BLOCK_R]
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        m2 = rmask[:, None] & dmask[None, :]
        v = tl.load(V + rs[:, None] * D + ds[None, :], mask=rsmask[:, None] & dmask[None, :], other=0.0)
        s = tl.load(S + rows[:, None] * D + ds[None, :], mask=m2, other=0.0)
        out = s.to(tl.float32) + tl.dot(a, v.to(tl.float32), input_precision="ieee")
        tl.store(OUT + rows[:, None] * D + ds[None, :], out.to(OUT.dtype.element_ty), mask=m2)


@triton.jit
def _lorap_bwd_kernel(S, WA, U, V, G, DS, DWA, DU, DV, N, D, K, R, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    rs = tl.arange(0, BLOCK_R)
    rsmask = rs < R
    p = _logits_softmax(S, WA, rows, rmask, ks, kmask, D, BLOCK_N, BLOCK_D, BLOCK_K)
    p = tl.where(rmask[:, None], p, 0.0)  # padded rows contribute nothing to the parameter gradients
    umask = kmask[:, None] & rsmask[None, :]
    u = tl.load(U + ks[:, None] * R + rs[None, :], mask=umask, other=0.0).to(tl.float32)
    a = tl.dot(p, u, input_precision="ieee")
    # sweep 1: da = g Vᵀ and dV += aᵀ g
    da = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        vmask = rsmask[:, None] & dmask[None, :]
        g = tl.load(G + rows[:, None] * D + ds[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
        g = g.to(tl.float32)
        v = tl.load(V + rs[:, None] * D + ds[None, :], mask=vmask, other=0.0).to(tl.float32)
        da += tl.dot(g, tl.trans(v), input_precision="ieee")
        dv = tl.dot(tl.trans(a), g, input_precision="ieee")
        tl.atomic_add(DV + rs[:, None] * D + ds[None, :], dv, mask=vmask)
    tl.atomic_add(DU + ks[:, None] * R + rs[None, :], tl.dot(tl.trans(p), da, input_precision="ieee"), mask=umask)
    dp = tl.dot(da, tl.trans(u), input_precision="ieee")  # [BLOCK_N, BLOCK_K]
    dz = p * (dp - tl.sum(p * dp, axis=1)[:, None])
    # sweep 2: ds = g + dz W_a and dW_a += dzᵀ s
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        m2 = rmask[:, None] & dmask[None, :]
        wmask = kmask[:, None] & dmask[None, :]
        w = tl.load(WA + ks[:, None] * D + ds[None, :], mask=wmask, other=0.0).to(tl.float32)
        s = tl.load(S + rows[:, None] * D + ds[None, :], mask=m2, other=0.0).to(tl.float32)
        g = tl.load(G + rows[:, None] * D + ds[None, :], mask=m2, other=0.0).to(tl.float32)
        out = g + tl.dot(dz, w, input_precision="ieee")
        tl.store(DS + rows[:, None] * D + ds[None, :], out.to(DS.dtype.element_ty), mask=m2)
        tl.atomic_add(DWA + ks[:, None] * D + ds[None, :], tl.dot(tl.trans(dz), s, input_precision="ieee"),
                      mask=wmask)


def _blocks(n: int, d: int, k: int, r: int) -> dict:
    return {"BLOCK_N": 32, "BLOCK_D": min(64, max(16, triton.next_power_of_2(d))),
            "BLOCK_K": max(16, triton.next_power_of_2(k)), "BLOCK_R": max(16, triton.next_power_of_2(r))}


class _LoRAPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, w_a, u, v):
        s, w_a, u, v = (t.contiguous() for t in (s, w_a, u, v))
        n, d = s.shape
        k, r = u.shape
        out = torch.empty_like(s)
        blocks = _blocks(n, d, k, r)
        if n:
            _lorap_fwd_kernel[(triton.cdiv(n, blocks["BLOCK_N"]),)](s, w_a, u, v, out, n, d, k, r, **blocks)
        ctx.save_for_backward(s, w_a, u, v)
        return out

    @staticmethod
    def backward(ctx, g):
        s, w_a, u, v = ctx.saved_tensors
        n, d = s.shape
        k, r = u.shape
        g = g.contiguous()
        ds = torch.empty_like(s)
        dwa = torch.zeros(w_a.shape, dtype=torch.float32, device=s.device)
        du = torch.zeros(u.shape, dtype=torch.float32, device=s.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=s.device)
        blocks = _blocks(n, d, k, r)
        if n:
            _lorap_bwd_kernel[(triton.cdiv(n, blocks["BLOCK_N"]),)](s, w_a, u, v, g, ds, dwa, du, dv, n, d, k, r,
                                                                    **blocks)
        return ds, dwa.to(w_a.dtype), du.to(u.dtype), dv.to(v.dtype)


def lorap_inject_triton(s: Tensor, w_a: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``s + softmax(s W_aᵀ) U V`` by the fused kernels above; differentiable in every input."""
    from qgnn.kernels.reference.lorap import check_lorap_shapes

    check_lorap_shapes(s, w_a, u, v)
    return _LoRAPFunction.apply(s, w_a, u, v)
