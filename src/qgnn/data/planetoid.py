"""Planetoid citation graphs (Cora, CiteSeer, PubMed) with the public split.

Semi-supervised node classification (Yang et al., ICML 2016): the public split has
20 labelled nodes per class for training, 500 validation and 1000 test nodes.
Raw files: ``<root>/planetoid/<Name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid

from qgnn.data.paths import LocalRaw, build_with_retry, find_raw
from qgnn.errors import lookup

NAMES = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
_SUFFIXES = ["x", "tx", "allx", "y", "ty", "ally", "graph", "test.index"]


@dataclass
class NodeDataset:
    """One graph for transductive node classification.

    ``data`` has ``x``, ``edge_index``, ``y`` and boolean ``train_mask`` / ``val_mask`` /
    ``test_mask``.
    """

    name: str
    data: Data
    num_features: int
    num_classes: int
    task: str = field(default="node", init=False)


class _Planetoid(LocalRaw, Planetoid):
    """PyG's Planetoid reading from a given raw folder and writing to the qgnn cache."""

    cache_kind = "planetoid"

    def __init__(self, raw_folder: Path, name: str, force_reload: bool = False):
        self._raw_folder = str(raw_folder)
        super().__init__(root=self._raw_folder, name=name, split="public", force_reload=force_reload)

    def diagnose(self, err: Exception) -> str:
        return _diagnose(Path(self.raw_dir), self.name, err)


def _diagnose(folder: Path, name: str, err: Exception) -> str:
    """Name the raw file that cannot be read (PyG's own error does not)."""
    from torch_geometric.io.planetoid import read_file

    for s in _SUFFIXES:
        try:
            read_file(str(folder), name.lower(), s)
        except Exception as e:
            f = folder / f"ind.{name.lower()}.{s}"
            return (f"cannot read {f} ({type(e).__name__}: {e}); the file is corrupt or truncated: "
                    f"replace it with the original")
    return f"cannot build {name} from {folder}/ ({type(err).__name__}: {err}); check the raw files there"


def _pubmed_hint(root) -> str:
    from qgnn.data.paths import resolve_root

    base = resolve_root(root) / "planetoid"
    incomplete = base / "PubMed_INCOMPLETE" / "raw"
    if not incomplete.is_dir():
        return ""
    return (f"{incomplete}/ holds an incomplete PubMed without ind.pubmed.allx: PubMed needs "
            f"ind.pubmed.allx, so it only works where it can be downloaded or where the file is "
            f"added to {base / 'PubMed' / 'raw'}/ (with the other seven ind.pubmed.* files).")


def load_planetoid(
    name: str = "cora", root: str | os.PathLike | None = None, normalize_features: bool = False
) -> NodeDataset:
    """Load Cora, CiteSeer or PubMed with the public split as a :class:`NodeDataset`.

    Features are PyG's (binary bag of words; TF-IDF for PubMed), row-normalised only
    when ``normalize_features`` is true (``T.NormalizeFeatures``).
    """
    key = lookup("planetoid dataset", name, {k: k for k in NAMES})
    pyg_name = NAMES[key]
    files = [f"ind.{key}.{s}" for s in _SUFFIXES]
    hint = _pubmed_hint(root) if key == "pubmed" else ""
    folder = find_raw(Path("planetoid") / pyg_name / "raw", files, root,
                      download=lambda f: _Planetoid(f, pyg_name), hint=hint)
    ds = build_with_retry(lambda force: _Planetoid(folder, pyg_name, force_reload=force), pyg_name)
    data = ds[0]
    if normalize_features:
        import torch_geometric.transforms as T

        data = T.NormalizeFeatures()(data)
    return NodeDataset(name=key, data=data, num_features=int(data.x.size(1)),
                       num_classes=int(torch.max(data.y).item()) + 1)
