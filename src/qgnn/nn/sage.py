"""QuantSAGEConv: PyG's ``SAGEConv`` (Hamilton, Ying & Leskovec, "Inductive Representation Learning on
Large Graphs", NeurIPS 2017) with quantizer slots.

With x̂ = Q_in(x) and a missing slot meaning identity::

    a_i = Q_aggr(AGG_j Q_msg(x̂_j))                   AGG: the layer's aggregation (mean, sum, max, ...)
    y   = Q_out(norm(a · Q_w(W_l)ᵀ + b + x̂_i · Q_w_root(W_r)ᵀ))

``norm`` is the L2 row normalisation when ``normalize=True``; the root term exists when
``root_weight=True``. With ``project=True`` the messages come from ``relu(lin(x̂))``, a float projection.

Integer aggregation (``integer_aggregation = True``, eval mode, ``aggr`` "mean" or "sum"; see
:mod:`qgnn.nn.base`): with ``"message"`` quantized (per tensor / channel) the sum runs on the message codes;
otherwise, with ``"input"`` quantized (per tensor / channel) and no projection, on the input codes,
Σ_j x̂_j = s_x Σ_j (q_x,j - z_x); "mean" divides the rescaled sum by the in-degree (0 for isolated nodes,
as PyG). The root term uses x̂ = dequantize(codes), the quantizer's own output. Max, multi-aggregation
and learnable aggregations, or ``project=True`` without a message quantizer, take the fake-quant path.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import SAGEConv

from qgnn.quant import Quantizer

from .base import QuantModule
from .registry import register_layer

__all__ = ["QuantSAGEConv"]


@register_layer("sage")
class QuantSAGEConv(QuantModule, SAGEConv):
    """SAGEConv with slots ``input``, ``weight`` (``lin_l``, neighbours), ``weight_root`` (``lin_r``),
    ``message``, ``aggr``, ``output``.

    Forward: ``forward(x, edge_index, size=None)`` as SAGEConv: ``x`` or a bipartite pair ``(x_src, x_dst)``
    (the root term reads x_dst), ``edge_index`` a ``[2, E]`` tensor / ``EdgeIndex`` or a sparse adjacency
    (:mod:`qgnn.nn.graph`). Any PyG aggregation works (it is
    the layer's own ``aggr_module``); ``weight_root`` is unused (and skipped by ``from_float``) when
    ``root_weight=False``.
    """

    SLOTS = ("input", "weight", "weight_root", "message", "aggr", "output")
    # The aggregate is lin_l's input: quantized by default, so that every matmul of the layer is integer
    # (16x BitOPs reduction at 8 bits, as GCN) and the runtime multiplies codes (qgnn.export.packed).
    DEFAULT_EXTRA_SLOTS = ("aggr",)
    FLOAT_CLASS = SAGEConv
    SUPPORTS_INTEGER_AGGREGATION = True

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    def active_slots(self) -> tuple[str, ...]:
        return self.SLOTS if self.root_weight else tuple(s for s in self.SLOTS if s != "weight_root")

    def _projects(self) -> bool:
        return bool(self.project) and hasattr(self, "lin")

    def _integer_node_source(self, edge_weighted: bool) -> str | None:
        if self._projects():
            return None  # the messages are relu(lin(x̂)), float values without codes
        return "input" if self._integer_ready("input") else None

    def forward(self, x, edge_index, size: tuple[int, int] | None = None) -> Tensor:
        x_src, x_dst, pair, g, keep, ekeep = self._read_inputs(x, edge_index, size)
        n = g.n_dst

        project = (lambda h: self.lin(h).relu()) if self._projects() else None
        mode = self.integer_aggregation_mode()
        if g.weight is not None and mode == "input":
            mode = None  # weighted sums of input codes: the fake-quant path
        x_src, x_dst, codes = self._quant_nodes("input", x_src, x_dst, keep, integer=mode == "input")
        if g.weight is not None:
            m = project(x_src) if project is not None else x_src
            out, msg_channels = self._aggregate_rows(m, g, ekeep, g.weight), m.size(-1)
        else:
            out, msg_channels = self._neighbour_sum(x_src, codes, g, ekeep, mode, project)
        out = self._post_aggregate(self._q_target("aggr", out, keep), g.dst, n)
        out = F.linear(out, self._qw("weight", self.lin_l.weight), self.lin_l.bias)
        x_r = x_src if not pair else x_dst
        if self.root_weight and x_r is not None:
            out = out + F.linear(x_r, self._qw("weight_root", self.lin_r.weight))
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=-1)
        self._record_stats(n, g.num_edges, x_src.size(1), self.out_channels, message_channels=msg_channels)
        return self._q_target("output", out, keep)
