"""Quantized PyG layers: each ``Quant<PyGName>`` subclasses its float layer and adds quantizer slots.

* :class:`QuantLinear` (``torch.nn.Linear``), :class:`QuantGCNConv` (Kipf & Welling 2017),
  :class:`QuantGINConv` (Xu et al. 2019), :class:`QuantSAGEConv` (Hamilton et al. 2017),
  :class:`QuantGATConv` (Veličković et al. 2018), :class:`QuantGraphConv` (Morris et al. 2019).
* :class:`QuantModule`: the shared mixin (``SLOTS``, ``quant``, ``set_quantizer``, ``slot_bits``,
  ``quantizers``, ``from_float``, ``to_float``, Degree-Quant's ``node_protect`` mask, ``_last_stats``).
* :func:`set_integer_aggregation`: run the GCN / GIN / SAGE neighbourhood sums on integer codes in eval
  mode (MixQ-GNN Theorem 1; ``docs/integer.md``).
* ``QUANT_LAYER_FOR``: float layer type -> quantized type, what ``qgnn.quantize_`` converts; built from
  :mod:`qgnn.nn.registry`, where each layer kind registers itself and its facts.

With no quantizer set a layer computes exactly what its float layer computes.
"""

from torch import nn

from .base import (
    ALL_SLOTS,
    EDGE_SLOTS,
    NODE_SLOTS,
    WEIGHT_SLOTS,
    NodeProtect,
    QuantModule,
    set_integer_aggregation,
)
from .gat import QuantGATConv
from .gcn import QuantGCNConv
from .gin import QuantGINConv
from .graphconv import QuantGraphConv
from .linear import QuantLinear
from .registry import LAYERS  # noqa: E402  (every layer above registered itself)
from .sage import QuantSAGEConv

# float layer type -> quantized type, from the registry (qgnn.nn.registry)
QUANT_LAYER_FOR: dict[type[nn.Module], type[QuantModule]] = {f.float_cls: f.quant_cls for f in LAYERS.values()}

__all__ = [
    "ALL_SLOTS",
    "EDGE_SLOTS",
    "NODE_SLOTS",
    "QUANT_LAYER_FOR",
    "WEIGHT_SLOTS",
    "NodeProtect",
    "QuantGATConv",
    "QuantGCNConv",
    "QuantGINConv",
    "QuantGraphConv",
    "QuantLinear",
    "QuantModule",
    "QuantSAGEConv",
    "set_integer_aggregation",
]
