"""Model names, their default hyper-parameters per task, and `build_model`.

Defaults follow each model's paper for the benchmark it was published on:
GCN (Kipf & Welling 2017), GAT (Veličković et al. 2018), GIN (Xu et al. 2019),
GraphSAGE (Hamilton et al. 2017). Training defaults (lr, weight decay, epochs)
live beside them because they belong to the same published recipe.
"""

from __future__ import annotations

from torch import nn

from qgnn.errors import lookup
from qgnn.models.graph import GCNGraph, GINGraph
from qgnn.models.lightgcn import LightGCN
from qgnn.models.node import GAT, GCN, GIN, SAGE, GraphConvNet

# (task, model) -> (class, model kwargs, training kwargs)
_TABLE: dict[str, dict[str, tuple[type, dict, dict]]] = {
    "node": {
        "gcn": (GCN, dict(hidden=16, num_layers=2, dropout=0.5),
                dict(lr=0.01, weight_decay=5e-4, epochs=200, patience=100)),
        "gat": (GAT, dict(hidden=8, heads=8, num_layers=2, dropout=0.6),
                dict(lr=0.005, weight_decay=5e-4, epochs=300, patience=100)),
        "gin": (GIN, dict(hidden=64, num_layers=2, dropout=0.5),
                dict(lr=0.01, weight_decay=5e-4, epochs=200, patience=100)),
        "sage": (SAGE, dict(hidden=64, num_layers=2, dropout=0.5),
                 dict(lr=0.01, weight_decay=5e-4, epochs=200, patience=100)),
        "graphconv": (GraphConvNet, dict(hidden=64, num_layers=2, dropout=0.5),
                      dict(lr=0.01, weight_decay=5e-4, epochs=200, patience=100)),
    },
    "graph": {
        "gin": (GINGraph, dict(hidden=64, num_layers=5, dropout=0.5, pooling="sum"),
                dict(lr=0.01, weight_decay=0.0, epochs=350, patience=350, batch_size=32,
                     lr_step=50, lr_gamma=0.5)),
        "gcn": (GCNGraph, dict(hidden=64, num_layers=3, dropout=0.5, pooling="mean"),
                dict(lr=0.01, weight_decay=0.0, epochs=350, patience=350, batch_size=32,
                     lr_step=50, lr_gamma=0.5)),
    },
    # LightGCN-PyTorch's gowalla recipe (He et al. 2020); weight_decay is LightGCN's L2 on the batch's ego
    # embeddings (qgnn.train.rec), not Adam's decay.
    "rec": {
        "lightgcn": (LightGCN, dict(hidden=64, num_layers=3, dropout=0.0),
                     dict(lr=1e-3, weight_decay=1e-4, epochs=1000, patience=50, batch_size=2048)),
    },
}


def model_names(task: str | None = None) -> list[str]:
    """Valid model names for a task ('node' or 'graph'), or for any task."""
    if task is None:
        return sorted({m for t in _TABLE.values() for m in t})
    return sorted(lookup("task", task, _TABLE))


def _entry(name: str, task: str):
    return lookup("model", name, lookup("task", task, _TABLE))


def default_hparams(name: str, task: str) -> tuple[dict, dict]:
    """(model kwargs, training kwargs) of the published recipe for `name` on `task`."""
    _, model_kw, train_kw = _entry(name, task)
    return dict(model_kw), dict(train_kw)


def build_model(name: str, task: str, in_dim: int, out_dim: int, **overrides) -> nn.Module:
    """Build model `name` for `task` with the default recipe, any kwarg overridden."""
    cls, model_kw, _ = _entry(name, task)
    kw = {**model_kw, **{k: v for k, v in overrides.items() if v is not None}}
    return cls(in_dim, out_dim=out_dim, **kw)
