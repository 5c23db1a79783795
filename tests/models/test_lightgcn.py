"""LightGCN: the fast CSR propagation equals PyG's LGConv layers, forward and backward."""

import pytest
import torch

from qgnn.data.synthetic import random_rec_dataset
from qgnn.errors import ConfigError
from qgnn.models import build_model, model_names
from qgnn.models.lightgcn import LightGCN, NormAdj


def _model(seed=0):
    ds = random_rec_dataset(num_users=30, num_items=40, seed=seed)
    torch.manual_seed(seed)
    return LightGCN(ds.num_users, ds.num_items, hidden=8, num_layers=3).set_graph(ds.bipartite_edge_index()), ds


def test_fast_propagation_matches_lgconv_forward_and_backward():
    model, _ = _model()
    x = model.embedding.weight.detach().clone().requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    fast, ref = model.propagate(x), model.propagate_reference(y)
    assert torch.allclose(fast, ref, atol=1e-6)
    g = torch.randn_like(fast)
    (fast * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_norm_adj_is_symmetric_normalised_and_rejects_directed_graphs():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    a = NormAdj(ei, 4).dense()
    assert torch.allclose(a, a.T)
    assert a[0, 1] == pytest.approx(1 / (1 * 2) ** 0.5) and a[3].abs().sum() == 0  # node 3 isolated
    s = NormAdj(ei, 3, self_loops=True).dense()
    assert s[0, 0] == pytest.approx(0.5) and s[1, 1] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError):
        NormAdj(torch.tensor([[0], [1]]), 2)


def test_registry_builds_lightgcn_and_scores_are_dot_products():
    assert "lightgcn" in model_names("rec")
    m = build_model("lightgcn", "rec", 5, 7, hidden=4, num_layers=2)
    assert (m.num_users, m.num_items, m.hidden) == (5, 7, 4)
    with pytest.raises(ConfigError):
        m()  # no graph yet
    with pytest.raises(ConfigError):
        LightGCN(5, 7, dropout=0.5)


def test_row_restricted_training_forward_matches_full_propagation():
    model, _ = _model(1)
    idx = torch.tensor([0, 3, 3, 31, 45, 69])  # duplicates and users and items
    x = model.embedding.weight
    ego_rows, rows = model.train_forward(idx)
    full = model.propagate_reference(x)[idx]
    assert torch.allclose(rows, full, atol=1e-6)
    assert torch.equal(ego_rows, x[idx])
    g, h = torch.randn_like(rows), torch.randn_like(rows)
    ga = torch.autograd.grad((rows * g).sum() + (ego_rows * h).sum(), x)[0]
    gb = torch.autograd.grad((model.propagate_reference(x)[idx] * g).sum() + (x[idx] * h).sum(), x)[0]
    assert torch.allclose(ga, gb, atol=1e-6)
    # one of the two outputs alone (the other gets no gradient)
    ego_rows, rows = model.train_forward(idx)
    ga = torch.autograd.grad(rows.sum(), x)[0]
    gb = torch.autograd.grad(model.propagate_reference(x)[idx].sum(), x)[0]
    assert torch.allclose(ga, gb, atol=1e-6)


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_layer_mean_rows_at_few_layers_and_isolated_nodes(layers):
    from qgnn.models.lightgcn import layer_mean, layer_mean_rows

    adj = NormAdj(torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), 5)  # nodes 3 and 4 isolated
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([4, 1, 3, 1])
    mean, ego = layer_mean_rows(x, adj, layers, idx)
    assert torch.allclose(mean, layer_mean(x, adj, layers)[idx])
    assert torch.equal(mean[0], x[4].detach() / (layers + 1))  # an isolated node keeps its own share only
    assert torch.autograd.gradcheck(lambda t: layer_mean_rows(t, adj, layers, idx), (x,))


def test_layer_rows_separate_gives_each_layer():
    from qgnn.models.lightgcn import layer_rows

    model, _ = _model(2)
    x, idx = model.embedding.weight.detach(), torch.tensor([1, 40, 7])
    dense = model.adj.dense()
    layers = layer_rows(x, model.adj, 3, idx, separate=True)
    h = x
    for k in range(4):
        assert torch.allclose(layers[k], h[idx], atol=1e-6)
        h = dense @ h


@pytest.mark.parametrize("rows", [[4, 1, 3], [0], [], [6, 5], [2, 0, 1]])
def test_product_of_a_row_sparse_table_matches_the_full_product(rows):
    # nodes 3, 4 isolated, and the last rows (5, 6) too: their bags start past every kept nonzero
    adj = NormAdj(torch.tensor([[0, 1, 1, 2, 0, 2], [1, 0, 2, 1, 2, 0]]), 7)
    rows = torch.tensor(rows, dtype=torch.long)
    values = torch.randn(len(rows), 3, dtype=torch.float64)
    x = torch.zeros(7, 3, dtype=torch.float64)
    x[rows] = values
    assert torch.allclose(adj.apply_from_rows(values, rows), adj.apply_raw(x))
    assert torch.allclose(adj.apply_from_rows(values, rows), adj.dense().double() @ x)
    empty = NormAdj(torch.zeros(2, 0, dtype=torch.long), 3)
    assert torch.equal(empty.apply_from_rows(torch.ones(1, 2), torch.tensor([1])), torch.zeros(3, 2))

