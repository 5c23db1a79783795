"""Graph-classification models: message passing, then a pooled readout per layer.

The readout follows GIN (Xu et al., ICLR 2019, eq. 4.2): the graph score is the
sum over layers k = 0..K of Linear_k(pool(h^(k))), so every depth contributes.

``readout_norm=True`` puts a BatchNorm on each pooled vector before its linear head:
Linear_k(BN_k(pool(h^(k)))). With sum pooling the pooled vector grows with the graph's
size (REDDIT-BINARY graphs have up to 3,782 nodes and constant input features, so
pool(h^(0)) is the node count), which gives logits in the hundreds and an unstable
loss; normalising per feature over the batch keeps the size information (relative to
the batch) while bounding the scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv, GINConv, global_add_pool, global_max_pool, global_mean_pool

from qgnn.models.node import mlp

POOLS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}


class PooledBatchNorm(nn.BatchNorm1d):
    """BatchNorm over graphs in a batch; a batch of one graph uses the running statistics.

    A last mini-batch holding a single graph has no variance to normalise by, and
    plain BatchNorm1d refuses it in training mode.
    """

    def forward(self, x):
        if self.training and x.size(0) < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class _GraphModel(nn.Module):
    def __init__(self, convs, norms, in_dim, hidden, out_dim, dropout, pooling, readout_norm=False):
        super().__init__()
        if pooling not in POOLS:
            raise ValueError(f"pooling must be one of {sorted(POOLS)}, got {pooling!r}")
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.heads = nn.ModuleList([nn.Linear(in_dim, out_dim)] + [nn.Linear(hidden, out_dim) for _ in convs])
        widths = [in_dim] + [hidden] * len(convs)
        self.readout_norms = (nn.ModuleList([PooledBatchNorm(w) for w in widths]) if readout_norm
                              else [nn.Identity()] * len(widths))
        self.dropout = dropout
        self.pooling = pooling

    def forward(self, x, edge_index, batch=None):
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        # size= keeps graphs with no nodes in the batch-size count consistent.
        size = int(batch.max()) + 1 if batch.numel() else 1
        out = self._readout(0, x, batch, size)
        h = x
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True), start=1):
            h = F.relu(norm(conv(h, edge_index)))
            out = out + self._readout(k, h, batch, size)
        return out

    def _readout(self, k, h, batch, size):
        pooled = self.readout_norms[k](POOLS[self.pooling](h, batch, size))
        return F.dropout(self.heads[k](pooled), self.dropout, self.training)


class GINGraph(_GraphModel):
    """GIN for graph classification: GINConv(MLP with BatchNorm) + BatchNorm + ReLU, sum pooling."""

    def __init__(self, in_dim, hidden, out_dim, num_layers=5, dropout=0.5, pooling="sum", train_eps=False,
                 readout_norm=False):
        convs = [GINConv(mlp(in_dim if i == 0 else hidden, hidden, hidden, batch_norm=True), train_eps=train_eps)
                 for i in range(num_layers)]
        norms = [nn.BatchNorm1d(hidden) for _ in range(num_layers)]
        super().__init__(convs, norms, in_dim, hidden, out_dim, dropout, pooling, readout_norm)


class GCNGraph(_GraphModel):
    """GCN layers with BatchNorm and a pooled per-layer readout."""

    def __init__(self, in_dim, hidden, out_dim, num_layers=3, dropout=0.5, pooling="mean", readout_norm=False):
        convs = [GCNConv(in_dim if i == 0 else hidden, hidden) for i in range(num_layers)]
        norms = [nn.BatchNorm1d(hidden) for _ in range(num_layers)]
        super().__init__(convs, norms, in_dim, hidden, out_dim, dropout, pooling, readout_norm)
