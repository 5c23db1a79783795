"""Datasets: Planetoid node classification, TU graph classification, recommendation
interactions, and small synthetic graphs for tests.

``load_dataset(name, root=None, **options)`` loads any of them by name. Raw files
come from ``root``, else ``$QGNN_DATA``, else the user cache; processed files go
to ``cache_dir()`` (``$QGNN_CACHE``). With ``QGNN_OFFLINE=1`` nothing is downloaded
and missing files raise :class:`qgnn.errors.DataNotFoundError` naming them.
"""

from qgnn.data.paths import cache_dir, resolve_root
from qgnn.data.planetoid import NodeDataset, load_planetoid
from qgnn.data.recsys import RecDataset, load_recsys
from qgnn.data.registry import canonical_name, dataset_names, dataset_task, load_dataset
from qgnn.data.splits import Split, cv_splits, stratified_kfold
from qgnn.data.synthetic import (
    empty_graph,
    random_graph,
    random_graph_dataset,
    random_node_dataset,
    random_rec_dataset,
)
from qgnn.data.tu import GraphDataset, GraphList, load_tu

__all__ = [
    "GraphDataset", "GraphList", "NodeDataset", "RecDataset", "Split",
    "cache_dir", "canonical_name", "cv_splits", "dataset_names", "dataset_task", "empty_graph",
    "load_dataset", "load_planetoid", "load_recsys", "load_tu", "random_graph", "random_graph_dataset",
    "random_node_dataset", "random_rec_dataset", "resolve_root", "stratified_kfold",
]
