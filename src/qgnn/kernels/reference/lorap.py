"""LoRAP prompt injection: the plain-torch specification.

LoRAP (Liu, Li & Rossi, "LoRAP: Low-Rank Aggregation Prompting for Quantized Graph Neural Networks
Training", arXiv 2601.15079) adds to every aggregated feature s_i an input-dependent prompt mixed from k
basis prompts that share a rank-r factorisation::

    out_i = s_i + softmax(W_a s_i)ᵀ (U V)          s: [N, d], W_a: [k, d], U: [k, r], V: [r, d]

computed as ``s + (softmax(s W_aᵀ) U) V``: the k-wide weights meet U first, so the [k, d] product U V is
never formed. Autograd differentiates this function; it is what the fused Triton kernel
(:mod:`qgnn.kernels.triton.lorap`) must reproduce, forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgnn.errors import ConfigError

__all__ = ["check_lorap_shapes", "lorap_inject_reference"]


def check_lorap_shapes(s: Tensor, w_a: Tensor, u: Tensor, v: Tensor) -> None:
    """ConfigError unless s [N, d], w_a [k, d], u [k, r], v [r, d] agree (k, r >= 1) on one device and dtype."""
    if s.dim() != 2 or w_a.dim() != 2 or u.dim() != 2 or v.dim() != 2:
        raise ConfigError(f"lorap: s, w_a, u, v must be 2-D, got {tuple(s.shape)}, {tuple(w_a.shape)}, "
                          f"{tuple(u.shape)}, {tuple(v.shape)}")
    d, (k, dw), (ku, r), (rv, dv) = s.size(1), w_a.shape, u.shape, v.shape
    if not (dw == d == dv and ku == k and rv == r and k >= 1 and r >= 1):
        raise ConfigError(f"lorap: shapes do not fit s [N, d], w_a [k, d], u [k, r], v [r, d] with k, r >= 1: "
                          f"s {tuple(s.shape)}, w_a {tuple(w_a.shape)}, u {tuple(u.shape)}, v {tuple(v.shape)}")
    if len({t.device for t in (s, w_a, u, v)}) != 1 or len({t.dtype for t in (s, w_a, u, v)}) != 1:
        raise ConfigError("lorap: s, w_a, u and v must share one device and one dtype")


def lorap_inject_reference(s: Tensor, w_a: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``s + softmax(s W_aᵀ, dim=-1) U V`` (see the module docstring); differentiable in every input."""
    check_lorap_shapes(s, w_a, u, v)
    alpha = torch.softmax(s @ w_a.t(), dim=-1)
    return s + (alpha @ u) @ v
