"""QuantLinear: a ``torch.nn.Linear`` with input, weight and output quantizer slots.

``y = Q_out(Q_in(x) · Q_w(W)ᵀ + b)``; the bias stays float (it is added in the accumulator's precision,
as in integer-only inference, Jacob et al., CVPR 2018).

Used for the MLP inside GIN layers and for readout heads. It has no protective mask: its rows are nodes
inside a GIN MLP but graphs in a readout head, and it gets no ``edge_index`` to build a mask from.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from qgnn.quant import Quantizer

from .base import QuantModule
from .registry import register_layer

__all__ = ["QuantLinear"]


@register_layer("linear")
class QuantLinear(QuantModule, nn.Linear):
    """``y = Q_out(Q_in(x) · Q_w(W)ᵀ + b)``. Slots: ``input`` (rows), ``weight``, ``output`` (rows).

    ``QuantLinear(in_features, out_features, bias=True, *, quantizers=None, **kw)`` or
    ``QuantLinear.from_float(linear, quantizers)``.
    """

    SLOTS = ("input", "weight", "output")
    FLOAT_CLASS = nn.Linear
    GRAPH_LAYER = False

    def __init__(self, *args, quantizers: Mapping[str, Quantizer] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(quantizers)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        self._record_stats(rows, 0, self.in_features, self.out_features, message_channels=0)
        return self._q("output", F.linear(self._q("input", x), self._qw("weight", self.weight), self.bias))
