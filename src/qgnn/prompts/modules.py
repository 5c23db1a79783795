"""Prompt modules: GPF and GPF-plus (node prompts) and LoRAP (aggregation prompts).

All parameters are plain ``nn.Parameter`` s in full precision, never ``nn.Linear`` modules, so
``qgnn.quantize_`` (which converts ``nn.Linear``) can never quantize a prompt. Every module starts as an
exact no-op: the tensor that its output adds (p, P, V) is zero, so ``x + 0`` returns ``x`` bit for bit,
while the gradient reaching that tensor is not zero, so training moves it.

* :class:`GPF` (Fang et al., "Universal Prompt Tuning for Graph Neural Networks", NeurIPS 2023):
  x_i + p, one learnable vector p ∈ R^d added to every node's features.
* :class:`GPFPlus` (same paper): x_i + Σ_k α_ik p_k, α_i = softmax(W_a x_i) over k basis prompts
  P = [p_1..p_k] ∈ R^{k×d}, W_a ∈ R^{k×d}.
* :class:`LoRAP` (Liu, Li & Rossi, arXiv 2601.15079): s_i + softmax(W_a s_i)ᵀ (U V) on the aggregated
  feature s_i of a message-passing layer; the k basis prompts are the rows of U V (U ∈ R^{k×r},
  V ∈ R^{r×d}), a rank-r family, and the mixing weights depend on s_i through W_a ∈ R^{k×d}. Computed by
  :func:`qgnn.kernels.lorap_inject` (fused Triton kernel on CUDA, the reference elsewhere).

Initialisation: W_a and U as ``nn.Linear`` weights (Kaiming-uniform, bound 1/sqrt(fan_in)); p, P and V
zero (LoRA's zero-initialised B, Hu et al. 2022).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError

__all__ = ["GPF", "GPFPlus", "LoRAP", "PromptModule"]


def _kaiming(shape: tuple[int, int]) -> nn.Parameter:
    bound = 1.0 / math.sqrt(shape[1])
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _flat(x: Tensor, dim: int, who: str) -> Tensor:
    """[N, ...] -> [N, dim] (GAT aggregates are [N, heads, C]: the heads are concatenated)."""
    if x.dim() < 2 or math.prod(x.shape[1:]) != dim:
        raise ConfigError(f"{who} was built for {dim} features per node, got a tensor of shape {tuple(x.shape)}")
    return x.reshape(x.size(0), dim)


class PromptModule(nn.Module):
    """Base class: ``dim`` features per node; ``forward(x) -> x + prompt(x)`` of the same shape."""

    kind = "prompt"

    def __init__(self, dim: int):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"{type(self).__name__}: feature dimension must be a positive int, got {dim!r}")
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class GPF(PromptModule):
    """x_i + p (zero-initialised p ∈ R^d)."""

    kind = "gpf"

    def __init__(self, dim: int):
        super().__init__(dim)
        self.p = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return (_flat(x, self.dim, "GPF") + self.p).view_as(x)


class GPFPlus(PromptModule):
    """x_i + softmax(W_a x_i)ᵀ P with k basis prompts P ∈ R^{k×d} (zero-initialised), W_a ∈ R^{k×d}."""

    kind = "gpf-plus"

    def __init__(self, dim: int, k: int = 40):
        super().__init__(dim)
        if k < 1:
            raise ConfigError(f"GPF-plus needs k >= 1 basis prompts, got {k}")
        self.k = k
        self.w_a = _kaiming((k, dim))
        self.basis = nn.Parameter(torch.zeros(k, dim))

    def forward(self, x: Tensor) -> Tensor:
        s = _flat(x, self.dim, "GPF-plus")
        return (s + torch.softmax(s @ self.w_a.t(), dim=-1) @ self.basis).view_as(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k={self.k}"


class LoRAP(PromptModule):
    """s_i + softmax(W_a s_i)ᵀ U V: k basis prompts of rank r (U ∈ R^{k×r}, V ∈ R^{r×d} zero-initialised)."""

    kind = "lorap"

    def __init__(self, dim: int, k: int = 40, rank: int = 2, backend: str = "auto", normalize: bool = False):
        super().__init__(dim)
        if k < 1 or rank < 1:
            raise ConfigError(f"LoRAP needs k >= 1 basis prompts and rank >= 1, got k={k}, rank={rank}")
        self.k, self.rank, self.backend, self.normalize = k, rank, backend, bool(normalize)
        self.w_a = _kaiming((k, dim))
        self.u = _kaiming((k, rank))
        self.v = nn.Parameter(torch.zeros(rank, dim))

    def forward(self, s: Tensor) -> Tensor:
        from qgnn.kernels import lorap_inject

        flat = _flat(s, self.dim, "LoRAP")
        w_a, u, v = (t.to(flat.dtype) for t in (self.w_a, self.u, self.v))
        if not self.normalize:
            return lorap_inject(flat, w_a, u, v, backend=self.backend).view_as(s)
        # normalised logits: softmax(W_a ŝ_i), ŝ_i = s_i / rms(s_i), the mixing driven by the direction of s_i
        # alone. Small aggregates (GCN on Cora: ‖s_i‖ ≈ 0.34) otherwise give W_a s_i ≈ 0, uniform weights and
        # a prompt that is one constant bias. s + (inject(ŝ) − ŝ) = s + softmax(W_a ŝ) U V, with the same kernel.
        # clamp before the root: sqrt'(0) is infinite, and 0 · inf would make a zero row's gradient NaN
        rms = flat.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-24).sqrt()
        unit = flat / rms
        return (flat + (lorap_inject(unit, w_a, u, v, backend=self.backend) - unit)).view_as(s)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k={self.k}, rank={self.rank}" + (", normalize=True" if self.normalize else "")
