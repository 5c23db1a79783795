"""Molecular graph regression: MoleculeNet ESOL, FreeSolv, Lipophilicity (Wu et al., Chem. Sci. 2018) and the
ZINC 12k subset (Dwivedi et al., "Benchmarking GNNs", JMLR 2023), through PyG's own loaders.

Raw files (the layout PyG expects, under the data root ``--root`` / ``$QGNN_DATA``):

* ``molecules/moleculenet/<esol|freesolv|lipo>/raw/<delaney-processed|SAMPL|Lipophilicity>.csv``: the
  original MoleculeNet CSVs, turned into graphs by :class:`torch_geometric.datasets.MoleculeNet`, which parses
  the SMILES with RDKit (the optional extra ``pip install 'qgnn[chem]'``);
* ``molecules/zinc-subset/raw/{train,val,test}.pickle`` and ``{train,val,test}.index``: the raw files of
  :class:`torch_geometric.datasets.ZINC` (``subset=True``), which PyG downloads when the network is there.

The raw folder is only read: processed files go to the qgnn cache (:class:`~qgnn.data.paths.LocalRaw`).

**Node features.** MoleculeNet graphs carry PyG's 9 integer atom features per atom (``x_map`` of
:mod:`torch_geometric.utils.smiles`: atomic number, chirality, degree, formal charge, number of Hs, radical
electrons, hybridisation, aromatic, in ring). They are categories, not magnitudes (atomic number 8 is not "twice"
atomic number 4), so they are one-hot encoded per column and concatenated over PyG's full vocabulary
(119 + 9 + 11 + 12 + 9 + 5 + 8 + 2 + 2 = 177 features, the same for every dataset). This is what OGB's
``AtomEncoder`` does (a sum of one embedding per column): ``concat(one_hot(x_c)) @ W`` equals
``sum_c Emb_c(x_c)`` with ``Emb_c`` the rows of ``W`` for column ``c``, so the first layer's linear map *is* an
AtomEncoder, while the models and quantizers keep taking a float feature matrix (and 0 / 1 inputs are exact at
any bit-width). Feeding the integers as floats would impose an order and scale on categories. ZINC's single
column is its 28 atom types, one-hot (the embedding of Dwivedi et al., written the same way). Bond features are
not used: the graph models of :mod:`qgnn.models.graph` (GIN, GCN) take none.

**Targets.** One float per molecule (``y`` of shape ``[1]``): log solubility (mol/L) for ESOL, hydration free
energy (kcal/mol) for FreeSolv, logD at pH 7.4 for Lipophilicity, penalised logP for ZINC. The training task
(:class:`qgnn.train.regression.RegressionTask`) standardises them on each run's training split
(:func:`target_stats`) and reports MAE / RMSE in these original units.

**Splits** (:meth:`MoleculeDataset.folds`). MoleculeNet recommends, and its benchmark table uses, a *random*
80 / 10 / 10 split for ESOL, FreeSolv and Lipophilicity (scaffold splits are its choice for the bioactivity
sets: BACE, HIV, ...); its figures are means over independent random splits. Split ``i`` of seed ``s`` is a
permutation drawn by ``numpy.random.default_rng([s, i])``: the first ``int(0.8 n)`` molecules train, the next
``int(0.9 n) - int(0.8 n)`` validate, the rest test (DeepChem's ``RandomSplitter`` cut-offs). The runner's
"folds" of a molecule dataset are these seeded splits (the recipe runs 5 of them, :mod:`qgnn.recipes`). ZINC has
its fixed benchmark split (10000 / 1000 / 1000), returned for every fold, so runs differ by their seed only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.datasets import ZINC, MoleculeNet

from qgnn.data.paths import LocalRaw, build_with_retry, find_raw
from qgnn.data.splits import Split
from qgnn.data.tu import GraphList
from qgnn.errors import ConfigError, lookup

__all__ = ["ATOM_FEATURE_DIMS", "MOLECULENET", "NAMES", "ALIASES", "MoleculeDataset", "atom_one_hot",
           "load_molecules", "random_split", "target_stats", "ZINC_ATOM_TYPES"]

# canonical name -> (PyG MoleculeNet name, raw CSV, target, units)
MOLECULENET = {
    "esol": ("ESOL", "delaney-processed.csv", "log solubility", "log mol/L"),
    "freesolv": ("FreeSolv", "SAMPL.csv", "hydration free energy", "kcal/mol"),
    "lipo": ("Lipo", "Lipophilicity.csv", "logD at pH 7.4", "log units"),
}
ZINC_FILES = ["train.pickle", "val.pickle", "test.pickle", "train.index", "val.index", "test.index"]
NAMES = (*MOLECULENET, "zinc")
ALIASES = {"lipophilicity": "lipo", "zinc-subset": "zinc", "zinc12k": "zinc"}
SPLIT_FRACS = (0.8, 0.1, 0.1)  # MoleculeNet's random split
ZINC_ATOM_TYPES = 28  # atom_dict of benchmarking-gnns (element, explicit Hs, charge)
CHEM_HINT = "install the chem extra: pip install 'qgnn[chem]' (or pip install rdkit)"


def _atom_feature_dims() -> tuple[int, ...]:
    from torch_geometric.utils.smiles import x_map

    return tuple(len(v) for v in x_map.values())


ATOM_FEATURE_DIMS = _atom_feature_dims()  # PyG's 9 columns: 119, 9, 11, 12, 9, 5, 8, 2, 2


def atom_one_hot(x: torch.Tensor, dims=ATOM_FEATURE_DIMS) -> torch.Tensor:
    """``[N, len(dims)]`` integer categories -> ``[N, sum(dims)]`` float one-hot, one block per column (module
    docstring). A value outside its column's vocabulary is a :class:`ConfigError` (a different PyG version)."""
    x = x.long().view(x.size(0), -1)
    if x.size(1) != len(dims):
        raise ConfigError(f"atom features have {x.size(1)} columns, expected {len(dims)}")
    sizes = torch.tensor(dims)
    if x.numel() and ((x < 0) | (x >= sizes)).any():
        raise ConfigError(f"atom feature values outside PyG's vocabulary {list(dims)}: the processed files come "
                          "from another torch_geometric version; delete them from the qgnn cache")
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    out = torch.zeros(x.size(0), int(sizes.sum()))
    out.scatter_(1, x + offsets, 1.0)
    return out


