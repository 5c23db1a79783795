"""QuantGCNConv: PyG's ``GCNConv`` (Kipf & Welling, ICLR 2017) with quantizer slots.

With x̂ = Q_in(x) and a missing slot meaning identity::

    h      = Q_xw(x̂ · Q_w(W)ᵀ)
    (ei, w) = gcn_norm(edge_index, edge_weight)          cached like PyG when cached=True
    ŵ      = Q_edge(w)                                   the normalised adjacency values D^-1/2 Â D^-1/2
    m_ij   = Q_msg(ŵ_ij · h_j)
    a_i    = Q_aggr(Σ_j m_ij)
    y      = Q_out(a + b)

Integer aggregation (``integer_aggregation = True``, eval mode; see :mod:`qgnn.nn.base`):

* ``"message"`` quantized (per tensor / channel): a_i = s_m Σ_j (q_m,ij - z_m), the integer sum of the
  message codes (exactly Σ_j Q_msg(m_ij));
* otherwise ``"xw"`` quantized (per tensor / channel) and, when edge weights reach the messages (always
  with ``normalize=True``: the gcn_norm values, self loops included), ``"edge"`` quantized per tensor:
  a_i = s_e s_h Σ_j (q_e,ij - z_e)(q_h,j - z_h), from the codes of h and ŵ; the products ŵ_ij · h_j are
  never formed in float. Without edge weights (``normalize=False``, none given) the adjacency is 0/1;
* anything else (e.g. ``"xw"`` quantized but ``"edge"`` float): the fake-quant path.

``aggr``, bias and ``output`` then follow as in the fake-quant path.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from qgnn.quant import Quantizer

from .base import QuantModule

__all__ = ["QuantGCNConv"]


class QuantGCNConv(QuantModule, GCNConv):
    """GCNConv with slots ``input``, ``weight``, ``xw``, ``edge``, ``message``, ``aggr``, ``output``.

    Forward: ``forward(x, edge_index, edge_weight=None)`` as GCNConv, with ``edge_index`` a ``[2, E]``
    tensor (not a sparse adjacency). ``edge`` quantizes the edge weights that reach the messages: the
    normalised ones when ``normalize=True``, the given ``edge_weight`` otherwise (no weights, no-op).
    """

    SLOTS = ("input", "weight", "xw", "edge", "message", "aggr", "output")
    FLOAT_CLASS = GCNConv
    SUPPORTS_INTEGER_AGGREGATION = True

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    def _integer_node_source(self, edge_weighted: bool) -> str | None:
        if not self._integer_ready("xw"):
            return None
        if (edge_weighted or self.normalize) and not self._integer_ready("edge"):
            return None  # float (or per-edge) edge weights cannot be factored out of the sum
        return "xw"

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        self._check_graph_input(x, edge_index)
        n = x.size(0)
        mask = self._protect_mask(edge_index, n)
        keep = self._node_keep(mask)

        if self.normalize:  # PyG's caching, Tensor branch, verbatim
            cache = self._cached_edge_index
            if cache is None:
                edge_index, edge_weight = gcn_norm(
                    edge_index, edge_weight, n, self.improved, self.add_self_loops, self.flow, x.dtype
                )
                if self.cached:
                    self._cached_edge_index = (edge_index, edge_weight)
            else:
                edge_index, edge_weight = cache[0], cache[1]
        src, dst = self._endpoints(edge_index)
        ekeep = self._edge_keep(mask, dst)

        x = self._q("input", x, keep)
        xw = F.linear(x, self._qw("weight", self.lin.weight))
        mode = self.integer_aggregation_mode(edge_weight is not None)
        if mode == "xw":  # Σ_j ŵ_ij ĥ_j from the codes of h and ŵ
            q_h, s_h, z_h = self.quant["xw"].quant_int(xw)
            q_e = s_e = z_e = None
            if edge_weight is not None and edge_weight.numel():
                q_e, s_e, z_e = self.quant["edge"].quant_int(edge_weight)
            out = self._integer_gather(q_h, s_h, z_h, src, dst, n, xw, q_e, s_e, z_e)
        else:
            h = self._q("xw", xw, keep)
            if edge_weight is not None:
                edge_weight = self._q("edge", edge_weight, ekeep)
            msg = h.index_select(0, src)
            if edge_weight is not None:
                msg = edge_weight.view(-1, 1) * msg
            if mode == "message":
                out = self._integer_messages("message", msg, dst, n)
            else:
                msg = self._q("message", msg, ekeep)
                out = self.aggregate(msg, dst, dim_size=n)
        out = self._post_aggregate(self._q("aggr", out, keep), dst, n)
        if self.bias is not None:
            out = out + self.bias
        self._record_stats(n, edge_index.size(1), x.size(1), self.out_channels, message_channels=xw.size(1))
        return self._q("output", out, keep)
