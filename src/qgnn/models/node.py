"""Node-classification models: a stack of PyG convolutions with ReLU and dropout.

Each model keeps its message-passing layers in ``self.convs`` (a ModuleList of
PyG layers) so that quantization handlers find and replace them by type.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, GraphConv, SAGEConv

from qgnn.errors import ConfigError

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

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None,
                num_sampled_nodes_per_hop: Sequence[int] | None = None) -> torch.Tensor:
        """``edge_weight``: per-edge weights for the layers whose forward takes ``edge_weight`` (GCN; e.g. the
        whole graph's normalisation of a sampled batch, qgnn.train.minibatch); the others ignore it.

        ``num_sampled_nodes_per_hop``: a sampled batch whose rows are ordered by hop (seeds first, PyG's
        ``batch.num_sampled_nodes``, one entry per hop and one more than there are layers) and whose graph
        is a CSR ``adj_t``: each layer is computed only for the rows a later layer reads (PyG's
        ``trim_to_layer``, :meth:`_trimmed`), and the output holds the seeds' rows only."""
        # bag-of-words features are mostly zeros: draw the input mask at the non-zeros only (same distribution)
        x = sparse_input_dropout(x, self.input_dropout, self.training)
        if num_sampled_nodes_per_hop is not None:
            return self._trimmed(x, edge_index, [int(n) for n in num_sampled_nodes_per_hop])
        for i, conv in enumerate(self.convs):
            if edge_weight is not None and takes_edge_weight(conv):
                x = conv(x, edge_index, edge_weight=edge_weight)
            else:
                x = conv(x, edge_index)
            x = self._between(i, x)
        return x

    def _between(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i < len(self.convs) - 1:
            x = self.activation(x)
            x = F.dropout(x, self.dropout, self.training)
        return x

    def _trimmed(self, x: torch.Tensor, adj_t: torch.Tensor, hops: list[int]) -> torch.Tensor:
        """Layer ``l`` of ``L`` on a batch of hops 0..L: its targets are the nodes of hops 0..L-1-l, the only
        rows a later layer (or the loss, at the last) reads, and its sources those of hops 0..L-l. Sampling
        hop k draws the in-edges of hop k's nodes from nodes of hops <= k + 1, so with rows ordered by hop
        the layer's block is the first rows and columns of ``adj_t`` (:func:`qgnn.nn.graph.trim_csr`).

        Against the plain forward on the whole batch: the seeds' outputs are the same (the dropped rows feed
        nothing that reaches them), the arithmetic of the outer hops is saved, and the quantizers' ranges and
        BatchNorm's statistics see only rows that a loss reads. Rows of the last hop have no sampled in-edges:
        in the plain forward they are three quarters of a first layer's outputs on sbm-100k at fanout
        [10, 5] (docs/distributed.md). Targets are the sources' first rows (PyG's block convention):
        GCN layers take ``(x, adj_t)`` with ``adj_t`` of shape ``[N_dst, N_src]``, the others
        ``((x, x[:N_dst]), adj_t)``; per-node state reads the rows' global ids from the
        :func:`qgnn.nn.context.node_ids` context, cut to the layer's sources."""
        from qgnn.nn.context import current_node_ids, node_ids
        from qgnn.nn.graph import trim_csr

        num_layers = len(self.convs)
        if len(hops) != num_layers + 1 or any(n < 0 for n in hops) or sum(hops) != x.size(0):
            raise ConfigError(f"a trimmed forward needs the rows of hops 0..{num_layers} "
                              f"({num_layers + 1} counts summing to the {x.size(0)} rows), got {hops}")
        if not (isinstance(adj_t, torch.Tensor) and adj_t.layout == torch.sparse_csr):
            raise ConfigError("a trimmed forward takes the batch's graph as a torch CSR adj_t")
        odd = [type(c).__name__ for c in self.convs if not isinstance(c, (GCNConv, GINConv, SAGEConv))]
        if odd:
            raise ConfigError(f"a trimmed forward runs GCN, GIN and SAGE layers (bipartite blocks); got {odd[0]}")
        ids = current_node_ids(self)
        for i, conv in enumerate(self.convs):
            n_src, n_dst = sum(hops[: num_layers + 1 - i]), sum(hops[: num_layers - i])
            block = trim_csr(adj_t, n_dst, n_src)
            inp = x if takes_edge_weight(conv) else (x, x[:n_dst])
            with node_ids(conv, None if ids is None else ids[:n_src]):
                x = self._between(i, conv(inp, block))
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
