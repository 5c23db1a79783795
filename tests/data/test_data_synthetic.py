from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv
from torch_geometric.utils import degree, is_undirected

from qgnn.data import (
    empty_graph,
    random_graph,
    random_graph_dataset,
    random_node_dataset,
    random_rec_dataset,
)
from qgnn.errors import ConfigError
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)


def test_node_dataset_shapes_and_masks():
    ds = random_node_dataset(num_nodes=100, num_features=16, num_classes=3, seed=0)
    d = ds.data
    assert ds.task == "node" and (ds.num_features, ds.num_classes) == (16, 3)
    assert d.x.shape == (100, 16) and d.x.dtype == torch.float32 and d.y.max() == 2
    assert [int(m.sum()) for m in (d.train_mask, d.val_mask, d.test_mask)] == [60, 20, 20]
    assert torch.equal(d.train_mask.long() + d.val_mask.long() + d.test_mask.long(), torch.ones(100).long())
    assert is_undirected(d.edge_index) and not (d.edge_index[0] == d.edge_index[1]).any()
    assert 2.5 < d.num_edges / 100 < 4.5  # about avg_degree
    same = (d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean()
    assert same > 0.7  # homophilous, like an SBM with dense blocks


def test_node_dataset_deterministic():
    a, b, c = (random_node_dataset(seed=s).data for s in (0, 0, 1))
    for k in ("x", "edge_index", "y", "train_mask"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a.x, c.x)


def test_gcn_learns_node_dataset():
    torch.manual_seed(0)
    d = random_node_dataset(seed=0).data
    c1, c2 = GCNConv(16, 16), GCNConv(16, 3)
    opt = torch.optim.Adam([*c1.parameters(), *c2.parameters()], lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        out = c2(F.relu(c1(d.x, d.edge_index)), d.edge_index)
        F.cross_entropy(out[d.train_mask], d.y[d.train_mask]).backward()
        opt.step()
    acc = (out.argmax(1)[d.test_mask] == d.y[d.test_mask]).float().mean()
    assert acc > 0.8


def test_graph_dataset():
    ds = random_graph_dataset(num_graphs=60, seed=0)
    assert ds.task == "graph" and len(ds) == 60 and ds.num_classes == 2
    assert torch.bincount(ds.labels).tolist() == [30, 30]
    assert all(int(g.y) == int(y) for g, y in zip(ds.dataset, ds.labels, strict=True))
    dens = [[], []]
    for g in ds.dataset:
        assert g.x.shape == (g.num_nodes, ds.num_features) and is_undirected(g.edge_index)
        dens[int(g.y)].append(g.num_edges / g.num_nodes)
    assert max(dens[0]) < min(dens[1])  # cycles vs. dense graphs are separable
    splits = ds.folds(k=5, seed=0)
    assert len(splits) == 5 and len(ds.dataset[splits[0].test]) == 12
    again = random_graph_dataset(seed=0)
    assert torch.equal(ds.labels, again.labels)
    pairs = zip(ds.dataset, again.dataset, strict=True)
    assert all(torch.equal(a.edge_index, b.edge_index) for a, b in pairs)
    assert not torch.equal(ds.labels, random_graph_dataset(seed=1).labels)


def test_rec_dataset():
    ds = random_rec_dataset(num_users=50, num_items=80, seed=0)
    assert ds.task == "rec" and (ds.num_users, ds.num_items) == (50, 80)
    assert ds.train.size(1) + ds.val.size(1) + ds.test.size(1) == 500
    allp = torch.cat([ds.train, ds.val, ds.test], 1)
    assert len(set(map(tuple, allp.t().tolist()))) == 500  # disjoint splits
    assert torch.equal(torch.bincount(ds.test[0], minlength=50), torch.ones(50).long())
    again = random_rec_dataset(seed=0)
    assert torch.equal(ds.train, again.train) and torch.equal(ds.test, again.test)
    assert not torch.equal(ds.train, random_rec_dataset(seed=1).train)


def test_random_graph():
    g = random_graph(num_nodes=12, num_edges=30, num_features=5, seed=3)
    assert g.x.shape == (12, 5) and g.edge_index.shape == (2, 30)
    assert not (g.edge_index[0] == g.edge_index[1]).any()
    assert torch.equal(g.edge_index, random_graph(12, 30, 5, seed=3).edge_index)
    assert not torch.equal(g.edge_index, random_graph(12, 30, 5, seed=4).edge_index)
    iso = random_graph(num_nodes=12, num_edges=30, num_features=5, seed=3, num_isolated=4)
    deg = degree(iso.edge_index.flatten(), iso.num_nodes)
    assert iso.num_nodes == 12 and (deg == 0).sum() >= 4 and (deg[-4:] == 0).all()
    und = random_graph(12, 10, 5, seed=0, undirected=True)
    assert is_undirected(und.edge_index) and und.edge_index.size(1) <= 20
    with pytest.raises(ConfigError):
        random_graph(3, 7, 2)


def test_empty_graph():
    g = empty_graph(6)
    assert g.num_nodes == 0 and g.x.shape == (0, 6) and g.edge_index.shape == (2, 0)
    h = empty_graph(6, num_nodes=3)
    assert h.num_nodes == 3 and h.edge_index.dtype == torch.long and h.edge_index.numel() == 0


def test_task_level_options_match_real_loaders():
    # The runner passes the same options to synthetic and real datasets of a task.
    x = random_node_dataset(normalize_features=True).data.x
    assert (x >= 0).all() and torch.allclose(x.sum(1), torch.ones(x.size(0)))
    const = random_graph_dataset(num_graphs=10, node_features="constant")
    assert const.num_features == 1 and const.node_features == "constant"
    assert all(torch.equal(g.x, torch.ones(g.num_nodes, 1)) for g in const.dataset)
    assert random_graph_dataset(num_graphs=10, node_features="auto").node_features == "degree"
    with pytest.raises(ConfigError):
        random_graph_dataset(node_features="labels")
    assert random_rec_dataset(val_frac=0.0).val.size(1) == 0
