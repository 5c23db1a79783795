from __future__ import annotations

import numpy as np
import pytest
import torch

from qgnn.data import RecDataset, load_dataset
from qgnn.errors import ConfigError, DataNotFoundError, QgnnError
from qgnn.testing import fixtures
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)

shared_root = fixtures.shared_root  # the data root; skips a test where the real data is absent


def _pairs(t: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, t.t().tolist()))


def _codes(ds: RecDataset, t: torch.Tensor) -> np.ndarray:
    return (t[0] * ds.num_items + t[1]).numpy()


def _check_disjoint(ds: RecDataset):
    tr, va, te = (_codes(ds, t) for t in (ds.train, ds.val, ds.test))
    for a in (tr, va, te):
        assert len(np.unique(a)) == len(a)  # no duplicates within a split
    assert not np.intersect1d(tr, va).size and not np.intersect1d(tr, te).size
    assert not np.intersect1d(va, te).size
    for t in (ds.train, ds.val, ds.test):
        assert t.dtype == torch.long and t.shape[0] == 2
        assert int(t[0].min()) >= 0 and int(t[0].max()) < ds.num_users
        assert int(t[1].min()) >= 0 and int(t[1].max()) < ds.num_items


def _lightgcn_pairs(path) -> set[tuple[int, int]]:
    out = set()
    for line in path.read_text().splitlines():
        u, *items = map(int, line.split())
        out.update((u, i) for i in items)
    return out


def test_ml100k(shared_root):
    ds = load_dataset("ml-100k")
    assert ds.task == "rec" and (ds.num_users, ds.num_items) == (943, 1682)
    sizes = [ds.train.size(1), ds.val.size(1), ds.test.size(1)]
    assert sum(sizes) == 100000
    _check_disjoint(ds)
    n = torch.bincount(torch.cat([ds.train[0], ds.val[0], ds.test[0]]), minlength=943)
    hold = torch.clamp(torch.floor(0.1 * n + 0.5), min=1).long()  # documented rule (all n >= 20 here)
    assert torch.equal(torch.bincount(ds.test[0], minlength=943), hold)
    assert torch.equal(torch.bincount(ds.val[0], minlength=943), hold)
    again = load_dataset("ml-100k")
    assert all(torch.equal(getattr(ds, s), getattr(again, s)) for s in ("train", "val", "test"))
    other = load_dataset("ml-100k", seed=1)
    assert not torch.equal(ds.test, other.test)
    raw = np.loadtxt(shared_root / "recsys" / "ml-100k" / "u.data", dtype=np.int64)[:, :2] - 1
    assert _pairs(torch.cat([ds.train, ds.val, ds.test], 1)) == set(map(tuple, raw.tolist()))


def test_lastfm(shared_root):
    ds = load_dataset("lastfm")
    assert (ds.num_users, ds.num_items) == (1892, 4489)
    assert ds.train.size(1) + ds.val.size(1) == 42135 and ds.test.size(1) == 10533
    _check_disjoint(ds)
    folder = shared_root / "recsys" / "lastfm"
    raw_train = np.loadtxt(folder / "data1.txt", usecols=(0, 1), dtype=np.int64) - 1
    raw_test = np.loadtxt(folder / "test1.txt", usecols=(0, 1), dtype=np.int64) - 1
    assert _pairs(torch.cat([ds.train, ds.val], 1)) == set(map(tuple, raw_train.tolist()))  # val from train
    assert _pairs(ds.test) == set(map(tuple, raw_test.tolist()))  # test untouched


def test_gowalla(shared_root):
    ds = load_dataset("gowalla")
    assert (ds.num_users, ds.num_items) == (29858, 40981)
    assert ds.train.size(1) + ds.val.size(1) == 810128 and ds.test.size(1) == 217242
    assert 0.08 * 810128 < ds.val.size(1) < 0.12 * 810128
    _check_disjoint(ds)
    folder = shared_root / "recsys" / "gowalla"
    assert _pairs(ds.val) <= _lightgcn_pairs(folder / "train.txt")


def test_ml1m_lightgcnpp_uses_given_valid(shared_root):
    ds = load_dataset("ml-1m")
    assert ds.name == "ml-1m-lightgcnpp" and (ds.num_users, ds.num_items) == (6039, 3628)
    assert [ds.train.size(1), ds.val.size(1), ds.test.size(1)] == [590733, 80897, 164848]
    _check_disjoint(ds)


def _write_lightgcn(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        (folder / name).write_text("\n".join(lines) + "\n")


def test_val_carving_rule(tmp_path):
    many = " ".join(str(i) for i in range(20))
    _write_lightgcn(tmp_path / "recsys" / "gowalla", {
        "train.txt": ["0 5", "1 3 4", "2 " + many, "3", "4 7 7 8"],  # user 3: no items; user 4: a duplicate
        "test.txt": ["0 6", "1 5", "2 21", "3 1", "4 9"],
    })
    ds = load_dataset("gowalla", root=tmp_path)
    assert (ds.num_users, ds.num_items) == (5, 22)
    val_per_user = torch.bincount(ds.val[0], minlength=5).tolist()
    assert val_per_user == [0, 1, 2, 0, 1]  # n=1 keeps all; n=2 -> 1; n=20 -> round(2.0) = 2
    assert torch.bincount(ds.train[0], minlength=5).tolist() == [1, 1, 18, 0, 1]
    assert _pairs(ds.test) == {(0, 6), (1, 5), (2, 21), (3, 1), (4, 9)}
    assert load_dataset("gowalla", root=tmp_path, val_frac=0.0).val.size(1) == 0
    with pytest.raises(ConfigError):
        load_dataset("gowalla", root=tmp_path, val_frac=1.0)
    pos = ds.train_pos_lists()
    assert len(pos) == 5 and pos[3].numel() == 0 and pos[0].tolist() == [5]
    ei = ds.bipartite_edge_index()
    assert ei.shape == (2, 2 * ds.train.size(1)) and int(ei.max()) < ds.num_nodes


def test_pairs_in_two_files_stay_in_one_split(tmp_path):
    _write_lightgcn(tmp_path / "recsys" / "ml-1m-lightgcnpp", {
        "train.txt": ["0 1 2 3"], "valid.txt": ["0 2"], "test.txt": ["0 3"],
    })
    ds = load_dataset("ml-1m-lightgcnpp", root=tmp_path)
    assert _pairs(ds.train) == {(0, 1)} and _pairs(ds.val) == {(0, 2)} and _pairs(ds.test) == {(0, 3)}


def test_missing_and_corrupt_recsys_files(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("lastfm", root=tmp_path)
    assert "data1.txt" in str(e.value) and str(tmp_path / "recsys" / "lastfm") in str(e.value)
    folder = tmp_path / "recsys" / "lastfm"
    folder.mkdir(parents=True)
    (folder / "data1.txt").write_text("1\t2\t3\n2\tbad\t1\n")
    (folder / "test1.txt").write_text("1\t3\t1\n")
    with pytest.raises(QgnnError, match="data1.txt"):
        load_dataset("lastfm", root=tmp_path)
