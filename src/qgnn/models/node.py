"""Node-classification models: a stack of PyG convolutions with ReLU and dropout.

Each model keeps its message-passing layers in ``self.convs`` (a ModuleList of
PyG layers) so that quantization handlers find and replace them by type.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, GraphConv, SAGEConv

from .dropout import sparse_input_dropout


@functools.cache
def _forward_takes_edge_weight(cls: type) -> bool:
    return "edge_weight" in inspect.signature(cls.forward).parameters


def takes_edge_weight(conv: nn.Module) -> bool:
    """Whether ``conv``'s forward has an ``edge_weight`` argument; a wrapper that forwards its arguments to a
    ``base_layer`` (qgnn.prompts) is asked about the layer it wraps."""
    while isinstance(getattr(conv, "base_layer", None), nn.Module):
        conv = conv.base_layer
    return _forward_takes_edge_weight(type(conv))


def mlp(in_dim: int, hidden: int, out_dim: int, batch_norm: bool = False) -> nn.Sequential:
    """The two-layer MLP inside a GIN layer (Xu et al., ICLR 2019)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(), nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers)


class _Stack(nn.Module):
    """dropout -> conv -> ReLU -> dropout, repeated; the last conv has no activation."""

    def __init__(self, convs: list[nn.Module], dropout: float, input_dropout: float | None = None):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.dropout = dropout
        self.input_dropout = dropout if input_dropout is None else input_dropout

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``edge_weight``: per-edge weights for the layers whose forward takes ``edge_weight`` (GCN; e.g. the
        whole graph's normalisation of a sampled batch, qgnn.train.minibatch); the others ignore it."""
        # bag-of-words features are mostly zeros: draw the input mask at the non-zeros only (same distribution)
        x = sparse_input_dropout(x, self.input_dropout, self.training)
        for i, conv in enumerate(self.convs):
            if edge_weight is not None and takes_edge_weight(conv):
                x = conv(x, edge_index, edge_weight=edge_weight)
            else:
                x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = self.activation(x)
                x = F.dropout(x, self.dropout, self.training)
        return x

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


def _dims(in_dim: int, hidden: int, out_dim: int, num_layers: int) -> list[tuple[int, int]]:
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    sizes = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


class GCN(_Stack):
    """GCN (Kipf & Welling, ICLR 2017): H' = D^-1/2 (A+I) D^-1/2 H W.

    ``cached=True`` stores the normalised adjacency after the first call, which is
    right for transductive node classification on one fixed graph.
    """

    def __init__(self, in_dim, hidden, out_dim, num_layers=2, dropout=0.5, cached=True, input_dropout=None):
        convs = [GCNConv(i, o, cached=cached) for i, o in _dims(in_dim, hidden, out_dim, num_layers)]
        super().__init__(convs, dropout, input_dropout)


class GAT(_Stack):
    """GAT (Veličković et al., ICLR 2018): multi-head attention, ELU between layers.

    Hidden layers concatenate ``heads`` heads of ``hidden`` channels; the output
    layer uses ``out_heads`` heads averaged, as in the paper's Cora setting.
    """

    def __init__(self, in_dim, hidden, out_dim, num_layers=2, dropout=0.6, heads=8, out_heads=1):
        convs: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            convs.append(GATConv(d, hidden, heads=heads, dropout=dropout))
            d = hidden * heads
        convs.append(GATConv(d, out_dim, heads=out_heads, concat=False, dropout=dropout))
        super().__init__(convs, dropout)

    def activation(self, x):
        return F.elu(x)


class GIN(_Stack):
    """GIN (Xu et al., ICLR 2019) for nodes: h' = MLP((1 + eps) h + sum_j h_j)."""

    def __init__(self, in_dim, hidden, out_dim, num_layers=2, dropout=0.5, train_eps=False):
        convs = [GINConv(mlp(i, hidden, o), train_eps=train_eps)
                 for i, o in _dims(in_dim, hidden, out_dim, num_layers)]
        super().__init__(convs, dropout)


class SAGE(_Stack):
    """GraphSAGE (Hamilton et al., NeurIPS 2017), mean aggregator: h' = W1 h + W2 mean_j h_j."""

    def __init__(self, in_dim, hidden, out_dim, num_layers=2, dropout=0.5, aggr="mean"):
        convs = [SAGEConv(i, o, aggr=aggr) for i, o in _dims(in_dim, hidden, out_dim, num_layers)]
        super().__init__(convs, dropout)


class GraphConvNet(_Stack):
    """GraphConv (Morris et al., AAAI 2019): h' = W1 h + W2 sum_j h_j."""

    def __init__(self, in_dim, hidden, out_dim, num_layers=2, dropout=0.5, aggr="add"):
        convs = [GraphConv(i, o, aggr=aggr) for i, o in _dims(in_dim, hidden, out_dim, num_layers)]
        super().__init__(convs, dropout)
