from __future__ import annotations

import pytest
import qgnn_data_testutil as util
import torch

from qgnn.data import NodeDataset, load_dataset
from qgnn.errors import DataNotFoundError, QgnnError
from qgnn.testing import fixtures
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)

shared_root = fixtures.shared_root  # the data root; skips a test where the real data is absent


def _mask_sizes(d):
    return [int(m.sum()) for m in (d.train_mask, d.val_mask, d.test_mask)]


def test_cora_public_split(shared_root):
    ds = load_dataset("cora")
    d = ds.data
    assert isinstance(ds, NodeDataset) and ds.task == "node" and ds.name == "cora"
    assert (d.num_nodes, d.num_edges, ds.num_features, ds.num_classes) == (2708, 10556, 1433, 7)
    assert _mask_sizes(d) == [140, 500, 1000]
    assert not ((d.train_mask & d.val_mask) | (d.train_mask & d.test_mask) | (d.val_mask & d.test_mask)).any()
    assert d.is_undirected() and not d.has_self_loops()
    assert torch.bincount(d.y[d.train_mask]).tolist() == [20] * 7
    assert set(d.x.unique().tolist()) == {0.0, 1.0}  # raw bag-of-words, not normalised by default


@pytest.mark.parametrize("name", ["CORA", "Cora", "cOrA"])
def test_names_are_case_insensitive(shared_root, name):
    ds = load_dataset(name)
    assert ds.name == "cora" and ds.data.num_nodes == 2708


def test_citeseer(shared_root):
    ds = load_dataset("CiteSeer")
    d = ds.data
    assert (d.num_nodes, d.num_edges, ds.num_features, ds.num_classes) == (3327, 9104, 3703, 6)
    assert _mask_sizes(d) == [120, 500, 1000]


def test_normalize_features(shared_root):
    x = load_dataset("cora", normalize_features=True).data.x
    raw = load_dataset("cora").data.x
    sums = x.sum(1)
    assert torch.allclose(sums[sums > 0], torch.ones(int((sums > 0).sum())))
    assert torch.equal(x > 0, raw > 0) and not torch.equal(x, raw)


def test_pubmed_offline_names_the_missing_file(shared_root):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("pubmed")
    msg = str(e.value)
    assert "ind.pubmed.allx" in msg
    assert str(shared_root / "planetoid" / "PubMed" / "raw") in msg
    assert "PubMed_INCOMPLETE" in msg and "download" in msg


def test_missing_root_names_files_and_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("cora", root=root)
    msg = str(e.value)
    for f in ("ind.cora.x", "ind.cora.allx", "ind.cora.graph", "ind.cora.test.index"):
        assert f in msg
    assert str(root / "planetoid" / "Cora" / "raw") in msg and "QGNN_OFFLINE" in msg
    assert list(root.iterdir()) == []


def test_env_root_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("QGNN_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "planetoid" / "Cora" / "raw")):
        load_dataset("cora")


def test_corrupt_raw_file_names_the_file(tmp_path):
    root = util.copy_raw(tmp_path, "planetoid/Cora/raw")
    bad = root / "planetoid" / "Cora" / "raw" / "ind.cora.graph"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(QgnnError) as e:
        load_dataset("cora", root=root)
    assert str(bad) in str(e.value)
    assert type(e.value) is QgnnError  # not a bare UnpicklingError from inside PyG


def test_processed_files_go_to_cache_not_root(monkeypatch, tmp_path):
    fresh_cache = util.fresh_cache(monkeypatch, tmp_path)
    root = util.copy_raw(tmp_path, "planetoid/Cora/raw")
    for p in [*root.rglob("*"), root]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = util.snapshot(root)
    try:
        ds = load_dataset("cora", root=root)
        assert ds.data.num_nodes == 2708
        assert util.snapshot(root) == before
        processed = list((fresh_cache / "processed" / "planetoid" / "Cora").rglob("data.pt"))
        assert len(processed) == 1
        stamp = processed[0].stat().st_mtime_ns
        load_dataset("cora", root=root)  # second load reuses the processed file
        assert processed[0].stat().st_mtime_ns == stamp
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_corrupt_processed_file_is_rebuilt(shared_root, monkeypatch, tmp_path):
    fresh_cache = util.fresh_cache(monkeypatch, tmp_path)
    ref = load_dataset("cora").data
    (pt,) = (fresh_cache / "processed" / "planetoid" / "Cora").rglob("data.pt")
    pt.write_bytes(pt.read_bytes()[:100])
    again = load_dataset("cora").data
    assert torch.equal(again.x, ref.x) and torch.equal(again.edge_index, ref.edge_index)
