from __future__ import annotations

import pytest
import qgnn_data_testutil as util
import torch
from torch_geometric.utils import degree

from qgnn.data import GraphDataset, load_dataset
from qgnn.errors import ConfigError, DataNotFoundError, QgnnError
from qgnn.testing import fixtures
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)

shared_root = fixtures.shared_root  # the data root; skips a test where the real data is absent


def test_mutag(shared_root):
    ds = load_dataset("MUTAG")
    assert isinstance(ds, GraphDataset) and ds.task == "graph" and ds.name == "mutag"
    assert len(ds) == len(ds.dataset) == 188 and ds.num_classes == 2
    assert torch.bincount(ds.labels).tolist() == [63, 125]
    assert ds.num_features == 7 and ds.node_features == "labels"
    g = ds.dataset[0]
    assert g.x.shape == (17, 7) and torch.equal(g.x.sum(1), torch.ones(17))  # one-hot atom types
    sub = ds.dataset[torch.tensor([0, 5, 7])]
    assert len(sub) == 3 and [int(d.y) for d in sub] == ds.labels[[0, 5, 7]].tolist()


def test_proteins_uses_node_labels_only(shared_root):
    ds = load_dataset("proteins")
    assert len(ds) == 1113 and ds.num_classes == 2 and ds.num_features == 3
    assert torch.bincount(ds.labels).tolist() == [663, 450]
    assert load_dataset("proteins", use_node_attr=True).num_features == 4


@pytest.mark.parametrize("name, graphs, classes", [
    ("ENZYMES", 600, 6), ("NCI1", 4110, 2), ("PTC_MR", 344, 2), ("IMDB-MULTI", 1500, 3),
])
def test_tu_counts(shared_root, name, graphs, classes):
    ds = load_dataset(name)
    assert len(ds) == graphs and ds.num_classes == classes and len(ds.labels) == graphs
    assert ds.dataset[0].x.size(1) == ds.num_features


def test_imdb_binary_gets_one_hot_degree(shared_root):
    ds = load_dataset("imdb-binary")
    assert len(ds) == 1000 and ds.node_features == "degree"
    max_deg = max(int(degree(g.edge_index[0], g.num_nodes).max()) for g in ds.dataset)
    assert ds.num_features == max_deg + 1 == 136
    for g in ds.dataset[torch.arange(20)]:
        assert torch.equal(g.x.argmax(1), degree(g.edge_index[0], g.num_nodes).long())
        assert torch.equal(g.x.sum(1), torch.ones(g.num_nodes))


def test_explicit_feature_modes(shared_root):
    const = load_dataset("mutag", node_features="constant")
    assert const.num_features == 1 and const.node_features == "constant"
    assert all(torch.equal(g.x, torch.ones(g.num_nodes, 1)) for g in const.dataset[torch.arange(10)])
    deg = load_dataset("mutag", node_features="degree")
    g = deg.dataset[3]
    assert deg.node_features == "degree"
    assert torch.equal(g.x.argmax(1), degree(g.edge_index[0], g.num_nodes).long())
    with pytest.raises(ConfigError, match="node_features"):
        load_dataset("mutag", node_features="onehot")


@pytest.mark.slow
def test_reddit_binary_gets_constant_features(shared_root):
    ds = load_dataset("reddit-binary")
    assert len(ds) == 2000 and ds.node_features == "constant" and ds.num_features == 1
    assert torch.bincount(ds.labels).tolist() == [1000, 1000]


def test_folds_on_proteins(shared_root):
    ds = load_dataset("proteins")
    splits = ds.folds(k=10, seed=0)
    n = len(ds)
    assert len(splits) == 10
    for s in splits:
        assert torch.equal(torch.cat([s.train, s.val, s.test]).sort().values, torch.arange(n))
        for part in (s.test, s.val):
            for c in range(2):
                ideal = int((ds.labels == c).sum()) / 10
                assert abs(int((ds.labels[part] == c).sum()) - ideal) < 1
    assert torch.equal(torch.cat([s.test for s in splits]).sort().values, torch.arange(n))
    again = ds.folds(k=10, seed=0)
    for a, b in zip(splits, again, strict=True):
        assert torch.equal(a.test, b.test) and torch.equal(a.val, b.val) and torch.equal(a.train, b.train)
    other = ds.folds(k=10, seed=1)
    assert any(not torch.equal(a.test, b.test) for a, b in zip(splits, other, strict=True))


def test_missing_tu_files(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("mutag", root=tmp_path)
    msg = str(e.value)
    assert "MUTAG_A.txt" in msg and "MUTAG_graph_labels.txt" in msg
    assert str(tmp_path / "tu" / "MUTAG" / "raw") in msg


def test_corrupt_tu_file_names_the_file(tmp_path):
    root = util.copy_raw(tmp_path, "tu/MUTAG/raw")
    bad = root / "tu" / "MUTAG" / "raw" / "MUTAG_A.txt"
    bad.write_text(bad.read_text() + "1, oops\n")
    with pytest.raises(QgnnError) as e:
        load_dataset("mutag", root=root)
    assert str(bad) in str(e.value) and not isinstance(e.value, DataNotFoundError)
