"""TU graph-classification datasets (Morris et al., 2020) as used in the GIN paper.

Raw files: ``<root>/tu/<NAME>/raw/<NAME>_{A,graph_indicator,graph_labels}.txt`` plus
optional node labels / attributes. Graph labels are remapped to 0..C-1 (by PyG).
Node features (``node_features``):

- ``"auto"``: PyG's ``x`` (one-hot node labels; continuous attributes are dropped,
  as in GIN) when the dataset has node labels; otherwise one-hot degree when the
  largest degree in the dataset is <= 200 (IMDB-*), else the constant 1 (REDDIT-*).
- ``"degree"``: one-hot degree (``OneHotDegree`` with the dataset's maximum degree).
- ``"constant"``: a single feature equal to 1.

Features are computed once at load time, not on every access. Evaluation uses
stratified 10-fold cross-validation (:meth:`GraphDataset.folds`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.datasets import TUDataset

from qgnn.data.paths import LocalRaw, build_with_retry, find_raw
from qgnn.data.splits import Split, cv_splits
from qgnn.errors import ConfigError, lookup

NAMES = {n.lower(): n for n in [
    "PROTEINS", "MUTAG", "NCI1", "IMDB-BINARY", "IMDB-MULTI", "REDDIT-BINARY", "ENZYMES", "PTC_MR"]}
FEATURE_MODES = ("auto", "degree", "constant")
MAX_ONEHOT_DEGREE = 200  # above this, one-hot degree is too wide to be useful (GIN uses constants)


@dataclass
class GraphDataset:
    """Graphs with one label each. ``dataset[idx_tensor]`` gives a PyG subset."""

    name: str
    dataset: InMemoryDataset
    num_features: int
    num_classes: int
    labels: torch.Tensor = field(repr=False)
    task: str = field(default="graph", init=False)
    node_features: str = "labels"  # what x holds: "labels", "degree" or "constant"

    def __len__(self) -> int:
        return len(self.dataset)

    def folds(self, k: int = 10, seed: int = 0) -> list[Split]:
        """Stratified k-fold train/val/test splits (see :mod:`qgnn.data.splits`)."""
        return cv_splits(self.labels, k, seed)


class GraphList(InMemoryDataset):
    """An in-memory PyG dataset made from a list of ``Data`` (nothing on disk)."""

    def __init__(self, data_list: Sequence[Data], name: str = "graphs"):
        super().__init__(root=None, log=False)
        self.name = name
        self.data, self.slices = self.collate(list(data_list))

    def __repr__(self) -> str:
        return f"{self.name}({len(self)})"


class _TU(LocalRaw, TUDataset):
    """PyG's TUDataset reading from a given raw folder and writing to the qgnn cache."""

    cache_kind = "tu"

    def __init__(self, raw_folder: Path, name: str, force_reload: bool = False, use_node_attr=False):
        self._raw_folder = str(raw_folder)
        super().__init__(root=self._raw_folder, name=name, force_reload=force_reload,
                         use_node_attr=use_node_attr)

    def diagnose(self, err: Exception) -> str:
        return _diagnose(Path(self.raw_dir), self.name, err)


def _diagnose(folder: Path, name: str, err: Exception) -> str:
    """Name the raw file that cannot be parsed (PyG's own error does not)."""
    from torch_geometric.io import read_txt_array

    for f in sorted(folder.glob(f"{name}_*.txt")):
        try:
            read_txt_array(str(f), sep=",")
        except Exception as e:
            return f"cannot parse {f} ({type(e).__name__}: {e}); replace it with the original file"
    return (f"cannot build {name} from {folder}/ ({type(err).__name__}: {err}); the raw files there "
            f"are inconsistent (truncated or from different versions)")


def _with_features(ds: InMemoryDataset, mode: str, name: str) -> tuple[InMemoryDataset, str]:
    """Return (dataset with the requested node features, the mode actually used)."""
    has_x = ds._data.x is not None and ds._data.x.size(-1) > 0
    if mode == "auto" and has_x:
        return ds, "labels"
    graphs = [ds.get(i) for i in range(len(ds))]
    max_deg = 0
    for g in graphs:
        if g.edge_index.numel():
            max_deg = max(max_deg, int(torch.bincount(g.edge_index[0]).max()))
    if mode == "auto":
        mode = "degree" if max_deg <= MAX_ONEHOT_DEGREE else "constant"
    out = []
    for g in graphs:
        n = g.num_nodes
        if mode == "degree":
            deg = torch.bincount(g.edge_index[0], minlength=n)
            x = torch.nn.functional.one_hot(deg, max_deg + 1).float()
        else:
            x = torch.ones(n, 1)
        out.append(Data(x=x, edge_index=g.edge_index, y=g.y))
    return GraphList(out, name), mode


def load_tu(
    name: str,
    root: str | os.PathLike | None = None,
    node_features: str = "auto",
    use_node_attr: bool = False,
) -> GraphDataset:
    """Load a TU dataset as a :class:`GraphDataset` (see the module doc for features).

    ``use_node_attr=True`` keeps continuous node attributes (PROTEINS, ENZYMES) in
    front of the one-hot node labels; the GIN protocol leaves them out.
    """
    key = lookup("TU dataset", name, {k: k for k in NAMES})
    tu_name = NAMES[key]
    if node_features not in FEATURE_MODES:
        raise ConfigError(f"node_features must be one of {', '.join(FEATURE_MODES)}, got {node_features!r}")
    files = [f"{tu_name}_{s}.txt" for s in ("A", "graph_indicator", "graph_labels")]
    folder = find_raw(Path("tu") / tu_name / "raw", files, root, download=lambda f: _TU(f, tu_name))
    base = build_with_retry(
        lambda force: _TU(folder, tu_name, use_node_attr=use_node_attr, force_reload=force), tu_name)
    ds, used = _with_features(base, node_features, tu_name)
    labels = ds._data.y.view(-1).long().clone()
    return GraphDataset(name=key, dataset=ds, num_features=int(ds._data.x.size(-1)),
                        num_classes=int(labels.max()) + 1, labels=labels, node_features=used)
