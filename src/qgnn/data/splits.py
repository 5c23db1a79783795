"""Stratified k-fold cross-validation splits for graph classification.

Rule (deterministic for a seed): for each class in ascending label order, shuffle
that class's indices with ``numpy.random.default_rng(seed)`` and deal them
round-robin into k folds, continuing the deal where the previous class stopped
so fold sizes differ by at most one. Split i of :func:`cv_splits` tests on fold i,
validates on fold (i + 1) % k and trains on the other k - 2 folds, so the
validation set is stratified too and never overlaps the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qgnn.errors import ConfigError


@dataclass
class Split:
    """Disjoint index arrays (LongTensor, sorted) that together cover the dataset."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def _labels_np(labels) -> np.ndarray:
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return y.reshape(-1)


def stratified_kfold(labels, k: int = 10, seed: int = 0) -> list[torch.Tensor]:
    """k disjoint, sorted LongTensor folds covering ``range(len(labels))``, stratified by label."""
    y = _labels_np(labels)
    if k < 2 or k > len(y):
        raise ConfigError(f"k-fold needs 2 <= k <= number of samples ({len(y)}), got k={k}")
    rng = np.random.default_rng(seed)
    folds: list[list[np.ndarray]] = [[] for _ in range(k)]
    start = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        for j in range(k):
            folds[(start + j) % k].append(idx[j::k])
        start = (start + len(idx)) % k
    return [torch.from_numpy(np.sort(np.concatenate(f))).long() for f in folds]


def cv_splits(labels, k: int = 10, seed: int = 0) -> list[Split]:
    """k train/val/test splits: test = fold i, val = fold (i+1) % k, train = the rest."""
    if k < 3:
        raise ConfigError(f"cross-validation with a validation fold needs k >= 3, got k={k}")
    folds = stratified_kfold(labels, k, seed)
    out = []
    for i in range(k):
        v = (i + 1) % k
        train = torch.cat([f for j, f in enumerate(folds) if j not in (i, v)]).sort().values
        out.append(Split(train=train, val=folds[v], test=folds[i]))
    return out
