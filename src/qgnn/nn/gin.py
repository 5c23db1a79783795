"""QuantGINConv: PyG's ``GINConv`` (Xu et al., "How Powerful are Graph Neural Networks?", ICLR 2019) with
quantizer slots.

With x̂ = Q_in(x) and a missing slot meaning identity::

    a_i = Q_aggr((1 + eps) · x̂_i + Σ_j Q_msg(x̂_j))
    y   = Q_out(nn(a))

The inner MLP ``nn`` is left as it is: its ``nn.Linear`` layers are quantized separately (as
:class:`~qgnn.nn.QuantLinear`) by whoever converts the model, so its weights get their own slots.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor
from torch_geometric.nn import GINConv

from qgnn.quant import Quantizer

from .base import QuantModule

__all__ = ["QuantGINConv"]


class QuantGINConv(QuantModule, GINConv):
    """GINConv with slots ``input``, ``message``, ``aggr``, ``output``.

    Forward: ``forward(x, edge_index, size=None)`` with one node set (``size`` must be None or
    ``(N, N)``); ``eps`` / ``train_eps`` and the aggregation (``aggr``, default sum) are GINConv's.
    """

    SLOTS = ("input", "message", "aggr", "output")
    FLOAT_CLASS = GINConv

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    def forward(self, x: Tensor, edge_index: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        self._check_graph_input(x, edge_index, size)
        n = x.size(0)
        mask = self._protect_mask(edge_index, n)
        keep = self._node_keep(mask)
        src, dst = self._endpoints(edge_index)
        ekeep = self._edge_keep(mask, dst)

        x = self._q("input", x, keep)
        msg = self._q("message", x.index_select(0, src), ekeep)
        out = self.aggregate(msg, dst, dim_size=n)
        out = out + (1 + self.eps) * x  # GINConv's expression and order, for bitwise parity
        out = self.nn(self._q("aggr", out, keep))
        self._last_stats = {
            "num_nodes": n,
            "num_edges": edge_index.size(1),
            "in_channels": x.size(1),
            "out_channels": out.size(-1),
            "heads": 1,
            "message_channels": x.size(1),
        }
        return self._q("output", out, keep)
