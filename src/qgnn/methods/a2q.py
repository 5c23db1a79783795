"""A2Q: aggregation-aware quantization (Zhu et al., ICLR 2023, arXiv 2302.00193).

Every quantized slot gets an :class:`~qgnn.quant.a2q.A2QQuantizer`: a learned step s and a learned
continuous bit-width b per entry, x̂ = s · clamp(round(x/s), qmin(B), qmax(B)) with B = round(b).

* Node-row slots (``input``, ``xw``, ``aggr``, ``output``): one (s, b) per node (``node_strategy="node"``,
  transductive: the table is sized from the first forward), or A2Q's nearest-neighbour groups
  (``node_strategy="nn"``, ``groups`` shared (s, b), each row taking the group whose range is nearest to
  its max|x|; for graph-level / inductive tasks, the default when the training task is "graph").
  Unsigned grids for non-negative data (decided on the first batch), signed otherwise. Per node, the
  local gradient (``local_grad``, default on for ``"node"``) trains s and b on each node's own
  quantization error, so unlabelled nodes learn their widths too.
* Edge-row slots (``edge``, ``message``, ``attention``): one (s, b) per tensor.
* Weight slots: one (s, b) per output channel (``att``: per tensor), signed, at least 2 bits.
* ``prepare`` attaches ``model.a2q_memory``, an :class:`~qgnn.quant.a2q.A2QMemoryPenalty`
  a · ReLU(M − M_target)² on the node-feature storage M (KB), which pushes the widths down; the task
  (or local) loss pushes them up where values are clipped.

``QuantConfig.bits`` is the initial width (``qgnn train --method a2q`` without ``--bits``: 4, the recipe
``a2q-start4`` of :mod:`qgnn.recipes`; from 8 the widths do not come down within the epoch budget).
Options (``QuantConfig(options={...})`` or ``A2QConfig(...)``) and their defaults are the fields of
:class:`A2QConfig`; docs/methods.md explains them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import nn

from qgnn.errors import ConfigError
from qgnn.methods.base import Method, register_method
from qgnn.methods.config import WEIGHT_SLOTS, MethodConfig
from qgnn.quant.a2q import DEFAULT_GROUPS, A2QMemoryPenalty, A2QQuantizer

__all__ = ["A2Q", "A2QConfig", "A2QMemoryPenalty", "NODE_STRATEGIES"]

NODE_STRATEGIES = ("node", "nn")
_NODE_SLOTS = frozenset({"input", "xw", "aggr", "output"})
_EDGE_SLOTS = frozenset({"edge", "message", "attention"})


@dataclass
class A2QConfig(MethodConfig):
    """Options of A2Q (``--method a2q``); the module docstring gives the model they parameterise."""

    name = "a2q"

    node_strategy: str = "node"
    """"node": one (s, b) per node (transductive, one fixed graph); "nn": nearest-neighbour groups (graph-level
    or inductive tasks; TrainConfig.resolve picks it for graph tasks)."""
    groups: int = DEFAULT_GROUPS
    """Nearest-neighbour groups per quantizer (node_strategy "nn")."""
    local_grad: bool | None = None
    """Train s and b of each node on its own quantization error; None: on for "node", off for "nn"."""
    local_weight: float = 1.0
    """Weight of Σ_nodes mean_row (x − x̂)² in the loss."""
    local_loss: Literal["l1", "l2"] = "l1"
    """"l1": absolute error (as the authors' code); "l2": squared."""
    local_norm: Literal["step", "none"] = "step"
    """"step": the error in units of the entry's step; "none": the raw error."""
    memory_weight: float = 1e-4
    """a of a · ReLU(M − M_target)², in 1/KB²."""
    target_avg_bits: float = 2.0
    """M_target = this width × the stored node-feature elements."""
    target_kb: float | None = None
    """M_target in KB directly (overrides target_avg_bits)."""
    memory_weights: bool = False
    """Count the weights' storage in M too (A2Q counts node features only)."""
    b_min: float = 1.0
    """Lowest learned width."""
    b_max: float = 8.0
    """Highest learned width."""
    grad_scale: bool = True
    """LSQ's 1/sqrt(N · qmax) on the step gradient."""
    bits_lr_scale: float = 5.0
    """b = b_init + k · b_delta: under Adam the widths move k × lr per step."""
    step_lr_scale: float = 5.0
    """s = s_init · exp(k · step_log): under Adam log s moves k × lr per step."""
    act_signed: bool | None = None
    """Signed activation grids; None: unsigned when the first batch is non-negative."""

    def validate(self) -> None:
        if self.node_strategy not in NODE_STRATEGIES:
            raise ConfigError(f"unknown a2q node_strategy {self.node_strategy!r}; valid: "
                              f"{', '.join(NODE_STRATEGIES)} ('node': one step and width per node, one fixed "
                              "graph; 'nn': nearest-neighbour groups, for graph-level or inductive tasks)")
        self.require("groups", self.groups >= 1, "an integer >= 1")
        for key in ("local_weight", "memory_weight"):
            self.require(key, getattr(self, key) >= 0, "a number >= 0")
        self.require("target_avg_bits", 1 <= self.target_avg_bits <= 8, "a number in 1..8")
        self.require("target_kb", self.target_kb is None or self.target_kb >= 0, "a number >= 0 (KB) or null")
        for key in ("b_min", "b_max"):
            self.require(key, 1 <= getattr(self, key) <= 8, "a number in 1..8")
        if self.b_min > self.b_max:
            raise ConfigError(f"a2q b_min ({self.b_min}) must not exceed b_max ({self.b_max})")
        for key in ("bits_lr_scale", "step_lr_scale"):
            self.require(key, getattr(self, key) > 0, "a number > 0")

    def resolve(self, bits: int) -> A2QConfig:
        if self.local_grad is not None:
            return self
        return dataclasses.replace(self, local_grad=self.node_strategy == "node")


@register_method(A2QConfig)
class A2Q(Method):
    def _common(self) -> dict:
        o = self.options
        return {"b_min": o.b_min, "b_max": o.b_max, "grad_scale": o.grad_scale,
                "bits_lr_scale": o.bits_lr_scale, "step_lr_scale": o.step_lr_scale}

    def quantizer(self, slot, bits, layer, name):
        o = self.options
        if self.is_weight(slot):
            # Weights are signed; a signed grid has at least 2 bits (qmax = 2^(B-1) - 1).
            kw = self.weight_kwargs(slot)
            return A2QQuantizer(max(bits, 2), signed=True, granularity=kw["granularity"],
                                ch_axis=kw["ch_axis"], **self._common())
        if slot in _NODE_SLOTS:
            nn_groups = o.node_strategy == "nn"
            return A2QQuantizer(bits, signed=o.act_signed, granularity="nn" if nn_groups else "node",
                                groups=o.groups if nn_groups else None, local_grad=o.local_grad,
                                local_weight=o.local_weight, local_loss=o.local_loss, local_norm=o.local_norm,
                                **self._common())
        if slot not in _EDGE_SLOTS:
            raise ConfigError(f"a2q does not know slot {slot!r}")
        return A2QQuantizer(bits, signed=o.act_signed, granularity="tensor", **self._common())

    def prepare(self, model: nn.Module) -> None:
        from qgnn.nn import QuantModule

        o = self.options
        counted = _NODE_SLOTS | (WEIGHT_SLOTS if o.memory_weights else frozenset())
        node_qs = [q for m in model.modules() if isinstance(m, QuantModule)
                   for slot, q in m.quantizers().items()
                   if slot in counted and isinstance(q, A2QQuantizer)]
        model.a2q_memory = A2QMemoryPenalty(node_qs, target_avg_bits=o.target_avg_bits,
                                            target_kb=o.target_kb, weight=o.memory_weight)
