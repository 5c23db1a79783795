"""Implicit-feedback recommendation datasets (user-item interactions).

Every dataset becomes a :class:`RecDataset` with 0-based user / item ids and
train / val / test interaction lists. Duplicate (user, item) pairs are merged, and
a pair is kept in only one split (test first, then val, then train), so no pair
is in two splits. Split rules:

- gowalla (``recsys/gowalla/{train,test}.txt``, LightGCN format ``user item item ...``,
  0-based): the given train / test split; val is carved from train (see below).
- ml-1m-lightgcnpp (alias ml-1m; ``recsys/ml-1m-lightgcnpp/{train,valid,test}.txt``,
  LightGCN format): the LightGCN++ split, ``valid.txt`` is val.
- lastfm (``recsys/lastfm/{data1,test1}.txt``, tab-separated ``user item weight``,
  1-based, the weight is ignored): data1 is train, test1 is test; val carved from
  train. num_users / num_items are the largest ids over both files.
- ml-100k (``recsys/ml-100k/u.data``, ``user item rating timestamp``, 1-based):
  implicit feedback, so every rating (1-5 stars) counts as one interaction. Per
  user with n >= 3 interactions: test gets max(1, round(0.1 n)), val gets
  max(1, round(0.1 n)) of the others (at most n - 1 - test), train the rest;
  users with n < 3 keep everything in train.

Val carving (gowalla, lastfm): per user with n >= 2 train interactions,
max(1, round(val_frac * n)) of them (at most n - 1) move to val; users with
fewer than 2 keep all in train. Test is never touched. ``round`` is half-up.

Randomness: pairs are sorted by (user, item), then ``numpy.random.default_rng(seed)``
draws one key per pair and each user's pairs are ranked by key; the lowest ranks
are held out. So a split depends only on the data and the seed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qgnn.data.paths import find_raw
from qgnn.errors import ConfigError, QgnnError, lookup


@dataclass
class RecDataset:
    """User-item interactions; each split is a LongTensor [2, E] (row 0 users, row 1 items)."""

    name: str
    num_users: int
    num_items: int
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    task: str = field(default="rec", init=False)

    def __repr__(self) -> str:
        return (f"RecDataset(name={self.name!r}, num_users={self.num_users}, num_items={self.num_items}, "
                f"train={self.train.size(1)}, val={self.val.size(1)}, test={self.test.size(1)})")

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)

    def pos_lists(self, split: str = "train") -> list[torch.Tensor]:
        """Per user, the sorted item ids it interacted with in ``split`` (empty if none)."""
        ui = self.split(split)
        order = torch.argsort(ui[0] * self.num_items + ui[1])
        counts = torch.bincount(ui[0], minlength=self.num_users)
        return list(torch.split(ui[1, order], counts.tolist()))

    def train_pos_lists(self) -> list[torch.Tensor]:
        return self.pos_lists("train")

    def bipartite_edge_index(self, split: str = "train") -> torch.Tensor:
        """Undirected user-item graph for LightGCN: users 0..U-1, items U..U+I-1, both directions."""
        u, i = self.split(split)
        i = i + self.num_users
        return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


# ---- parsing ---------------------------------------------------------------

def read_lightgcn(path: Path) -> np.ndarray:
    """Pairs [E, 2] from lines ``user item item ...``; a user with no items adds no pair."""
    try:
        lines = [ln.split() for ln in path.read_text().splitlines()]
        lines = [t for t in lines if t]
        lens = np.fromiter((len(t) - 1 for t in lines), dtype=np.int64, count=len(lines))
        users = np.array([t[0] for t in lines], dtype=np.int64)
        items = np.array([x for t in lines for x in t[1:]], dtype=np.int64)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise QgnnError(f"cannot parse {path} as 'user item item ...' lines ({e}); "
                        f"replace it with the original file") from e
    return np.stack([np.repeat(users, lens), items], axis=1).reshape(-1, 2)


def read_pairs(path: Path, one_based: bool) -> np.ndarray:
    """Pairs [E, 2] from the first two whitespace-separated columns of each line."""
    try:
        a = np.loadtxt(path, usecols=(0, 1), dtype=np.int64, ndmin=2)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise QgnnError(f"cannot parse {path} as 'user item ...' columns ({e}); "
                        f"replace it with the original file") from e
    if one_based:
        if a.size and a.min() < 1:
            raise QgnnError(f"{path} should hold 1-based ids but contains {a.min()}")
        a = a - 1
    return a


# ---- splitting -------------------------------------------------------------

def _ranks(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rank of each pair among its user's pairs (0 = held out first)."""
    keys = rng.random(len(users))
    order = np.lexsort((keys, users))
    counts = np.bincount(users)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - starts[users[order]]
    return rank


