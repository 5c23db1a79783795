"""Molecule regression datasets: MoleculeNet CSVs and ZINC pickles in PyG's raw formats, one-hot atoms, splits."""

from __future__ import annotations

import csv
import sys

import pytest
import qgnn_molecules_testutil as mol
import torch

from qgnn.data import load_dataset
from qgnn.data.molecules import ATOM_FEATURE_DIMS, atom_one_hot, random_split, target_stats
from qgnn.data.registry import canonical_name, dataset_task
from qgnn.errors import ConfigError, DataNotFoundError

needs_rdkit = mol.needs_rdkit


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QGNN_OFFLINE", "1")
    return tmp_path


def test_names_are_graph_datasets_with_aliases():
    assert dataset_task("esol") == dataset_task("ZINC") == "graph"
    assert canonical_name("Lipophilicity") == "lipo"
    assert canonical_name("zinc-subset") == "zinc"


def test_one_hot_has_one_block_per_column():
    x = torch.tensor([[5, 0, 2, 5, 1, 0, 3, 1, 0], [118, 8, 10, 11, 8, 4, 7, 0, 1]])
    oh = atom_one_hot(x)
    assert oh.shape == (2, sum(ATOM_FEATURE_DIMS))
    assert oh.sum(1).tolist() == [len(ATOM_FEATURE_DIMS)] * 2
    blocks = torch.split(oh, list(ATOM_FEATURE_DIMS), dim=1)
    for c, block in enumerate(blocks):  # the hot position of each block is that column's value
        assert block.argmax(1).tolist() == x[:, c].tolist()
    with pytest.raises(ConfigError, match="vocabulary"):
        atom_one_hot(torch.tensor([[119, 0, 0, 0, 0, 0, 0, 0, 0]]))


@needs_rdkit
def test_esol_csv_loads_with_its_targets(cache):
    root = mol.write_esol(cache / "data")
    ds = load_dataset("esol", root=root)
    assert len(ds) == len(mol.SMILES) and ds.regression and ds.num_classes == 1
    assert ds.num_features == sum(ATOM_FEATURE_DIMS)
    assert torch.allclose(ds.targets, torch.tensor(mol.esol_targets()))
    for i in (0, 4):  # every atom has one value per column; ethane has 2 heavy atoms, benzene 6 (aromatic)
        g = ds.dataset[i]
        assert torch.equal(g.x.sum(1), torch.full((g.num_nodes,), float(len(ATOM_FEATURE_DIMS))))
    assert ds.dataset[0].num_nodes == 2 and ds.dataset[4].num_nodes == 6
    assert ds.dataset[4].x[:, -3].sum() == 6  # is_aromatic = 1 for every benzene atom
    with pytest.raises(ConfigError, match="node_features must be auto"):
        load_dataset("esol", root=root, node_features="degree")


@needs_rdkit
def test_missing_csv_names_the_file(cache):
    with pytest.raises(DataNotFoundError, match="delaney-processed.csv"):
        load_dataset("esol", root=cache / "empty")


def test_missing_rdkit_is_one_config_error_naming_the_extra(cache, monkeypatch):
    root = mol.write_esol(cache / "data")
    monkeypatch.setitem(sys.modules, "rdkit", None)  # `import rdkit` now raises ImportError
    with pytest.raises(ConfigError, match=r"qgnn\[chem\]") as e:
        load_dataset("esol", root=root)
    assert "\n" not in str(e.value) and "RDKit" in str(e.value)


def test_random_split_is_seeded_disjoint_and_80_10_10():
    a, b = random_split(1000, seed=3, index=1), random_split(1000, seed=3, index=1)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("train", "val", "test"))
    assert (len(a.train), len(a.val), len(a.test)) == (800, 100, 100)
    assert torch.equal(torch.cat([a.train, a.val, a.test]).sort().values, torch.arange(1000))
    c, d = random_split(1000, seed=3, index=2), random_split(1000, seed=4, index=1)
    assert not torch.equal(a.test, c.test) and not torch.equal(a.test, d.test)


@needs_rdkit
def test_dataset_folds_are_the_seeded_splits(cache):
    ds = load_dataset("esol", root=mol.write_esol(cache / "data"))
    folds = ds.folds(k=5, seed=7)
    assert len(folds) == 5 and len({tuple(s.test.tolist()) for s in folds}) == 5
    assert all(torch.equal(s.val, t.val) for s, t in zip(folds, ds.folds(k=5, seed=7), strict=True))
    for s in folds:
        assert min(len(s.train), len(s.val), len(s.test)) >= 1


def test_target_stats_standardise():
    mean, std = target_stats(torch.tensor([1.0, 3.0]))
    assert (mean, std) == (2.0, 1.0)
    assert target_stats(torch.tensor([5.0, 5.0]))[1] == 1.0  # no spread: leave the scale alone


def test_zinc_loader_reads_pyg_raw_files_and_keeps_the_benchmark_split(cache):
    root, picked = mol.write_zinc(cache / "data")
    ds = load_dataset("zinc", root=root)
    sizes = [len(picked[s]) for s in ("train", "val", "test")]
    assert len(ds) == sum(sizes) and ds.num_features == 28 and ds.regression
    s = ds.folds(k=3, seed=0)[0]
    assert [len(s.train), len(s.val), len(s.test)] == sizes
    assert torch.allclose(ds.targets[s.test], picked["test"]) and torch.allclose(ds.targets[s.train], picked["train"])
    assert all(torch.equal(f.test, s.test) for f in ds.folds(k=3, seed=5))  # fixed split, any seed
    assert torch.equal(ds.dataset[0].x.sum(1), torch.ones(ds.dataset[0].num_nodes))


@needs_rdkit
def test_staged_esol_matches_its_csv(cache):
    from qgnn.testing import data_root

    path = data_root() / "molecules" / "moleculenet" / "esol" / "raw" / "delaney-processed.csv"
    if not path.is_file():
        pytest.skip(f"staged ESOL not found at {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ds = load_dataset("esol", root=data_root())
    assert len(ds) == len(rows)
    y = torch.tensor([float(r["measured log solubility in mols per litre"]) for r in rows])
    assert torch.allclose(ds.targets, y)
