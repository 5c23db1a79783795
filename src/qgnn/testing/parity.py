"""Parity helpers: compare two results with a stated tolerance, and check permutation equivariance.

``assert_close`` always names its tolerance, so a loosened bound shows in the test that uses it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["assert_close", "sqnr", "permute_graph", "assert_permutation_equivariant"]


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float, atol: float, msg: str = "") -> None:
    """``|actual - expected| <= atol + rtol · |expected|`` element-wise, same shape and dtype
    (``torch.testing.assert_close`` with the tolerance required, never its dtype-dependent default).
    ``rtol = atol = 0`` asks for bit equality (NaNs in the same places count as equal)."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


def sqnr(y: Tensor, y_hat: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 · log10(Σ y² / Σ (y − ŷ)²) (noise floored at 1e-30)."""
    y, y_hat = y.detach(), y_hat.detach()
    return float(10 * torch.log10(y.pow(2).sum() / (y - y_hat).pow(2).sum().clamp_min(1e-30)))


def permute_graph(x: Tensor, ei: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """New node i is old node perm[i]; edges keep their order (so sums add in the same order)."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return x[perm], inv[ei]


def assert_permutation_equivariant(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, ei: Tensor, *,
                                   rtol: float = 1e-4, atol: float = 1e-5, seed: int = 0) -> Tensor:
    """``fn(P x, P ei) == P fn(x, ei)`` for a random node permutation P (seeded); returns the permutation.

    ``fn`` maps node features and edges to one row per node: a layer, or a model in eval mode. A layer
    that keeps state between calls (GCN ``cached=True``, per-node tables) must be given as a function that
    builds a fresh copy, since the permuted graph is a different graph to it."""
    perm = torch.randperm(x.size(0), generator=torch.Generator().manual_seed(seed))
    y = fn(x, ei)
    y_perm = fn(*permute_graph(x, ei, perm))
    assert_close(y_perm, y[perm], rtol=rtol, atol=atol, msg="output of the permuted graph")
    return perm
