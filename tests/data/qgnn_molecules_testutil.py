"""Tiny molecule files in the raw formats PyG reads (MoleculeNet's ESOL CSV, ZINC's pickles), written by tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

SMILES = ["CC", "CCO", "CCC", "CCCC", "c1ccccc1", "CC(=O)O", "CCN", "CO", "OCCO", "CCCl", "CBr", "c1ccncc1",
          "CC(C)C", "CCOC", "C=C", "CC#N", "O=C=O", "CCCCC", "CCCCCO", "Oc1ccccc1", "Nc1ccccc1", "CC(C)O",
          "CCCCCC", "ClC(Cl)Cl", "CCOCC", "CC(=O)C", "OC(=O)c1ccccc1", "CCCBr", "NCCO", "C1CCCCC1"]
ESOL_HEADER = ("Compound ID,ESOL predicted log solubility in mols per litre,Minimum Degree,Molecular Weight,"
               "Number of H-Bond Donors,Number of Rings,Number of Rotatable Bonds,Polar Surface Area,"
               "measured log solubility in mols per litre,smiles")

try:  # PyG's MoleculeNet parses SMILES with rdkit: the `chem` extra (CI installs it)
    import rdkit  # noqa: F401

    _HAVE_RDKIT = True
except ImportError:
    _HAVE_RDKIT = False
needs_rdkit = pytest.mark.skipif(not _HAVE_RDKIT, reason="needs rdkit (pip install 'qgnn[chem]')")


def esol_targets(smiles=SMILES) -> list[float]:
    """A target the graphs can explain: minus a quarter of the SMILES length, plus one per oxygen."""
    return [round(-0.25 * len(s) + s.count("O"), 3) for s in smiles]


def write_esol(root: Path, smiles=SMILES) -> Path:
    """``<root>/molecules/moleculenet/esol/raw/delaney-processed.csv`` in MoleculeNet's format; returns root."""
    folder = Path(root) / "molecules" / "moleculenet" / "esol" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [ESOL_HEADER] + [f"m{i},0.0,1,100.0,0,0,0,0.0,{y},{s}"
                            for i, (s, y) in enumerate(zip(smiles, esol_targets(smiles), strict=True))]
    (folder / "delaney-processed.csv").write_text("\n".join(rows) + "\n")  # PyG drops the last line: keep "\n"
    return Path(root)


def write_zinc(root: Path, sizes=(6, 3, 3), seed: int = 0) -> tuple[Path, dict]:
    """``<root>/molecules/zinc-subset/raw/`` with ``{train,val,test}.pickle`` (PyG's raw ZINC: a list of dicts with
    ``atom_type``, ``bond_type`` (a dense adjacency of bond types) and ``logP_SA_cycle_normalized``) holding
    ``2 * size`` molecules each, and ``.index`` files picking the odd ones. Returns (root, {split: targets
    picked, in index order})."""
    g = torch.Generator().manual_seed(seed)
    folder = Path(root) / "molecules" / "zinc-subset" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    picked = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        mols = []
        for _ in range(2 * n):
            atoms = int(torch.randint(3, 7, (1,), generator=g))
            adj = torch.zeros(atoms, atoms, dtype=torch.long)
            for i in range(atoms - 1):  # a chain of single / double bonds
                adj[i, i + 1] = adj[i + 1, i] = int(torch.randint(1, 3, (1,), generator=g))
            mols.append({"atom_type": torch.randint(0, 28, (atoms,), generator=g), "bond_type": adj,
                         "logP_SA_cycle_normalized": torch.randn(1, generator=g)})
        with open(folder / f"{split}.pickle", "wb") as f:
            pickle.dump(mols, f)
        index = list(range(1, 2 * n, 2))
        (folder / f"{split}.index").write_text(",".join(map(str, index)) + "\r\n")  # as benchmarking-gnns: CRLF
        picked[split] = torch.cat([mols[i]["logP_SA_cycle_normalized"] for i in index])
    return Path(root), picked
