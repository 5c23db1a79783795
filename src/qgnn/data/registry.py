"""Dataset names -> (task, loader); :func:`load_dataset` is the one entry point."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from functools import partial

from qgnn.data import molecules, ogbn, planetoid, pyg_large, recsys, sbm, synthetic, tu
from qgnn.errors import ConfigError, QgnnError, lookup


def _synthetic(fn: Callable) -> Callable:
    def load(root=None, **kwargs):
        del root  # generated, not read
        return fn(**kwargs)
    load.__signature__ = inspect.signature(fn)
    return load


# canonical name -> (task, loader taking root=... and keyword options)
DATASETS: dict[str, tuple[str, Callable]] = {
    **{n: ("node", partial(planetoid.load_planetoid, n)) for n in planetoid.NAMES},
    **{n: ("graph", partial(tu.load_tu, n)) for n in tu.NAMES},
    # graph regression (one float per molecule): task "graph", the dataset's `regression` flag picks the task
    **{n: ("graph", partial(molecules.load_molecules, n)) for n in molecules.NAMES},
    **{n: ("rec", partial(recsys.load_recsys, n)) for n in recsys.NAMES},
    **{n: ("node", partial(sbm.load_sbm, n)) for n in sbm.NAMES},
    **{n: ("node", partial(pyg_large.load_pyg_large, n)) for n in pyg_large.NAMES},
    **{n: ("node", partial(ogbn.load_ogbn, n)) for n in ogbn.NAMES},
    "synthetic-node": ("node", _synthetic(synthetic.random_node_dataset)),
    "synthetic-graph": ("graph", _synthetic(synthetic.random_graph_dataset)),
    "synthetic-rec": ("rec", _synthetic(synthetic.random_rec_dataset)),
}
ALIASES = {**recsys.ALIASES, **molecules.ALIASES}
# Node datasets whose features are dense and signed (embeddings, Gaussian): PyG's NormalizeFeatures (subtract
# the global minimum, divide each row by its sum) shrinks their spread to ~1 / (F * |min|), which trains to chance
# (GCN on sbm-100k: benchmarks/sbm.py, docs/notes/scale.md), so they are not row-normalised by default.
# Reddit's (GloVe averages plus scores) and OGB's (word2vec averages for arxiv; PCA of bag-of-words for
# products) are signed too.
DENSE_FEATURES = frozenset((*sbm.NAMES, *ogbn.NAMES, "reddit"))
TASKS = ("node", "graph", "rec")


def _table() -> dict[str, str]:
    return {**{n: n for n in DATASETS}, **ALIASES}


def canonical_name(name: str) -> str:
    """The canonical spelling of a dataset name (case-insensitive, aliases resolved)."""
    return lookup("dataset", name, _table())


def is_regression(name: str) -> bool:
    """Whether ``name`` is a graph-regression dataset (one float per graph: the molecules), scored by MAE / RMSE
    rather than accuracy; False for a name that is not a dataset (the caller's lookup reports it)."""
    try:
        return canonical_name(name) in molecules.NAMES
    except QgnnError:  # an unknown name: not ours to report here
        return False


def dataset_names(task: str | None = None) -> list[str]:
    """Sorted canonical dataset names, optionally only those of one task (node / graph / rec)."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return sorted(n for n, (t, _) in DATASETS.items() if task is None or t == task)


def row_normalize_by_default(name: str) -> bool:
    """Whether a node dataset's features are row-normalised when the config leaves ``normalize_features`` unset:
    Kipf & Welling's recipe for bag-of-words features, not for the :data:`DENSE_FEATURES` datasets."""
    return _table().get(str(name).lower().replace("_", "-")) not in DENSE_FEATURES


def dataset_task(name: str) -> str:
    return DATASETS[canonical_name(name)][0]


def load_dataset(name: str, root: str | os.PathLike | None = None, **kwargs):
    """Load a dataset by name; returns a NodeDataset, GraphDataset or RecDataset.

    Options go to the loader (e.g. ``normalize_features`` for Planetoid,
    ``node_features`` for TU, ``seed`` / ``val_frac`` for recommendation data).
    """
    key = canonical_name(name)
    _, loader = DATASETS[key]
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("name", "root")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset {key} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(accepted) or 'none'}")
    return loader(root=root, **kwargs)
