"""qgnn.testing: the graph fixtures, data markers and parity helpers behave as documented."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch_geometric.utils import degree

from qgnn.testing import (
    assert_close,
    assert_permutation_equivariant,
    batch_of_graphs,
    edgeless_graph,
    graph,
    has_data,
    hub_graph,
    isolated_graph,
    needs_data,
    permute_graph,
    require_data,
    use_test_data,
)


def test_importing_the_kit_does_not_import_pytest():
    code = "import sys, qgnn.testing, qgnn.testing.layers; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_graph_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x, ei = graph(20, 50, 4, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    x2, ei2 = graph(20, 50, 4, seed=3)
    assert torch.equal(x, x2) and torch.equal(ei, ei2)
    assert not torch.equal(graph(20, 50, 4, seed=4)[0], x)
    assert x.shape == (20, 4) and ei.shape == (2, 50) and int(ei.max()) < 20


def test_graph_options():
    x, ei = graph(10, 40, features="rand", undirected=True)
    assert (x >= 0).all() and ei.shape == (2, 80) and torch.equal(ei[:, 40:], ei[:, :40].flip(0))
    _, ei = graph(10, 200, self_loops=False)
    assert (ei[0] != ei[1]).all() and ei.size(1) < 200
    with pytest.raises(ValueError, match="features"):
        graph(features="ones")


def test_isolated_hub_and_empty_graphs():
    x, ei = isolated_graph(n=12, isolated=6)
    deg = degree(ei.flatten(), 12)
    assert (deg[6:] == 0).all() and (deg[:6] > 0).any()
    x, ei = hub_graph(n=30)
    indeg = degree(ei[1], 30)
    assert x.shape == (30, 8) and indeg[0] >= 29 and indeg[0] > 3 * indeg[1:].max()
    for n in (7, 0):
        x, ei = edgeless_graph(n)
        assert x.shape == (n, 8) and ei.shape == (2, 0) and ei.dtype == torch.long
        # the same draw as before it reused graph(): N(0, 1) features from its own generator
        assert torch.equal(x, torch.randn(n, 8, generator=torch.Generator().manual_seed(0)))


def test_batch_of_graphs():
    b = batch_of_graphs(sizes=(5, 1, 12))
    assert b.num_graphs == 3 and b.num_nodes == 18 and torch.equal(torch.bincount(b.batch), torch.tensor([5, 1, 12]))
    assert (b.batch[b.edge_index[0]] == b.batch[b.edge_index[1]]).all()  # no edge between two graphs


def test_assert_close_states_its_tolerance():
    a = torch.tensor([1.0, 2.0])
    assert_close(a + 1e-3, a, rtol=0, atol=2e-3)
    with pytest.raises(AssertionError, match="mine"):
        assert_close(a + 1e-2, a, rtol=0, atol=2e-3, msg="mine")
    with pytest.raises(TypeError):
        assert_close(a, a)  # no silent default tolerance
    assert_close(torch.tensor([float("nan")]), torch.tensor([float("nan")]), rtol=0, atol=0)


def test_permutation_equivariance_check_passes_and_fails():
    x, ei = graph(15, 40)

    def sum_aggr(x, ei):
        return torch.zeros_like(x).index_add_(0, ei[1], x[ei[0]])

    perm = assert_permutation_equivariant(sum_aggr, x, ei, rtol=1e-6, atol=1e-6)
    xp, eip = permute_graph(x, ei, perm)
    assert torch.equal(xp, x[perm]) and torch.equal(perm[eip], ei)

    def position_dependent(x, ei):  # adds the node index: not equivariant
        return sum_aggr(x, ei) + torch.arange(x.size(0)).unsqueeze(1)

    with pytest.raises(AssertionError, match="permuted"):
        assert_permutation_equivariant(position_dependent, x, ei)


def test_has_data_and_needs_data(tmp_path):
    assert has_data("synthetic-node", root=tmp_path)  # generated: nothing to read
    assert not has_data("cora", root=tmp_path)
    raw = tmp_path / "planetoid" / "Cora" / "raw"
    raw.mkdir(parents=True)
    for s in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index"):
        (raw / f"ind.cora.{s}").write_bytes(b"")
    assert has_data("Cora", root=tmp_path) and not has_data("cora", "mutag", root=tmp_path)
    assert needs_data(root=tmp_path).args == (False,)
    mark = needs_data("MUTAG", root=tmp_path)
    assert mark.args == (True,) and "MUTAG" in mark.kwargs["reason"]
    assert require_data(root=tmp_path) == tmp_path
    with pytest.raises(pytest.skip.Exception):
        require_data("mutag", root=tmp_path)


def test_use_test_data_sets_an_offline_environment(monkeypatch, tmp_path_factory, tmp_path):
    import os

    assert use_test_data(monkeypatch, tmp_path_factory, root=tmp_path) == tmp_path
    assert os.environ["QGNN_OFFLINE"] == "1" and os.environ["QGNN_DATA"] == str(tmp_path)
    assert os.environ["QGNN_CACHE"].startswith(str(tmp_path_factory.getbasetemp()))
