"""Graph-classification models: message passing, then a pooled readout per layer.

The readout follows GIN (Xu et al., ICLR 2019, eq. 4.2): the graph score is the
sum over layers k = 0..K of Linear_k(pool(h^(k))), so every depth contributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv, GINConv, global_add_pool, global_max_pool, global_mean_pool

from qgnn.models.node import mlp

POOLS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}


class _GraphModel(nn.Module):
    def __init__(self, convs, norms, in_dim, hidden, out_dim, dropout, pooling):
        super().__init__()
        if pooling not in POOLS:
            raise ValueError(f"pooling must be one of {sorted(POOLS)}, got {pooling!r}")
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.heads = nn.ModuleList([nn.Linear(in_dim, out_dim)] + [nn.Linear(hidden, out_dim) for _ in convs])
        self.dropout = dropout
        self.pooling = pooling

    def forward(self, x, edge_index, batch=None):
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        pool = POOLS[self.pooling]
        # size= keeps graphs with no nodes in the batch-size count consistent.
        size = int(batch.max()) + 1 if batch.numel() else 1
        out = F.dropout(self.heads[0](pool(x, batch, size)), self.dropout, self.training)
        h = x
        for conv, norm, head in zip(self.convs, self.norms, self.heads[1:], strict=True):
            h = F.relu(norm(conv(h, edge_index)))
            out = out + F.dropout(head(pool(h, batch, size)), self.dropout, self.training)
        return out


class GINGraph(_GraphModel):
    """GIN for graph classification: GINConv(MLP with BatchNorm) + BatchNorm + ReLU, sum pooling."""

    def __init__(self, in_dim, hidden, out_dim, num_layers=5, dropout=0.5, pooling="sum", train_eps=False):
        convs = [GINConv(mlp(in_dim if i == 0 else hidden, hidden, hidden, batch_norm=True), train_eps=train_eps)
                 for i in range(num_layers)]
        norms = [nn.BatchNorm1d(hidden) for _ in range(num_layers)]
        super().__init__(convs, norms, in_dim, hidden, out_dim, dropout, pooling)


class GCNGraph(_GraphModel):
    """GCN layers with BatchNorm and a pooled per-layer readout."""

    def __init__(self, in_dim, hidden, out_dim, num_layers=3, dropout=0.5, pooling="mean"):
        convs = [GCNConv(in_dim if i == 0 else hidden, hidden) for i in range(num_layers)]
        norms = [nn.BatchNorm1d(hidden) for _ in range(num_layers)]
        super().__init__(convs, norms, in_dim, hidden, out_dim, dropout, pooling)
