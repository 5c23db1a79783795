"""Datasets: Planetoid node classification, TU graph classification, recommendation
interactions, small synthetic graphs for tests, and large stochastic-block-model graphs
(``sbm-100k``, ``sbm-1m``).

``load_dataset(name, root=None, **options)`` loads any of them by name. Raw files
come from ``root``, else ``$QGNN_DATA``, else the user cache; processed files go
to ``cache_dir()`` (``$QGNN_CACHE``). With ``QGNN_OFFLINE=1`` nothing is downloaded
and missing files raise :class:`qgnn.errors.DataNotFoundError` naming them.
"""

from qgnn._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("cache_dir", "resolve_root"), "qgnn.data.paths"),
    **dict.fromkeys(("NodeDataset", "load_planetoid"), "qgnn.data.planetoid"),
    **dict.fromkeys(("RecDataset", "load_recsys"), "qgnn.data.recsys"),
    **dict.fromkeys(("canonical_name", "dataset_names", "dataset_task", "load_dataset"), "qgnn.data.registry"),
    **dict.fromkeys(("load_sbm", "sbm_dataset", "sbm_graph"), "qgnn.data.sbm"),
    **dict.fromkeys(("Split", "cv_splits", "stratified_kfold"), "qgnn.data.splits"),
    **dict.fromkeys(("empty_graph", "random_graph", "random_graph_dataset", "random_node_dataset",
                     "random_rec_dataset"), "qgnn.data.synthetic"),
    **dict.fromkeys(("GraphDataset", "GraphList", "load_tu"), "qgnn.data.tu"),
}

__all__ = [
    "GraphDataset", "GraphList", "NodeDataset", "RecDataset", "Split",
    "cache_dir", "canonical_name", "cv_splits", "dataset_names", "dataset_task", "empty_graph",
    "load_dataset", "load_planetoid", "load_recsys", "load_sbm", "load_tu", "random_graph",
    "random_graph_dataset", "random_node_dataset", "random_rec_dataset", "resolve_root", "sbm_dataset", "sbm_graph",
    "stratified_kfold",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
