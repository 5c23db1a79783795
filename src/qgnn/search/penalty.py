"""Differentiable cost penalties for the mixed-precision search (MixQ-GNN).

:class:`BitOpsPenalty` adds  λ · E[BitOPs] / BitOPs_FP32  to the training loss, where

    E[BitOPs] = Σ_ops MACs(op) · E[b_a(op)] · E[b_w(op)]

is the cost model of :mod:`qgnn.search.cost` (the one BitOPs definition of qgnn) with each relaxed slot's
width replaced by its expected width E[b] = Σ_k softmax(α)_k b_k, so the gradient reaches α. The two
operands of an op belong to different slots with independent choices, so E[b_a · b_w] = E[b_a] · E[b_w]:
the penalty is the exact expectation of the BitOPs of the sampled assignment. Dividing by the FP32 count
makes λ independent of graph and model size (the penalty lies in (0, 1]).

``kind="memory"`` is the alternative proxy: the expected stored bits of every quantized operand,
Σ_slots numel(slot) · E[b(slot)] / (32 · Σ numel), weights and activations alike, which is linear in
bits like the bit-width sums MixQ-GNN's reference code penalises.

The MACs come from the same per-layer counters as ``cost_report``, recorded by forward hooks on every
training forward (cheap Python arithmetic on shapes), so a mini-batch's penalty uses that batch's MACs.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from qgnn.errors import ConfigError
from qgnn.search.cost import FP32_BITS, _bind, _collect, _quantizer, _weight_targets

__all__ = ["BitOpsPenalty", "PENALTY_KINDS", "expected_slot_bits"]

PENALTY_KINDS = ("bitops", "memory")


def expected_slot_bits(module: nn.Module, slot: str | None, fixed: float) -> Tensor | float:
    """E[b] of ``slot`` (a tensor with gradient for a relaxed quantizer), else the fixed width ``fixed``."""
    if slot is None:
        return fixed
    q = _quantizer(module, slot)
    if q is None:
        return fixed
    expected = getattr(q, "expected_bits", None)
    return expected() if callable(expected) else fixed


class BitOpsPenalty(nn.Module):
    """``penalty()`` = weight · E[cost] / FP32 cost of the last training forward (0 in eval mode).

    Args: ``model`` (its supported layers are hooked), ``weight`` λ (a finite number; negative values
    reward bits, as MixQ-GNN's λ = −1e-8 setting does), ``kind`` ``"bitops"`` or ``"memory"``.
    The hooked layers are kept in a plain list, not registered as sub-modules.
    """

    def __init__(self, model: nn.Module, weight: float, kind: str = "bitops"):
        super().__init__()
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"the penalty weight lambda must be a finite number, got {weight!r}")
        if kind not in PENALTY_KINDS:
            raise ConfigError(f"unknown penalty kind {kind!r}; valid kinds: {', '.join(PENALTY_KINDS)}")
        self.weight = float(weight)
        self.kind = kind
        targets, _ = _collect(model)
        self._records: list = []
        self._handles = [model.register_forward_pre_hook(self._clear)]
        for _, module, counter in targets:
            self._handles.append(module.register_forward_hook(self._make_hook(counter), with_kwargs=True))

    def _clear(self, *_):
        self._records.clear()

    def _make_hook(self, counter):
        def hook(module, args, kwargs, output):
            if module.training and self.training:
                ops, acts, _ = counter(module, _bind(module, args, kwargs), args, output)
                self._records.append((module, ops, acts))
        return hook

    def remove(self) -> None:
        """Detach the hooks (the penalty is then always 0)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._records.clear()

    def expected_cost(self) -> tuple[Tensor | float, float]:
        """(E[cost], FP32 cost) of the recorded forward, for ``kind``."""
        total: Tensor | float = 0.0
        fp32 = 0.0
        if self.kind == "bitops":
            for module, ops, _ in self._records:
                for op in ops:
                    ba = expected_slot_bits(module, op.a_slot, op.b_a)
                    bw = expected_slot_bits(module, op.w_slot, op.b_w)
                    total = total + op.macs * ba * bw
                    fp32 += op.bitops_fp32
            return total, fp32
        seen: set[int] = set()
        for module, _, acts in self._records:
            for slot, numel, bits in acts:
                total = total + numel * expected_slot_bits(module, slot, bits)
                fp32 += numel * FP32_BITS
            if id(module) in seen:
                continue
            seen.add(id(module))
            for slot in ("weight", "weight_root", "att"):
                numel = sum(p.numel() for p in _weight_targets(module, slot))
                if numel:
                    total = total + numel * expected_slot_bits(module, slot, FP32_BITS)
                    fp32 += numel * FP32_BITS
        return total, fp32

    def penalty(self) -> Tensor | float:
        if not self.training or not self._records or self.weight == 0.0:
            return 0.0
        total, fp32 = self.expected_cost()
        return self.weight * total / fp32 if fp32 else 0.0

    def extra_repr(self) -> str:
        return f"kind={self.kind}, weight={self.weight:g}"