def _n_hold(n: np.ndarray, frac: float, min_n: int) -> np.ndarray:
    k = np.maximum(1, np.floor(frac * n + 0.5)).astype(np.int64)
    return np.where((n >= min_n) & (frac > 0), np.minimum(k, n - 1), 0)


def carve_val(train: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Move max(1, round(frac*n)) of each user's n >= 2 train pairs to val; returns (train, val)."""
    if not 0 <= frac < 1:
        raise ConfigError(f"val_frac must be in [0, 1), got {frac}")
    if len(train) == 0:
        return train, train
    rank = _ranks(train[:, 0], np.random.default_rng(seed))
    k = _n_hold(np.bincount(train[:, 0]), frac, 2)
    is_val = rank < k[train[:, 0]]
    return train[~is_val], train[is_val]


def split_per_user(pairs: np.ndarray, val_frac: float, test_frac: float, seed: int):
    """(train, val, test) per user: see the module doc (ml-100k rule)."""
    if not (0 <= val_frac and 0 <= test_frac and val_frac + test_frac < 1):
        raise ConfigError(f"need 0 <= val_frac, test_frac and val_frac + test_frac < 1, "
                          f"got {val_frac}, {test_frac}")
    if len(pairs) == 0:
        return pairs, pairs, pairs
    u = pairs[:, 0]
    rank = _ranks(u, np.random.default_rng(seed))
    n = np.bincount(u)
    kt = _n_hold(n, test_frac, 3)
    kv = np.minimum(_n_hold(n, val_frac, 3), np.maximum(n - 1 - kt, 0))
    r, kt, kv = rank, kt[u], kv[u]
    return pairs[r >= kt + kv], pairs[(r >= kt) & (r < kt + kv)], pairs[r < kt]


def _finish(name: str, train, val, test, num_users=None, num_items=None) -> RecDataset:
    """Dedupe, keep each pair in one split (test > val > train), sort, make tensors."""
    parts = [p.reshape(-1, 2) for p in (train, val, test)]
    allp = np.concatenate(parts)
    nu = int(allp[:, 0].max()) + 1 if len(allp) else 0
    ni = int(allp[:, 1].max()) + 1 if len(allp) else 0
    nu, ni = max(nu, num_users or 0), max(ni, num_items or 0)
    codes = [_sorted_unique(p[:, 0] * ni + p[:, 1]) for p in parts]
    codes[1] = np.setdiff1d(codes[1], codes[2], assume_unique=True)
    codes[0] = np.setdiff1d(codes[0], np.union1d(codes[1], codes[2]), assume_unique=True)
    t = [torch.from_numpy(np.stack([c // ni, c % ni])) if ni else torch.zeros(2, 0, dtype=torch.long)
         for c in codes]
    return RecDataset(name=name, num_users=nu, num_items=ni, train=t[0], val=t[1], test=t[2])


def _sorted_unique(c: np.ndarray) -> np.ndarray:
    # Sort + neighbour compare: several times faster than np.unique on ~1M int64 codes.
    c = np.sort(c)
    return c[np.concatenate([[True], c[1:] != c[:-1]])] if len(c) else c


def _unique_pairs(a: np.ndarray) -> np.ndarray:
    """Sorted, deduplicated pairs: makes the seeded split independent of line order."""
    if len(a) == 0:
        return a.reshape(0, 2)
    ni = int(a[:, 1].max()) + 1
    c = _sorted_unique(a[:, 0] * ni + a[:, 1])
    return np.stack([c // ni, c % ni], axis=1)


# ---- datasets --------------------------------------------------------------

_GH = "https://raw.githubusercontent.com"
_LIGHTGCN = f"{_GH}/kuandeng/LightGCN/master/Data"  # the original LightGCN release


def _fetch(urls: list[str], extract_subdir: str | None = None) -> Callable[[Path], None]:
    def download(folder: Path) -> None:
        from torch_geometric.io import fs

        for url in urls:
            fs.cp(url, str(folder), extract=extract_subdir is not None)
        if extract_subdir:  # the archive unpacks into a sub-folder: move its files up
            sub = folder / extract_subdir
            for f in sub.iterdir():
                shutil.move(str(f), str(folder / f.name))
            sub.rmdir()
    return download


def _gowalla(folder: Path, seed: int, val_frac: float) -> RecDataset:
    train = _unique_pairs(read_lightgcn(folder / "train.txt"))
    test = read_lightgcn(folder / "test.txt")
    train, val = carve_val(train, val_frac, seed)
    return _finish("gowalla", train, val, test)


def _ml1m(folder: Path, seed: int, val_frac: float) -> RecDataset:
    del seed, val_frac  # the split is given by the files
    splits = (read_lightgcn(folder / f"{s}.txt") for s in ("train", "valid", "test"))
    return _finish("ml-1m-lightgcnpp", *splits)


def _lastfm(folder: Path, seed: int, val_frac: float) -> RecDataset:
    train = _unique_pairs(read_pairs(folder / "data1.txt", one_based=True))
    test = read_pairs(folder / "test1.txt", one_based=True)
    train, val = carve_val(train, val_frac, seed)
    return _finish("lastfm", train, val, test)


def _ml100k(folder: Path, seed: int, val_frac: float, test_frac: float = 0.1) -> RecDataset:
    pairs = _unique_pairs(read_pairs(folder / "u.data", one_based=True))
    return _finish("ml-100k", *split_per_user(pairs, val_frac, test_frac, seed))


# name -> (folder under recsys/, required files, reader, download or None)
_SOURCES = {
    "gowalla": ("gowalla", ["train.txt", "test.txt"], _gowalla,
                _fetch([f"{_LIGHTGCN}/gowalla/{f}" for f in ("train.txt", "test.txt")])),
    "lastfm": ("lastfm", ["data1.txt", "test1.txt"], _lastfm,
               _fetch([f"{_GH}/gusye1234/LightGCN-PyTorch/master/data/lastfm/{f}"
                       for f in ("data1.txt", "test1.txt")])),
    "ml-100k": ("ml-100k", ["u.data"], _ml100k,
                _fetch(["https://files.grouplens.org/datasets/movielens/ml-100k.zip"], "ml-100k")),
    # No stable download URL for the LightGCN++ split: its files must be put in place by hand.
    "ml-1m-lightgcnpp": ("ml-1m-lightgcnpp", ["train.txt", "valid.txt", "test.txt"], _ml1m, None),
}
NAMES = tuple(_SOURCES)
ALIASES = {"ml-1m": "ml-1m-lightgcnpp"}


def load_recsys(
    name: str, root: str | os.PathLike | None = None, seed: int = 0, val_frac: float = 0.1
) -> RecDataset:
    """Load gowalla, lastfm, ml-100k or ml-1m-lightgcnpp (split rules in the module doc).

    ``seed`` and ``val_frac`` set the validation carve (and the ml-100k split); they
    are ignored by ml-1m-lightgcnpp, whose files give the split.
    """
    key = lookup("recommendation dataset", name, {**{k: k for k in _SOURCES}, **ALIASES})
    sub, files, reader, download = _SOURCES[key]
    folder = find_raw(Path("recsys") / sub, files, root, download=download)
    return reader(folder, seed, val_frac)
