"""QuantGraphConv: PyG's ``GraphConv`` (Morris et al., "Weisfeiler and Leman Go Neural: Higher-order Graph
Neural Networks", AAAI 2019) with quantizer slots, and every fact qgnn needs about it, in this one file.

With x̂ = Q_in(x) and a missing slot meaning identity::

    a_i = Q_aggr(AGG_j x̂_j)                              AGG: the layer's aggregation (sum by default, or mean)
    y   = Q_out(a_i · Q_w(W_rel)ᵀ + b + x̂_i · Q_w_root(W_root)ᵀ)

Like SAGE, the aggregate is ``lin_rel``'s operand, so the default slots quantize it
(``DEFAULT_EXTRA_SLOTS``): every matmul of the layer is integer. Edge weights (``GraphConv``'s
``edge_weight``) are not supported by the quantized layer: a call with them raises a ConfigError.

The facts registered with :func:`qgnn.nn.registry.register_layer`: the cost counter (BitOPs per op,
``qgnn.search.cost``), the export spec (``qgnn.export.exporter``) and LoRAP's width (the aggregate, ``in``).
The runtime's ops live in ``qgnn/export/ops/graphconv.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GraphConv

from qgnn.errors import ConfigError
from qgnn.quant import Quantizer

from .base import QuantModule
from .registry import register_layer

__all__ = ["QuantGraphConv"]


def _in_width(m) -> int:
    ch = m.in_channels
    return ch[0] if isinstance(ch, (tuple, list)) else ch


def _cost(m, bound: dict, args: tuple, out):
    """BitOPs ops of one forward (``qgnn.search.cost``'s counter signature): the neighbour sum at the input
    width, ``lin_rel`` on the aggregate, ``lin_root`` on the targets."""
    from torch_geometric.nn.aggr import MeanAggregation

    from qgnn.search.cost import FP32_BITS, Op, _first, _sum_edges, slot_bits

    x_src, x_dst, e = _sum_edges(m, bound, args)
    ba = slot_bits(m, "input")
    n_out = _first(out).size(0)
    f = x_src.size(-1)
    ops = [Op("aggregate", e * f, ba, 1, b_w_fp32=1, a_slot="input")]
    if isinstance(m.aggr_module, MeanAggregation):
        ops.append(Op("mean_rescale", n_out * f, FP32_BITS, FP32_BITS))
    b_aggr = slot_bits(m, "aggr")
    ops.append(Op("transform", n_out * f * m.out_channels, b_aggr, slot_bits(m, "weight"), a_slot="aggr",
                  w_slot="weight"))
    acts = [("input", x_src.numel(), ba), ("aggr", n_out * f, b_aggr)]
    if x_dst is not None:
        ops.append(Op("root", x_dst.size(0) * x_dst.size(-1) * m.out_channels, ba, slot_bits(m, "weight_root"),
                      a_slot="input", w_slot="weight_root"))
    return ops, acts, {"nodes": n_out, "edges": e, "in": f, "out": m.out_channels}


def _export(w, m, name: str) -> dict:
    """The layer's export spec (``qgnn.export.exporter``; validated by ``qgnn.export.format``)."""
    from qgnn.export.exporter import _no_unsupported, _quantizers, _slots, _weight_slot

    q = _quantizers(m)
    _no_unsupported(q, name, {"input", "weight", "weight_root", "aggr", "output"})
    if not isinstance(m.aggr, str) or m.aggr not in ("mean", "sum", "add"):
        raise ConfigError(f"{name}: GraphConv aggregation {m.aggr!r} cannot be exported (sum or mean)")
    k, o = _in_width(m), m.out_channels
    layer = {"type": "graphconv", "in": k, "out": o, "flow": m.flow,
             "options": {"aggr": "sum" if m.aggr == "add" else m.aggr},
             "slots": _slots(w, q, name, {"input": k, "aggr": k, "output": o})}
    _weight_slot(w, layer, q, "weight", m.lin_rel.weight, name)
    _weight_slot(w, layer, q, "weight_root", m.lin_root.weight, name)
    layer["bias"] = w.floats(f"{name}.bias", m.lin_rel.bias)
    return layer


@register_layer("graphconv", cost=_cost, export=_export, aggregation_dim=_in_width)
class QuantGraphConv(QuantModule, GraphConv):
    """GraphConv with slots ``input``, ``weight`` (``lin_rel``, neighbours), ``weight_root`` (``lin_root``),
    ``aggr``, ``output``. Forward: ``forward(x, edge_index, size=None)`` as GraphConv without edge weights;
    ``x`` or a bipartite pair, ``edge_index`` a ``[2, E]`` tensor / ``EdgeIndex`` or a sparse adjacency."""

    SLOTS = ("input", "weight", "weight_root", "aggr", "output")
    DEFAULT_EXTRA_SLOTS = ("aggr",)  # lin_rel's operand (module docstring)
    FLOAT_CLASS = GraphConv
    SUPPORTS_INTEGER_AGGREGATION = True

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    def _integer_node_source(self, edge_weighted: bool) -> str | None:
        return "input" if self._integer_ready("input") else None

    def forward(self, x, edge_index, edge_weight: Tensor | None = None, size: tuple[int, int] | None = None):
        if edge_weight is not None:
            raise ConfigError("QuantGraphConv does not take edge weights (GraphConv's edge_weight)")
        x_src, x_dst, pair, g, keep, ekeep = self._read_inputs(x, edge_index, size)
        n = g.n_dst
        mode = self.integer_aggregation_mode()
        if g.weight is not None and mode == "input":
            mode = None
        x_src, x_dst, codes = self._quant_nodes("input", x_src, x_dst, keep, integer=mode == "input")
        if g.weight is not None:
            out, msg_channels = self._aggregate_rows(x_src, g, ekeep, g.weight), x_src.size(-1)
        else:
            out, msg_channels = self._neighbour_sum(x_src, codes, g, ekeep, mode)
        out = self._post_aggregate(self._q_target("aggr", out, keep), g.dst, n)
        out = F.linear(out, self._qw("weight", self.lin_rel.weight), self.lin_rel.bias)
        x_r = x_src if not pair else x_dst
        if x_r is not None:
            out = out + F.linear(x_r, self._qw("weight_root", self.lin_root.weight))
        self._record_stats(n, g.num_edges, x_src.size(1), self.out_channels, message_channels=msg_channels)
        return self._q_target("output", out, keep)
