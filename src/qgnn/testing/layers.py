"""The layer tables of the quantized-layer tests: every float PyG layer (and option) a quantized layer must
reproduce, and factories of quantized copies with quantizers on every slot.

For the tests of qgnn and of user layers: a new quantized layer class is checked by adding its float
counterpart to ``FLOAT_LAYERS`` (``QUANT_LAYER_FOR`` maps the float type to the quantized class).
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, GraphConv, SAGEConv

from qgnn.nn import QUANT_LAYER_FOR, WEIGHT_SLOTS
from qgnn.quant import LSQQuantizer, UniformQuantizer
from qgnn.testing.graphs import graph as _graph
from qgnn.testing.parity import permute_graph, sqnr

__all__ = ["IN", "OUT", "FLOAT_LAYERS", "MAIN", "GRAPH_MAIN", "graph", "gin_mlp", "make_float", "run", "slots_of",
           "uniform_quantizers", "lsq_quantizers", "quantized", "sqnr", "permute_graph", "effective_edges", "targets"]

IN, OUT = 8, 12


def graph(n: int = 30, e: int = 90, f: int = IN, seed: int = 0, isolated: int = 3, self_loops: bool = False):
    """Random features and a random directed graph whose last ``isolated`` nodes have no edge at all
    (:func:`qgnn.testing.graphs.graph` with the defaults of the layer tests)."""
    return _graph(n, e, f, seed, isolated=isolated, self_loops=self_loops)


def gin_mlp(i: int = IN, o: int = OUT) -> nn.Module:
    return nn.Sequential(nn.Linear(i, 16), nn.ReLU(), nn.Linear(16, o))


# name -> factory of a float layer; every PyG option the quantized layers must keep
FLOAT_LAYERS = {
    "gcn": lambda: GCNConv(IN, OUT),
    "gcn_improved_cached": lambda: GCNConv(IN, OUT, improved=True, cached=True),
    "gcn_no_norm_no_bias": lambda: GCNConv(IN, OUT, normalize=False, bias=False),
    "gcn_t2s": lambda: GCNConv(IN, OUT, flow="target_to_source"),
    "gin": lambda: GINConv(gin_mlp()),
    "gin_train_eps": lambda: GINConv(gin_mlp(), eps=0.3, train_eps=True),
    "gin_mean": lambda: GINConv(gin_mlp(), aggr="mean"),
    "sage_mean": lambda: SAGEConv(IN, OUT),
    "sage_sum": lambda: SAGEConv(IN, OUT, aggr="sum"),
    "sage_max": lambda: SAGEConv(IN, OUT, aggr="max"),
    "sage_norm_noroot": lambda: SAGEConv(IN, OUT, normalize=True, root_weight=False),
    "sage_project_multi": lambda: SAGEConv(IN, OUT, aggr=["mean", "max"], project=True),
    "gat_h1": lambda: GATConv(IN, OUT, heads=1, dropout=0.5),
    "gat_h4_concat": lambda: GATConv(IN, 4, heads=4, dropout=0.5),
    "gat_h4_mean": lambda: GATConv(IN, 4, heads=4, concat=False, dropout=0.5),
    "gat_edge_res_noloops": lambda: GATConv(IN, 4, heads=2, edge_dim=3, residual=True, add_self_loops=False),
    "graphconv": lambda: GraphConv(IN, OUT),
    "graphconv_mean": lambda: GraphConv(IN, OUT, aggr="mean"),
    "linear": lambda: nn.Linear(IN, OUT),
}

# one representative per quantized class
MAIN = ["gcn", "gin_train_eps", "sage_mean", "gat_h4_concat", "graphconv", "linear"]
GRAPH_MAIN = MAIN[:-1]


def make_float(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return FLOAT_LAYERS[name]()


def run(layer: nn.Module, x: torch.Tensor, ei: torch.Tensor, seed: int = 1, **kw):
    """Forward with a fixed RNG state (GAT's attention dropout), the arguments each layer takes."""
    torch.manual_seed(seed)
    if isinstance(layer, nn.Linear):
        return layer(x)
    if isinstance(layer, GATConv) and layer.edge_dim is not None and "edge_attr" not in kw:
        g = torch.Generator().manual_seed(7)
        kw["edge_attr"] = torch.randn(ei.size(1), layer.edge_dim, generator=g)
    return layer(x, ei, **kw)


def slots_of(float_layer: nn.Module) -> tuple[str, ...]:
    cls = QUANT_LAYER_FOR[type(float_layer)]
    probe = cls.from_float(float_layer, {})
    return probe.active_slots()


def uniform_quantizers(
    float_layer: nn.Module, bits: int, node_slots_per_node: int | None = None, act_granularity: str = "tensor"
) -> dict:
    """UniformQuantizer on every slot: weights symmetric per output channel (attention vectors per
    tensor), activations affine per tensor (or ``act_granularity="channel"``: per feature column; edge
    weights, a 1-d tensor, stay per tensor), node-row slots per node when ``node_slots_per_node`` = N."""
    from qgnn.nn import NODE_SLOTS

    qs = {}
    for s in slots_of(float_layer):
        if s in WEIGHT_SLOTS:
            gran = "tensor" if s == "att" else "channel"
            qs[s] = UniformQuantizer(bits, symmetric=True, granularity=gran, ch_axis=0)
        elif node_slots_per_node and s in NODE_SLOTS:
            qs[s] = UniformQuantizer(bits, granularity="node", num_nodes=node_slots_per_node)
        else:
            qs[s] = UniformQuantizer(bits, granularity="tensor" if s == "edge" else act_granularity)
    return qs


def lsq_quantizers(float_layer: nn.Module, bits: int) -> dict:
    """LSQ on every slot; consecutive slots alternate ``bits`` and ``bits - 1``, so that no slot
    re-quantizes values already on its own grid (whose step gradient would be exactly 0)."""
    qs = {}
    for i, s in enumerate(slots_of(float_layer)):
        b = bits - i % 2
        if s in WEIGHT_SLOTS:
            qs[s] = LSQQuantizer(b, granularity="tensor" if s == "att" else "channel", ch_axis=0)
        else:
            qs[s] = LSQQuantizer(b, symmetric=False)
    return qs


def quantized(name: str, bits: int | None = None, seed: int = 0, **kw):
    """(float layer, quantized copy sharing its parameters) with UniformQuantizers at ``bits`` on every
    slot (None: no quantizer at all)."""
    f = make_float(name, seed)
    qs = {} if bits is None else uniform_quantizers(f, bits, **kw)
    return f, QUANT_LAYER_FOR[type(f)].from_float(f, qs)


def effective_edges(layer: nn.Module, ei: torch.Tensor, n: int) -> torch.Tensor:
    """The edges a layer aggregates over, self-loops included, in the layer's own order."""
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import add_self_loops, remove_self_loops

    if isinstance(layer, GCNConv) and layer.normalize:
        return gcn_norm(ei, None, n, layer.improved, layer.add_self_loops, layer.flow)[0]
    if isinstance(layer, GATConv) and layer.add_self_loops:
        return add_self_loops(remove_self_loops(ei)[0], num_nodes=n)[0]
    return ei


def targets(layer: nn.Module, ei: torch.Tensor) -> torch.Tensor:
    return ei[1] if layer.flow == "source_to_target" else ei[0]
