"""Degree-Quant (Tailor, Fernandez-Marques & Lane, ICLR 2021, arXiv 2008.05000).

Two ideas on top of uniform QAT:

* Percentile ranges: activation ranges come from the (1 − q) and q quantiles of
  each tensor (q = 0.999 at every bit-width), tracked with momentum, so a few
  extreme aggregates of high-degree nodes do not stretch the grid. Why not a
  tighter q at low bits: bag-of-words inputs are sparse (1.3% of Cora's and 0.9%
  of CiteSeer's input entries are non-zero), so q = 0.99 lands on the smallest
  non-zero values and clips nearly every feature; measured on Cora, GCN INT4:
  27% test accuracy at q = 0.99 against 81% at q = 0.999 (one seed each). Graphs
  with dense features get q = 0.99 from their dataset recipe (qgnn.recipes,
  ``dense-features-dq-p0.99``: sbm-100k GCN dq 4, validation 81.25% against 75.21%). The
  quantiles are estimated from a fixed-size random sample
  (`qgnn.quant.PercentileObserver`), not a full k-th value of every tensor.
* Protective masking: on every training forward, node i keeps full precision
  with probability p_i = p_min + (p_max − p_min) · CDF_in-degree(i), where the
  CDF is the fraction of nodes of i's graph whose in-degree is <= i's. One
  Bernoulli mask is drawn per forward and shared by all layers (the authors' GIN
  does this; ``per_layer_mask`` draws one per layer). At evaluation every node is
  quantized. Defaults: (p_min, p_max) = (0, 0.1) at 8 bits, (0.1, 0.2) below.

Gradients use the clipped straight-through estimator (the authors' "GC" mode).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError
from qgnn.methods.base import Method, register_method
from qgnn.methods.config import MethodConfig
from qgnn.nn.graph import edge_index_of
from qgnn.quant import UniformQuantizer


def protect_probability(edge_index: Tensor, num_nodes: int, batch: Tensor | None,
                        p_min: float, p_max: float) -> Tensor:
    """p_i = p_min + (p_max − p_min) · (#nodes j in i's graph with deg_in(j) <= deg_in(i)) / |graph(i)|."""
    device = edge_index.device
    deg = torch.bincount(edge_index[1], minlength=num_nodes)[:num_nodes] if edge_index.numel() else \
        torch.zeros(num_nodes, dtype=torch.long, device=device)
    if num_nodes == 0:
        return torch.zeros(0, device=device)
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
    num_graphs = int(batch.max()) + 1
    width = int(deg.max()) + 1
    # counts[g, d] = number of nodes of graph g with in-degree d; cumulative over d gives the CDF.
    counts = torch.bincount(batch * width + deg, minlength=num_graphs * width).view(num_graphs, width)
    cum = counts.cumsum(1)
    sizes = cum[:, -1].clamp_min(1)
    cdf = cum[batch, deg].float() / sizes[batch].float()
    return p_min + (p_max - p_min) * cdf


class DegreeMask:
    """Draws the protective mask: a forward pre-hook on the model computes p once per forward;
    each quantized layer calls the mask (``node_protect(edge_index, num_nodes)``)."""

    def __init__(self, p_min: float, p_max: float, per_layer: bool = False):
        self.p_min, self.p_max, self.per_layer = p_min, p_max, per_layer
        self.prob: Tensor | None = None
        self.mask: Tensor | None = None

    def on_full_graph(self, edge_index: Tensor, num_nodes: int) -> None:
        """Mini-batches of one large graph (:func:`qgnn.nn.context.attach_graph`): p from the whole graph's
        in-degrees, looked up by the global ids of each batch's rows (:func:`qgnn.nn.context.node_ids`). A
        sampled subgraph caps in-degrees at the fanout, so its own CDF would say little about a node."""
        self.full_prob = protect_probability(edge_index, num_nodes, None, self.p_min, self.p_max)

    def pre_hook(self, module: nn.Module, args, kwargs):
        from qgnn.nn.context import current_node_ids

        self.prob = self.mask = None
        if not module.training or len(args) < 2:
            return
        x, edge_index = args[0], args[1]
        ids = current_node_ids(module)
        full = getattr(self, "full_prob", None)
        if ids is not None and full is not None:
            self.prob = full.to(ids.device).index_select(0, ids)
        else:
            batch = args[2] if len(args) > 2 else kwargs.get("batch")
            self.prob = protect_probability(edge_index_of(edge_index), x.size(0), batch, self.p_min, self.p_max)
        self.mask = torch.bernoulli(self.prob).bool()

    def __call__(self, edge_index: Tensor, num_nodes: int) -> Tensor:
        if self.prob is None or self.prob.numel() < num_nodes:
            # Called outside a model forward (a layer used alone): one graph, this edge_index.
            prob = protect_probability(edge_index, num_nodes, None, self.p_min, self.p_max)
            return torch.bernoulli(prob).bool()
        # fewer rows than the model's input: a later layer of a trimmed sampled batch, whose rows are the
        # first num_nodes of the batch (nodes ordered by hop, qgnn.models.node._Stack.forward)
        prob = self.prob[:num_nodes]
        return torch.bernoulli(prob).bool() if self.per_layer else self.mask[:num_nodes]


@dataclass
class DQConfig(MethodConfig):
    """Options of Degree-Quant (``--method dq``); the formulas are in the module docstring.

    ``p_min`` / ``p_max`` None means "by bits": (0, 0.1) when the model's bits (QuantConfig.bits) are 8,
    (0.1, 0.2) below 8, the authors' settings; :meth:`resolve` fills them in. Give both to fix them.
    """

    name = "dq"

    p_min: float | None = None
    """Protection probability of the lowest in-degree (None: by bits, see above)."""
    p_max: float | None = None
    """Protection probability of the highest in-degree (None: by bits)."""
    percentile: float = 0.999
    """q of the activation ranges [quantile(1 − q), quantile(q)] (module docstring: why not lower at low bits)."""
    momentum: float = 0.9
    """Momentum of the tracked percentile ranges."""
    sample_size: int = 16384
    """Entries sampled per tensor to estimate the quantiles."""
    per_layer_mask: bool = False
    """Draw one protective mask per layer instead of one per forward shared by all layers."""

    def validate(self) -> None:
        for key in ("p_min", "p_max"):
            v = getattr(self, key)
            self.require(key, v is None or 0 <= v <= 1, "a probability in [0, 1] (or null: by bits)")
        if self.p_min is not None and self.p_max is not None and self.p_min > self.p_max:
            raise ConfigError(f"dq p_min ({self.p_min}) must not exceed p_max ({self.p_max})")
        self.require("percentile", 0.5 < self.percentile <= 1, "in (0.5, 1]")
        self.require("momentum", 0 <= self.momentum <= 1, "in [0, 1]")
        self.require("sample_size", self.sample_size >= 1, "an integer >= 1")

    def resolve(self, bits: int) -> DQConfig:
        low = bits < 8
        return dataclasses.replace(self, p_min=(0.1 if low else 0.0) if self.p_min is None else self.p_min,
                                   p_max=(0.2 if low else 0.1) if self.p_max is None else self.p_max)


@register_method(DQConfig)
class DegreeQuant(Method):
    def quantizer(self, slot, bits, layer, name):
        if self.is_weight(slot):
            return UniformQuantizer(bits, observer="ema", observer_kwargs={"momentum": 0.0},
                                    estimator="clipped_ste", **self.weight_kwargs(slot))
        o = self.options
        return UniformQuantizer(bits, symmetric=False, observer="percentile", estimator="clipped_ste",
                                observer_kwargs={"p": o.percentile, "momentum": o.momentum,
                                                 "sample_size": o.sample_size})

    def prepare(self, model: nn.Module) -> None:
        from qgnn.nn import QuantModule

        o = self.options
        mask = DegreeMask(o.p_min, o.p_max, o.per_layer_mask)
        layers = [m for m in model.modules() if isinstance(m, QuantModule) and hasattr(m, "node_protect")]
        for m in layers:
            m.node_protect = mask
        handle = model.register_forward_pre_hook(mask.pre_hook, with_kwargs=True)
        model.__dict__.setdefault("_qgnn_hooks", []).append(handle)