def random_split(n: int, seed: int, index: int = 0, fracs=SPLIT_FRACS) -> Split:
    """Split ``index`` of ``seed``: a random 80 / 10 / 10 split of ``range(n)`` (module docstring)."""
    if n < 3:
        raise ConfigError(f"a train / val / test split needs at least 3 molecules, got {n}")
    perm = np.random.default_rng([seed, index]).permutation(n)
    a = int(fracs[0] * n)
    b = int((fracs[0] + fracs[1]) * n)
    a, b = max(a, 1), min(max(b, a + 1), n - 1)  # every part non-empty, even for tiny test files
    parts = (perm[:a], perm[a:b], perm[b:])
    return Split(*(torch.from_numpy(np.sort(p)).long() for p in parts))


def target_stats(y: torch.Tensor) -> tuple[float, float]:
    """(mean, std) that standardise the targets ``y`` (population std; 1.0 where it is 0 or undefined)."""
    y = y.double().view(-1)
    mean = float(y.mean()) if y.numel() else 0.0
    std = float(y.std(unbiased=False)) if y.numel() > 1 else 1.0
    return mean, (std if std > 0 else 1.0)


@dataclass
class MoleculeDataset:
    """Molecules with one regression target each (``dataset[idx_tensor]`` gives a PyG subset).

    ``task`` is ``"graph"`` (graph-level models, batches of graphs) and ``regression`` True: the runner trains it
    with :class:`~qgnn.train.regression.RegressionTask`. ``num_classes`` is 1, the width of the models' output."""

    name: str
    dataset: InMemoryDataset
    num_features: int
    targets: torch.Tensor = field(repr=False)
    target: str = ""
    units: str = ""
    fixed_split: Split | None = field(default=None, repr=False)  # ZINC: the benchmark's own split
    num_classes: int = field(default=1, init=False)
    task: str = field(default="graph", init=False)
    regression: bool = field(default=True, init=False)
    node_features: str = "one-hot atoms"

    def __len__(self) -> int:
        return len(self.dataset)

    def folds(self, k: int = 10, seed: int = 0) -> list[Split]:
        """``k`` seeded random 80 / 10 / 10 splits (module docstring); ZINC: its fixed split ``k`` times."""
        if self.fixed_split is not None:
            return [self.fixed_split] * k
        return [random_split(len(self), seed, i) for i in range(k)]


def _has_rdkit() -> bool:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return False
    return True


class _MoleculeNet(LocalRaw, MoleculeNet):
    """PyG's MoleculeNet reading from a given raw folder and writing to the qgnn cache."""

    cache_kind = "moleculenet"

    def __init__(self, raw_folder: Path, name: str, force_reload: bool = False):
        self._raw_folder = str(raw_folder)
        super().__init__(root=str(Path(raw_folder).parent.parent), name=name, force_reload=force_reload)


