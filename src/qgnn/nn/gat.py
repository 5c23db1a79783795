"""QuantGATConv: PyG's ``GATConv`` (Veličković et al., "Graph Attention Networks", ICLR 2018) with
quantizer slots.

With x̂ = Q_in(x), H heads of C channels, and a missing slot meaning identity::

    h      = Q_xw(x̂ · Q_w(W)ᵀ)                                   [N, H·C], viewed as [N, H, C]
    (â_src, â_dst) = Q_att(att_src, att_dst)
    e_ij   = LeakyReLU(h_j · â_src + h_i · â_dst)                  self-loops added as GATConv does
    α_ij   = dropout(Q_attention(softmax_j(e_ij)))                 the softmax itself stays float
    a_i    = Q_aggr(Σ_j Q_msg(α_ij · h_j))                         [N, H·C]
    y      = Q_out(concat_heads(a) or mean_heads(a) + b)

With ``edge_dim`` set, ``att_edge`` is quantized with the other attention vectors and ``lin_edge`` stays
float; with ``residual=True`` the residual projection ``res(x̂)`` stays float.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv
from torch_geometric.utils import add_self_loops, remove_self_loops, softmax

from qgnn.errors import ConfigError
from qgnn.quant import Quantizer

from .base import QuantModule
from .graph import read_graph, split_pair
from .registry import register_layer

__all__ = ["QuantGATConv"]


@register_layer("gat")
class QuantGATConv(QuantModule, GATConv):
    """GATConv with slots ``input``, ``weight`` (``lin``), ``att`` (attention vectors), ``xw``,
    ``attention`` (softmax output, rows = edges), ``message``, ``aggr``, ``output``.

    Forward: ``forward(x, edge_index, edge_attr=None, size=None, return_attention_weights=None)`` as
    GATConv, with a single ``in_channels`` (a shared ``lin``); ``x`` or a bipartite pair ``(x_src, x_dst)``,
    ``edge_index`` a ``[2, E]`` tensor / ``EdgeIndex`` or a sparse adjacency (read as an edge list: attention
    needs per-edge scores, as GATConv's own sparse path). The ``att`` slot
    quantizes ``cat([att_src, att_dst(, att_edge)])`` in one call, so a per-channel quantizer on axis 0
    gives each vector its own scale and a frozen range covers all of them.
    """

    SLOTS = ("input", "weight", "att", "xw", "attention", "message", "aggr", "output")
    FLOAT_CLASS = GATConv

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    @classmethod
    def _check_float(cls, module):
        super()._check_float(module)
        if module.lin is None:
            raise ConfigError(
                "QuantGATConv supports GATConv with one in_channels (a shared lin); this one has separate "
                "source / target projections (in_channels given as a pair). Keep it float."
            )

    def _attention_vectors(self) -> tuple[Tensor, Tensor, Tensor | None]:
        vecs = [self.att_src, self.att_dst] + ([self.att_edge] if self.att_edge is not None else [])
        if "att" not in self.quant:
            return vecs[0], vecs[1], (vecs[2] if len(vecs) > 2 else None)
        q = self._qw("att", torch.cat(vecs, dim=0))
        return q[0:1], q[1:2], (q[2:3] if len(vecs) > 2 else None)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        size: tuple[int, int] | None = None,
        return_attention_weights: bool | None = None,
    ):
        name = type(self).__name__
        x_src, x_dst, pair = split_pair(x, name)
        if self.lin is None:  # a pair in_channels after construction by hand
            raise ConfigError(f"{name} needs a shared lin (a single in_channels)")
        g = read_graph(self, x_src, x_dst, edge_index, size, pair)
        if g.sparse and edge_attr is None and g.weight is not None and self.lin_edge is not None:
            edge_attr = g.weight  # a sparse adjacency's values are GATConv's edge attributes
        n, heads, ch = g.n_dst, self.heads, self.out_channels
        mask = self._protect_mask(g, pair)
        keep = self._node_keep(mask)

        x_src, x_dst, _ = self._quant_nodes("input", x_src, x_dst, keep)
        x_r = x_src if not pair else x_dst
        res = self.res(x_r) if self.res is not None and x_r is not None else None
        w = self._qw("weight", self.lin.weight)
        both = x_src if x_dst is None else torch.cat([x_src, x_dst])
        ids = self.__dict__.get("_qgnn_node_ids")
        cat_ids = False if x_dst is None else (None if ids is None else torch.cat([ids, ids[: x_dst.size(0)]]))
        h_all = self._q("xw", F.linear(both, w), keep, ids=cat_ids).view(-1, heads, ch)
        h = h_all[: x_src.size(0)]
        h_dst = h if x_dst is None else h_all[x_src.size(0):]
        att_src, att_dst, att_edge = self._attention_vectors()
        alpha_src = (h * att_src).sum(dim=-1)
        alpha_dst = (h_dst * att_dst).sum(-1) if (x_dst is not None or not pair) else None

        edge_index = torch.stack([g.src, g.dst])  # messages src -> dst whatever the flow (as read)
        if self.add_self_loops:  # GATConv's Tensor branch: loops for nodes that are sources and targets
            loops = min(x_src.size(0), n)
            edge_index, edge_attr = remove_self_loops(edge_index, edge_attr)
            edge_index, edge_attr = add_self_loops(edge_index, edge_attr, fill_value=self.fill_value,
                                                   num_nodes=loops)
        src, dst = edge_index[0], edge_index[1]
        ekeep = self._edge_keep(mask, dst)

        # GATConv.edge_update, with the attention slot between the softmax and the dropout
        alpha = alpha_src.index_select(0, src)
        if alpha_dst is not None:
            alpha = alpha + alpha_dst.index_select(0, dst)
        if dst.numel() > 0:
            if edge_attr is not None and self.lin_edge is not None:
                if edge_attr.dim() == 1:
                    edge_attr = edge_attr.view(-1, 1)
                edge_attr = self.lin_edge(edge_attr).view(-1, heads, ch)
                alpha = alpha + (edge_attr * att_edge).sum(dim=-1)
            alpha = F.leaky_relu(alpha, self.negative_slope)
            alpha = softmax(alpha, dst, None, n)
            alpha = self._q("attention", alpha, ekeep)
            alpha = F.dropout(alpha, p=self.dropout, training=self.training)

        msg = self._q("message", alpha.unsqueeze(-1) * h.index_select(0, src), ekeep)
        out = self.aggregate(msg, dst, dim_size=n)
        out = self._q_target("aggr", out.view(-1, heads * ch), keep)
        out = self._post_aggregate(out.view(-1, heads, ch), dst, n).reshape(-1, heads * ch)  # GATConv's [N, H, C]
        out = out if self.concat else out.view(-1, heads, ch).mean(dim=1)
        if res is not None:
            out = out + res
        if self.bias is not None:
            out = out + self.bias
        self._record_stats(n, edge_index.size(1), x_src.size(1), ch, heads=heads, message_channels=heads * ch)
        out = self._q_target("output", out, keep)
        if return_attention_weights:  # edge_index in the layer's flow, as GATConv returns it
            ei = edge_index if self.flow == "source_to_target" else edge_index.flip(0)
            return out, (ei, alpha)
        return out
