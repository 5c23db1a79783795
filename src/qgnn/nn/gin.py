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
from .context import node_ids
from .registry import register_layer

__all__ = ["QuantGINConv"]


@register_layer("gin")
class QuantGINConv(QuantModule, GINConv):
    """GINConv with slots ``input``, ``message``, ``aggr``, ``output``.

    Forward: ``forward(x, edge_index, size=None)`` as GINConv: ``x`` or a bipartite pair
    ``(x_src, x_dst)``; ``edge_index`` a ``[2, E]`` tensor / ``EdgeIndex`` or a sparse adjacency ``adj_t``
    (:mod:`qgnn.nn.graph`). ``eps`` / ``train_eps`` and the aggregation (``aggr``, default sum) are GINConv's.
    """

    SLOTS = ("input", "message", "aggr", "output")
    FLOAT_CLASS = GINConv
    SUPPORTS_INTEGER_AGGREGATION = True

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    def _integer_node_source(self, edge_weighted: bool) -> str | None:
        return "input" if self._integer_ready("input") else None

    def forward(self, x, edge_index, size: tuple[int, int] | None = None) -> Tensor:
        x_src, x_dst, pair, g, keep, ekeep = self._read_inputs(x, edge_index, size)
        n = g.n_dst

        mode = self.integer_aggregation_mode()
        if g.weight is not None and mode == "input":
            mode = None  # weighted sums of input codes: the fake-quant path
        x_src, x_dst, codes = self._quant_nodes("input", x_src, x_dst, keep, integer=mode == "input")
        if g.weight is not None:
            out = self._aggregate_rows(x_src, g, ekeep, g.weight)
        else:
            out, _ = self._neighbour_sum(x_src, codes, g, ekeep, mode)
        out = self._post_aggregate(out, g.dst, n)  # where GINConv's propagate fires them: Σ_j x_j
        x_r = x_src if not pair else x_dst
        if x_r is not None:
            out = out + (1 + self.eps) * x_r  # GINConv's expression and order, for bitwise parity
        out = self._q_target("aggr", out, keep)
        ids = self.__dict__.get("_qgnn_node_ids")
        if pair and ids is not None:  # the MLP's rows are the targets: the first N_dst ids of a block
            with node_ids(self.nn, ids[:n]):
                out = self.nn(out)
        else:
            out = self.nn(out)
        self._record_stats(n, g.num_edges, x_src.size(1), out.size(-1))
        return self._q_target("output", out, keep)