class _ZINC(LocalRaw, ZINC):
    """PyG's ZINC (subset) reading from a given raw folder and writing to the qgnn cache."""

    cache_kind = "zinc"

    def __init__(self, raw_folder: Path, split: str = "train", force_reload: bool = False):
        self._raw_folder = str(raw_folder)
        # root: where PyG's download unpacks molecules.zip before moving it to raw_dir
        super().__init__(root=str(Path(raw_folder).parent), subset=True, split=split, force_reload=force_reload)

    def cache_name(self) -> str:
        return "zinc-subset"


def _graphs(base: InMemoryDataset, encode) -> tuple[list[Data], torch.Tensor]:
    out = []
    for i in range(len(base)):
        g = base.get(i)
        y = g.y.float().view(-1)[:1]
        out.append(Data(x=encode(g.x), edge_index=g.edge_index, y=y, num_nodes=g.num_nodes))
    targets = torch.cat([g.y for g in out]) if out else torch.zeros(0)
    return out, targets


def _check_targets(name: str, targets: torch.Tensor) -> None:
    if targets.numel() and not torch.isfinite(targets).all():
        bad = int((~torch.isfinite(targets)).sum())
        raise ConfigError(f"{name}: {bad} molecule(s) have no numeric target; the raw CSV is not MoleculeNet's")


def _load_moleculenet(key: str, root) -> MoleculeDataset:
    pyg_name, csv, target, units = MOLECULENET[key]
    if not _has_rdkit():  # PyG imports RDKit deep inside from_smiles: say what to install, not a bare ImportError
        raise ConfigError(f"{pyg_name} needs RDKit to parse its SMILES, which is not installed: {CHEM_HINT}")
    folder = find_raw(Path("molecules") / "moleculenet" / key / "raw", [csv], root,
                      download=lambda f: _MoleculeNet(f, pyg_name))
    base = build_with_retry(lambda force: _MoleculeNet(folder, pyg_name, force_reload=force), pyg_name)
    graphs, targets = _graphs(base, atom_one_hot)
    _check_targets(key, targets)
    return MoleculeDataset(name=key, dataset=GraphList(graphs, key), num_features=sum(ATOM_FEATURE_DIMS),
                           targets=targets, target=target, units=units)


def _zinc_one_hot(x: torch.Tensor) -> torch.Tensor:
    return atom_one_hot(x.view(-1, 1), (ZINC_ATOM_TYPES,))


def _load_zinc(root) -> MoleculeDataset:
    folder = find_raw(Path("molecules") / "zinc-subset" / "raw", ZINC_FILES, root,
                      download=lambda f: _ZINC(f), hint="PyG downloads them from benchmarking-gnns (molecules.zip "
                      "and the three .index files); a copy without train.pickle cannot be used")
    parts, sizes = [], []
    for split in ("train", "val", "test"):
        base = build_with_retry(lambda force, s=split: _ZINC(folder, s, force_reload=force), f"ZINC {split}")
        graphs, _ = _graphs(base, _zinc_one_hot)
        parts += graphs
        sizes.append(len(graphs))
    targets = torch.cat([g.y for g in parts]) if parts else torch.zeros(0)
    _check_targets("zinc", targets)
    bounds = np.cumsum([0, *sizes])
    split = Split(*(torch.arange(int(bounds[i]), int(bounds[i + 1])) for i in range(3)))
    return MoleculeDataset(name="zinc", dataset=GraphList(parts, "zinc"), num_features=ZINC_ATOM_TYPES,
                           targets=targets, target="penalised logP (logP_SA_cycle_normalized)", units="",
                           fixed_split=split)


def load_molecules(name: str, root: str | os.PathLike | None = None, node_features: str = "auto") -> MoleculeDataset:
    """Load ESOL, FreeSolv, Lipophilicity (``lipo``) or the ZINC subset (``zinc``) as a :class:`MoleculeDataset`.

    ``node_features``: only ``"auto"`` (one-hot atom features, module docstring); the option exists because the
    runner passes it to every graph dataset."""
    key = lookup("molecule dataset", ALIASES.get(str(name).lower(), name), {k: k for k in NAMES})
    if node_features != "auto":
        raise ConfigError(f"{key} has one-hot atom features; node_features must be auto, got {node_features!r}")
    return _load_zinc(root) if key == "zinc" else _load_moleculenet(key, root)
