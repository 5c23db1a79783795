"""Larger node-classification benchmarks read with PyG's own loaders: Reddit, Flickr, Amazon, Coauthor.

========================  ===================================  =========================================
name                      raw folder under the data root       raw files (PyG's ``raw_file_names``)
========================  ===================================  =========================================
``reddit``                ``reddit/Reddit/raw/``               ``reddit_data.npz``, ``reddit_graph.npz``
``flickr``                ``flickr/Flickr/raw/``               ``adj_full.npz``, ``feats.npy``,
                                                               ``class_map.json``, ``role.json``
``amazon-computers``      ``amazon/Computers/raw/``            ``amazon_electronics_computers.npz``
``amazon-photo``          ``amazon/Photo/raw/``                ``amazon_electronics_photo.npz``
``coauthor-cs``           ``coauthor/CS/raw/``                 ``ms_academic_cs.npz``
``coauthor-physics``      ``coauthor/Physics/raw/``            ``ms_academic_phy.npz``
========================  ===================================  =========================================

Raw files are found as for Planetoid (:func:`qgnn.data.paths.find_raw`: the data root, then the download
cache; PyG's own download when ``QGNN_OFFLINE`` is unset); processed files go to
``cache_dir()/processed/<family>/<Name>/<hash>``, never beside the raw files (the data root may be read-only).

**Splits.** Reddit (Hamilton et al. 2017) and Flickr (Zeng et al. 2020, GraphSAINT) ship official masks
(Reddit's ``node_types`` 1 / 2 / 3; Flickr's ``role.json`` ``tr`` / ``va`` / ``te``), used as they are.
Amazon and Coauthor ship none; they get the split of Shchur et al. 2018 ("Pitfalls of Graph Neural Network
Evaluation"): per class, :data:`TRAIN_PER_CLASS` = 20 training and :data:`VAL_PER_CLASS` = 30 validation
nodes, the rest test. It is drawn by :func:`per_class_split`: classes in ascending label order, each class's
node ids shuffled by one ``numpy.random.default_rng(split_seed)`` stream (default :data:`SPLIT_SEED` = 0), so
the same seed gives the same masks on every machine with the same numpy. A class with fewer than 50 nodes gives
all it has to train, then val, and none to test (none at the real datasets' sizes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch_geometric.datasets import Amazon, Coauthor, Flickr, Reddit

from qgnn.data.paths import LocalRaw, build_with_retry, find_raw
from qgnn.data.planetoid import NodeDataset
from qgnn.errors import ConfigError, lookup

TRAIN_PER_CLASS = 20
VAL_PER_CLASS = 30
SPLIT_SEED = 0

# name -> (family folder, PyG name, PyG class, raw files, official masks)
_SOURCES: dict[str, tuple[str, str, type, tuple[str, ...], bool]] = {
    "reddit": ("reddit", "Reddit", Reddit, ("reddit_data.npz", "reddit_graph.npz"), True),
    "flickr": ("flickr", "Flickr", Flickr, ("adj_full.npz", "feats.npy", "class_map.json", "role.json"), True),
    "amazon-computers": ("amazon", "Computers", Amazon, ("amazon_electronics_computers.npz",), False),
    "amazon-photo": ("amazon", "Photo", Amazon, ("amazon_electronics_photo.npz",), False),
    "coauthor-cs": ("coauthor", "CS", Coauthor, ("ms_academic_cs.npz",), False),
    "coauthor-physics": ("coauthor", "Physics", Coauthor, ("ms_academic_phy.npz",), False),
}
NAMES = tuple(_SOURCES)


def raw_location(name: str) -> tuple[Path, list[str]]:
    """(folder relative to the data root, raw file names) of dataset ``name``."""
    family, pyg_name, _, files, _ = _SOURCES[name]
    return Path(family) / pyg_name / "raw", list(files)


def _reader(name: str, raw_folder: Path, force_reload: bool = False):
    """PyG's class for ``name`` reading raw files from ``raw_folder`` (downloading into it when asked) and writing its
    processed file to the qgnn cache."""
    family, pyg_name, cls, files, _ = _SOURCES[name]
    raw_folder = Path(raw_folder)

    class _Local(LocalRaw, cls):
        cache_kind = family

        def __init__(self, *args, **kwargs):
            self._raw_folder = str(raw_folder)
            super().__init__(*args, **kwargs)

        def cache_name(self) -> str:
            return pyg_name

    _Local.__name__ = cls.__name__
    root = str(raw_folder)
    if cls in (Amazon, Coauthor):
        return _Local(root, pyg_name, force_reload=force_reload)
    return _Local(root, force_reload=force_reload)


def per_class_split(y: torch.Tensor, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS,
                    seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean (train, val, test) masks: per class (ascending label), the class's node ids shuffled by one
    ``default_rng(seed)`` stream; the first ``train_per_class`` train, the next ``val_per_class`` validate,
    the rest test. Nodes with a negative label are in no mask."""
    if train_per_class < 1 or val_per_class < 0:
        raise ConfigError(f"need train_per_class >= 1 and val_per_class >= 0, got {train_per_class}, {val_per_class}")
    labels = y.cpu().numpy().reshape(-1)
    rng = np.random.default_rng(seed)
    masks = [np.zeros(len(labels), bool) for _ in range(3)]
    for c in np.unique(labels[labels >= 0]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        masks[0][idx[:train_per_class]] = True
        masks[1][idx[train_per_class:train_per_class + val_per_class]] = True
        masks[2][idx[train_per_class + val_per_class:]] = True
    return tuple(torch.from_numpy(m) for m in masks)


def load_pyg_large(name: str = "amazon-photo", root: str | os.PathLike | None = None,
                   normalize_features: bool = False, split_seed: int = SPLIT_SEED) -> NodeDataset:
    """Load one of :data:`NAMES` as a :class:`NodeDataset` (see the module docstring for files and splits).

    ``normalize_features`` applies PyG's ``NormalizeFeatures`` after loading (the cache holds the raw features);
    ``split_seed`` seeds the per-class split of Amazon / Coauthor (Reddit and Flickr keep their official masks).
    """
    key = lookup("dataset", name, {k: k for k in NAMES})
    pyg_name, official = _SOURCES[key][1], _SOURCES[key][4]
    rel, files = raw_location(key)
    folder = find_raw(rel, files, root, download=lambda f: _reader(key, f))
    ds = build_with_retry(lambda force: _reader(key, folder, force_reload=force), pyg_name)
    data = ds[0]
    if not official:
        data.train_mask, data.val_mask, data.test_mask = per_class_split(data.y, seed=split_seed)
    if normalize_features:
        import torch_geometric.transforms as T

        data = T.NormalizeFeatures()(data)
    return NodeDataset(name=key, data=data, num_features=int(data.x.size(1)),
                       num_classes=int(data.y.max().item()) + 1)
