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

``QuantConfig.bits`` is the initial width. Options (``QuantConfig(options={...})``) and defaults are in
:meth:`A2Q.default_options`; docs/methods.md explains them.
"""

from __future__ import annotations

from torch import nn

from qgnn.errors import ConfigError
from qgnn.methods.base import Method, register_method
from qgnn.methods.config import WEIGHT_SLOTS
from qgnn.quant.a2q import DEFAULT_GROUPS, A2QMemoryPenalty, A2QQuantizer

__all__ = ["A2Q", "A2QMemoryPenalty", "NODE_STRATEGIES"]

NODE_STRATEGIES = ("node", "nn")
_NODE_SLOTS = frozenset({"input", "xw", "aggr", "output"})
_EDGE_SLOTS = frozenset({"edge", "message", "attention"})


@register_method("a2q")
class A2Q(Method):
    @classmethod
    def default_options(cls, config):
        return {
            **super().default_options(config),
            "node_strategy": "node",   # "node": per-node table (transductive); "nn": nearest-neighbour groups
            "groups": DEFAULT_GROUPS,  # nearest-neighbour groups per quantizer
            "local_grad": None,        # None: True for node_strategy "node", False for "nn"
            "local_weight": 1.0,       # weight of Σ_nodes mean_row (x − x̂)² in the loss
            "local_loss": "l1",        # "l1" (absolute error, as the authors' code) or "l2" (squared)
            "local_norm": "step",      # "step": error in units of the entry's step; "none": raw error
            "memory_weight": 1e-4,     # a of a · ReLU(M − M_target)², in 1/KB²
            "target_avg_bits": 2.0,    # M_target = this width × stored node-feature elements
            "target_kb": None,         # or M_target directly in KB (overrides target_avg_bits)
            "memory_weights": False,   # count the weights' storage in M too (A2Q counts node features only)
            "b_min": 1.0,
            "b_max": 8.0,
            "grad_scale": True,        # LSQ's 1/sqrt(N · qmax) on the step gradient
            "bits_lr_scale": 5.0,      # b = b_init + k · b_delta: under Adam the widths move k × lr per step
            "step_lr_scale": 5.0,      # s = s_init · exp(k · step_log): under Adam log s moves k × lr per step
            "act_signed": None,        # None: unsigned when the first batch is non-negative
        }

    def __init__(self, config):
        super().__init__(config)
        o = self.options
        unknown = sorted(set(o) - set(self.default_options(config)))
        if unknown:
            raise ConfigError(f"unknown a2q option(s) {', '.join(unknown)}; valid options: "
                              f"{', '.join(sorted(self.default_options(config)))}")
        if o["node_strategy"] not in NODE_STRATEGIES:
            raise ConfigError(f"unknown a2q node_strategy {o['node_strategy']!r}; valid: "
                              f"{', '.join(NODE_STRATEGIES)} ('node': one step and width per node, one fixed "
                              "graph; 'nn': nearest-neighbour groups, for graph-level or inductive tasks)")
        if o["local_grad"] is None:
            o["local_grad"] = o["node_strategy"] == "node"
        if o["act_signed"] not in (None, True, False):
            raise ConfigError(f"a2q act_signed must be None (auto), true or false, got {o['act_signed']!r}")

    def _common(self) -> dict:
        o = self.options
        return {"b_min": o["b_min"], "b_max": o["b_max"], "grad_scale": o["grad_scale"],
                "bits_lr_scale": o["bits_lr_scale"], "step_lr_scale": o["step_lr_scale"]}

    def quantizer(self, slot, bits, layer, name):
        o = self.options
        if self.is_weight(slot):
            # Weights are signed; a signed grid has at least 2 bits (qmax = 2^(B-1) - 1).
            kw = self.weight_kwargs(slot)
            return A2QQuantizer(max(bits, 2), signed=True, granularity=kw["granularity"],
                                ch_axis=kw["ch_axis"], **self._common())
        if slot in _NODE_SLOTS:
            nn_groups = o["node_strategy"] == "nn"
            return A2QQuantizer(bits, signed=o["act_signed"], granularity="nn" if nn_groups else "node",
                                groups=o["groups"] if nn_groups else None, local_grad=o["local_grad"],
                                local_weight=o["local_weight"], local_loss=o["local_loss"], local_norm=o["local_norm"],
                                **self._common())
        if slot not in _EDGE_SLOTS:
            raise ConfigError(f"a2q does not know slot {slot!r}")
        return A2QQuantizer(bits, signed=o["act_signed"], granularity="tensor", **self._common())

    def prepare(self, model: nn.Module) -> None:
        from qgnn.nn import QuantModule

        o = self.options
        counted = _NODE_SLOTS | (WEIGHT_SLOTS if o["memory_weights"] else frozenset())
        node_qs = [q for m in model.modules() if isinstance(m, QuantModule)
                   for slot, q in m.quantizers().items()
                   if slot in counted and isinstance(q, A2QQuantizer)]
        model.a2q_memory = A2QMemoryPenalty(node_qs, target_avg_bits=o["target_avg_bits"],
                                            target_kb=o["target_kb"], weight=o["memory_weight"])
