"""QuantGINConv: PyG's ``GINConv`` (Xu et al., "How Powerful are Graph Neural Networks?", ICLR 2019) with
quantizer slots.

With x̂ = Q_in(x) and a missing slot meaning identity::

    a_i = Q_aggr((1 + eps) · x̂_i + Σ_j Q_msg(x̂_j))
    y   = Q_out(nn(a))

Integer aggregation (``integer_aggregation = True``, eval mode, sum or mean aggregation; see
:mod:`qgnn.nn.base`): with ``"message"`` quantized (per tensor / channel) the sum runs on the message codes;
otherwise, with ``"input"`` quantized (per tensor / channel), on the input codes,
Σ_j x̂_j = s_x Σ_j (q_x,j - z_x); the self term (1 + eps) · x̂_i stays float (x̂ = dequantize(codes), the
quantizer's own output). Any other case takes the fake-quant path.

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
    SUPPORTS_INTEGER_AGGREGATION = True

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    def _integer_node_source(self, edge_weighted: bool) -> str | None:
        return "input" if self._integer_ready("input") else None

    def forward(self, x: Tensor, edge_index: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        self._check_graph_input(x, edge_index, size)
        n = x.size(0)
        mask = self._protect_mask(edge_index, n)
        keep = self._node_keep(mask)
        src, dst = self._endpoints(edge_index)
        ekeep = self._edge_keep(mask, dst)

        x, out, _ = self._neighbour_sum(x, src, dst, n, keep, ekeep, self.integer_aggregation_mode())
        out = self._post_aggregate(out, dst, n)  # where GINConv's propagate fires them: Σ_j x_j
        out = out + (1 + self.eps) * x  # GINConv's expression and order, for bitwise parity
        out = self.nn(self._q("aggr", out, keep))
        self._record_stats(n, edge_index.size(1), x.size(1), out.size(-1))
        return self._q("output", out, keep)
