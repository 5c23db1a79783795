from __future__ import annotations

import numpy as np
import pytest
import torch

from qgnn.data import Split, cv_splits, stratified_kfold
from qgnn.errors import ConfigError
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)

_PERM = torch.randperm(65, generator=torch.Generator().manual_seed(1))
LABELS = torch.tensor([0] * 37 + [1] * 23 + [2] * 5)[_PERM]


def test_folds_are_stratified_disjoint_and_cover():
    folds = stratified_kfold(LABELS, k=10, seed=0)
    assert len(folds) == 10
    assert torch.equal(torch.cat(folds).sort().values, torch.arange(len(LABELS)))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in range(3):
        ideal = int((LABELS == c).sum()) / 10
        for f in folds:
            assert abs(int((LABELS[f] == c).sum()) - ideal) < 1


def test_folds_follow_the_documented_rule():
    # One class: fold j is the j-th round-robin share of default_rng(seed).permutation.
    perm = np.random.default_rng(7).permutation(23)
    folds = stratified_kfold(torch.zeros(23, dtype=torch.long), k=5, seed=7)
    for j in range(5):
        assert folds[j].tolist() == sorted(perm[j::5].tolist())


def test_folds_deterministic_and_seed_dependent():
    a, b = stratified_kfold(LABELS, 10, 0), stratified_kfold(LABELS, 10, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = stratified_kfold(LABELS, 10, 1)
    assert any(not torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_cv_splits_rotate_test_and_val():
    folds = stratified_kfold(LABELS, 5, 3)
    splits = cv_splits(LABELS, 5, 3)
    assert len(splits) == 5 and all(isinstance(s, Split) for s in splits)
    for i, s in enumerate(splits):
        assert torch.equal(s.test, folds[i]) and torch.equal(s.val, folds[(i + 1) % 5])
        assert s.train.dtype == torch.long
        allidx = torch.cat([s.train, s.val, s.test])
        assert torch.equal(allidx.sort().values, torch.arange(len(LABELS)))  # disjoint + covering
    # Every sample is tested exactly once over the k splits.
    assert torch.equal(torch.cat([s.test for s in splits]).sort().values, torch.arange(len(LABELS)))


def test_bad_k():
    with pytest.raises(ConfigError):
        stratified_kfold(LABELS, k=1)
    with pytest.raises(ConfigError):
        stratified_kfold(LABELS[:3], k=4)
    with pytest.raises(ConfigError):
        cv_splits(LABELS, k=2)
