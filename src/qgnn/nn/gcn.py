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

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from qgnn.errors import ConfigError
from qgnn.quant import Quantizer

from .base import QuantModule
from .graph import GraphView, is_sparse_adj, read_graph, split_pair
from .registry import register_layer

__all__ = ["QuantGCNConv"]


@register_layer("gcn")
class QuantGCNConv(QuantModule, GCNConv):
    """GCNConv with slots ``input``, ``weight``, ``xw``, ``edge``, ``message``, ``aggr``, ``output``.

    Forward: ``forward(x, edge_index, edge_weight=None)`` as GCNConv: ``edge_index`` a ``[2, E]`` tensor /
    ``EdgeIndex``, or a sparse adjacency ``adj_t`` (torch COO / CSR / CSC, ``SparseTensor``), aggregated by
    a sparse product without ``[E, C]`` messages (:mod:`qgnn.nn.graph`). ``edge`` quantizes the edge
    weights that reach the messages: the normalised ones when ``normalize=True``, the given ``edge_weight``
    (or a sparse adjacency's values) otherwise (no weights, no-op).
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

    def forward(self, x: Tensor, edge_index, edge_weight: Tensor | None = None) -> Tensor:
        name = type(self).__name__
        if split_pair(x, name)[2]:
            raise ConfigError(f"{name} takes one node-feature matrix, as GCNConv (no bipartite form)")
        n = x.size(0)
        # a trimmed block (qgnn.models.node._Stack.forward): adj_t [N_dst, N], the targets the first N_dst rows
        # of x; GCN's own normalisation needs a square adjacency, so only with normalize=False (given weights)
        block = not self.normalize and is_sparse_adj(edge_index) and int(edge_index.size(0)) < n
        g = read_graph(self, x, None, edge_index, size=(n, int(edge_index.size(0))) if block else None)
        if g.sparse:
            edge_weight = g.weight  # PyG: a sparse adjacency's values are the weights; edge_weight is unused
        # on the graph as given, before self loops (as the float layer sees it)
        mask = self._protect_mask(g, prefix=block)
        keep = self._node_keep(mask)
        if self.normalize:
            g, edge_weight = self._normalised(g, edge_weight, n, x.dtype)
        ekeep = self._edge_keep(mask, g.dst)

        mode = self.integer_aggregation_mode(edge_weight is not None)
        h = self.transform(x, keep, mode)
        out = self.propagate_rows(h, g, edge_weight, keep, ekeep, mode)
        self._record_stats(n, g.num_edges, x.size(1), self.out_channels, message_channels=self.lin.out_channels)
        return out

    def transform(self, x: Tensor, keep: Tensor | None = None, mode: str | None = None):
        """The per-node half of the layer, row by row: ĥ = Q_xw(Q_in(x) · Q_w(W)ᵀ); on the integer path
        (``mode == "xw"``) the codes of h instead, ``(q, scale, zero_point, like)``. Rows are independent,
        so layer-wise inference (:mod:`qgnn.models.layerwise`) runs it in chunks of nodes."""
        x = self._q("input", x, keep)
        xw = F.linear(x, self._qw("weight", self.lin.weight))
        if mode == "xw":
            return (*self.quant["xw"].quant_int(xw), xw.new_empty(0))
        return self._q("xw", xw, keep)

    def propagate_rows(self, h, g: GraphView, edge_weight: Tensor | None, keep: Tensor | None = None,
                       ekeep: Tensor | None = None, mode: str | None = None) -> Tensor:
        """The per-target half: ``Q_out(Q_aggr(Σ_j Q_msg(Q_edge(w_ji) ĥ_j)) + b)`` for the targets of ``g``
        (all nodes, or one chunk of them whose sources index the rows of ``h``), from :meth:`transform`'s
        output."""
        n = g.n_dst
        if mode == "xw":  # Σ_j ŵ_ij ĥ_j from the codes of h and ŵ
            q_h, s_h, z_h, like = h
            q_e = s_e = z_e = None
            if edge_weight is not None and edge_weight.numel():
                q_e, s_e, z_e = self.quant["edge"].quant_int(edge_weight)
            out = self._integer_gather(q_h, s_h, z_h, g.src, g.dst, n, like, q_e, s_e, z_e)
        else:
            if edge_weight is not None:
                edge_weight = self._q("edge", edge_weight, ekeep)
            if mode == "message":
                msg = h.index_select(0, g.src)
                if edge_weight is not None:
                    msg = edge_weight.view(-1, 1) * msg
                out = self._integer_messages("message", msg, g.dst, n)
            else:
                out = self._aggregate_rows(h, g, ekeep, edge_weight)
        out = self._post_aggregate(self._q_target("aggr", out, keep), g.dst, n)
        if self.bias is not None:
            out = out + self.bias
        return self._q_target("output", out, keep)

    def _normalised(self, g: GraphView, edge_weight, n: int, dtype):
        """(graph, weights) after GCN's D^-1/2 (A + I) D^-1/2, cached as PyG caches it (``cached=True``).

        ``edge_index`` input: PyG's ``gcn_norm`` Tensor branch verbatim (self loops added where missing).
        Sparse input: PyG's sparse branch (a self loop of weight 1, or 2 when ``improved``, added to every
        node), on the edge list, kept in target order for the sparse product."""
        if not g.sparse:
            cache = self._cached_edge_index
            if cache is None:
                plain = torch.stack([g.src, g.dst] if self.flow == "source_to_target" else [g.dst, g.src])
                edge_index, edge_weight = gcn_norm(plain, edge_weight, n, self.improved, self.add_self_loops,
                                                   self.flow, dtype)
                if self.cached:
                    self._cached_edge_index = (edge_index, edge_weight)
            else:
                edge_index, edge_weight = cache[0], cache[1]
            return read_graph(self, _Rows(n), None, edge_index), edge_weight
        cached = self.__dict__.get("_cached_graph")
        if cached is not None:
            return cached, cached.weight
        if g.n_src != g.n_dst:
            raise ConfigError(f"{type(self).__name__}: gcn normalisation needs a square adjacency, got "
                              f"{[g.n_dst, g.n_src]}")
        w = g.weight if g.weight is not None else torch.ones(g.num_edges, dtype=dtype, device=g.src.device)
        src, dst = g.src, g.dst
        if self.add_self_loops:
            loop = torch.arange(n, device=src.device)
            src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
            w = torch.cat([w, w.new_full((n,), 2.0 if self.improved else 1.0)])
        deg = torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, dst, w)
        dinv = deg.pow(-0.5).masked_fill_(deg == 0, 0.0)
        w = dinv.index_select(0, src) * w * dinv.index_select(0, dst)
        g = g.with_edges(src, dst, w)
        if self.cached:
            self.__dict__["_cached_graph"] = g
        return g, g.weight


class _Rows:
    """Stands in for a feature matrix when only its row count matters (read_graph of a normalised graph)."""

    def __init__(self, n: int):
        self.n = n

    def size(self, dim: int) -> int:
        return self.n
