"""FP32 GNN models built from PyG layers, so that `qgnn.quantize_` can later swap their convs."""

from qgnn.models.graph import GCNGraph, GINGraph
from qgnn.models.node import GAT, GCN, GIN, SAGE
from qgnn.models.registry import build_model, default_hparams, model_names

__all__ = ["GCN", "GAT", "GIN", "SAGE", "GINGraph", "GCNGraph", "build_model", "default_hparams", "model_names"]
