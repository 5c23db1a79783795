import pytest
import torch

from qgnn.errors import UnknownNameError
from qgnn.models import build_model, default_hparams, model_names
from qgnn.testing import assert_close, assert_permutation_equivariant, graph, permute_graph


@pytest.mark.parametrize("name", model_names("node"))
def test_node_models_shape_and_permutation_equivariance(name):
    torch.manual_seed(0)
    x, ei = graph(30, 80, undirected=True)
    model = build_model(name, "node", 8, 3).eval()
    assert model(x, ei).shape == (30, 3)

    def fresh_copy(x, ei):  # a fresh model per graph: GCN's cached adjacency must not leak
        copy = build_model(name, "node", 8, 3).eval()
        copy.load_state_dict(model.state_dict())
        return copy(x, ei)

    assert_permutation_equivariant(fresh_copy, x, ei, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", model_names("graph"))
def test_graph_models_invariant_to_node_order_and_handle_isolated_nodes(name):
    torch.manual_seed(0)
    x, ei = graph(20, 10, undirected=True)  # sparse: several isolated nodes
    batch = torch.tensor([0] * 12 + [1] * 8)
    ei = ei[:, (batch[ei[0]] == batch[ei[1]])]  # keep edges inside a graph
    model = build_model(name, "graph", 8, 2).eval()
    out = model(x, ei, batch)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    perm = torch.cat([torch.randperm(12), 12 + torch.randperm(8)])  # nodes move within their own graph
    assert_close(model(*permute_graph(x, ei, perm), batch), out, rtol=1e-4, atol=1e-5)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid models: gat, gcn, gin, graphconv, sage"):
        build_model("resnet", "node", 4, 2)


def test_names_are_case_insensitive_and_overrides_apply():
    m = build_model("GCN", "node", 4, 2, hidden=7)
    assert m.convs[0].out_channels == 7
    assert default_hparams("Gin", "graph")[0]["num_layers"] == 5


def test_readout_norm_bounds_sum_pooled_logits_of_large_graphs():
    from torch_geometric.data import Batch, Data

    from qgnn.models import GINGraph

    torch.manual_seed(0)
    graphs = [Data(x=torch.ones(n, 1), edge_index=torch.randint(0, n, (2, 4 * n))) for n in (50, 2000, 3000)]
    b = Batch.from_data_list(graphs)
    plain, normed = GINGraph(1, 16, 2, num_layers=2), GINGraph(1, 16, 2, num_layers=2, readout_norm=True)
    for m in (plain, normed):
        m.train()
    big = plain(b.x, b.edge_index, b.batch).abs().max()
    small = normed(b.x, b.edge_index, b.batch).abs().max()
    assert small < big / 10  # the node count (up to 3000) no longer scales the logits
    one = Batch.from_data_list(graphs[:1])
    assert torch.isfinite(normed(one.x, one.edge_index, one.batch)).all()  # a batch of one graph still runs
