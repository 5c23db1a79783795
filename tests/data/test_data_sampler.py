"""qgnn's torch neighbour sampler (qgnn.data.sampler): PyG's SamplerOutput conventions through PyG's NodeLoader,
fanout bounds, uniform draws, the full-fanout batch, determinism, and the loader / backend choice."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from itertools import combinations

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader
from torch_geometric.nn import GCNConv
from torch_geometric.sampler import NodeSamplerInput

from qgnn.data import sampler as sampler_mod
from qgnn.data.sampler import TorchNeighborSampler, make_neighbor_loader
from qgnn.env import backends, neighbor_sampler
from qgnn.errors import ConfigError


def _graph(n=120, e=1500, isolated=10, seed=0) -> Data:
    """A random directed multigraph (repeated edges included) whose last `isolated` nodes have no edges."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n - isolated, (2, e), generator=g)
    return Data(edge_index=ei, num_nodes=n, x=torch.randn(n, 8, generator=g),
                edge_attr=torch.arange(e, dtype=torch.float).unsqueeze(1))


def _sample(sampler, seeds):
    seeds = torch.as_tensor(seeds, dtype=torch.long)
    return sampler.sample_from_nodes(NodeSamplerInput(input_id=torch.arange(seeds.numel()), node=seeds))


def _check_batch(data, sampler, out, fanouts):
    """Every invariant of one SamplerOutput (distinct seeds) against the graph it came from."""
    ei, node, row, col = data.edge_index, out.node, out.row, out.col
    # Sampled edges exist: the edge at e_id has exactly these (global) endpoints; no edge twice, no node twice.
    e_id = sampler.edge_permutation[out.edge]
    assert torch.equal(node[row], ei[0, e_id]) and torch.equal(node[col], ei[1, e_id])
    assert e_id.unique().numel() == e_id.numel() and node.unique().numel() == node.numel()
    assert sum(out.num_sampled_nodes) == node.numel() and sum(out.num_sampled_edges) == row.numel()
    assert len(out.num_sampled_nodes) == len(fanouts) + 1 and len(out.num_sampled_edges) == len(fanouts)
    in_deg = torch.bincount(ei[1], minlength=data.num_nodes)
    node_start = [0, *torch.tensor(out.num_sampled_nodes).cumsum(0).tolist()]
    edge_start = [0, *torch.tensor(out.num_sampled_edges).cumsum(0).tolist()]
    for hop, k in enumerate(fanouts):
        lo, hi = edge_start[hop], edge_start[hop + 1]
        # Hop `hop` expands exactly the nodes first reached at the hop before (the seeds at hop 0).
        frontier = torch.arange(node_start[hop], node_start[hop + 1])
        assert torch.isin(col[lo:hi], frontier).all()
        per_target = torch.bincount(col[lo:hi] - node_start[hop], minlength=frontier.numel())
        deg = in_deg[node[frontier]]
        expect = deg if k < 0 else deg.clamp(max=k)
        assert torch.equal(per_target, expect)  # no more than the fanout; all of them when deg <= fanout
        full = (deg <= k) | (k < 0)
        for i in frontier[full].tolist():  # all in-edges of a fully expanded node, as a set
            mine = set(e_id[lo:hi][col[lo:hi] == i].tolist())
            assert mine == set((ei[1] == node[i]).nonzero().view(-1).tolist())
        # Edges are grouped by target in frontier order.
        assert torch.equal(col[lo:hi], col[lo:hi].sort().values)
        # New nodes are the sources of this hop that were not in the batch yet, in order of first appearance.
        new = node[node_start[hop + 1]:node_start[hop + 2]]
        seen, first = set(node[:node_start[hop + 1]].tolist()), []
        for v in node[row[lo:hi]].tolist():
            if v not in seen:
                seen.add(v)
                first.append(v)
        assert new.tolist() == first


@pytest.mark.parametrize("fanouts", [[4, 3], [15, -1], [-1], [0, 5], [2, 2, 2]])
def test_batch_conventions_and_fanout_bounds(fanouts):
    data = _graph()
    sampler = TorchNeighborSampler(data, fanouts, generator=torch.Generator().manual_seed(1))
    seeds = torch.tensor([5, 115, 3, 40, 77, 119, 0])  # 115 and 119 are isolated
    out = _sample(sampler, seeds)
    assert torch.equal(out.node[:seeds.numel()], seeds) and out.num_sampled_nodes[0] == seeds.numel()
    assert out.batch is None and torch.equal(out.metadata[0], torch.arange(seeds.numel()))
    _check_batch(data, sampler, out, fanouts)
    assert (sampler._local == -1).all()  # the global -> local map is clean for the next batch


def test_isolated_and_repeated_seeds():
    data = _graph()
    sampler = TorchNeighborSampler(data, [3, 3])
    out = _sample(sampler, [118, 119])
    assert out.node.tolist() == [118, 119] and out.row.numel() == 0 and out.num_sampled_nodes == [2, 0, 0]
    out = _sample(sampler, [7, 7, 9])  # a repeated seed keeps both places and is sampled for each
    assert out.node[:3].tolist() == [7, 7, 9]
    assert torch.equal(out.node[out.row], data.edge_index[0, sampler.perm[out.edge]])
    assert set(out.col[:out.num_sampled_edges[0]].tolist()) <= {0, 1, 2}


def test_empty_input_and_empty_graph():
    data = _graph()
    out = _sample(TorchNeighborSampler(data, [5, 5]), torch.empty(0, dtype=torch.long))
    assert out.node.numel() == out.row.numel() == out.col.numel() == out.edge.numel() == 0
    assert out.num_sampled_nodes == [0, 0, 0] and out.num_sampled_edges == [0, 0]
    bare = Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=4)
    out = _sample(TorchNeighborSampler(bare, [-1, 2]), [3, 1])
    assert out.node.tolist() == [3, 1] and out.row.numel() == 0


def test_full_fanout_over_every_node_is_the_full_graph():
    data = _graph(isolated=5)
    for fanouts in ([-1], [-1, -1]):
        loader = NodeLoader(data, node_sampler=TorchNeighborSampler(data, fanouts), input_nodes=None,
                            batch_size=data.num_nodes)
        (batch,) = list(loader)
        assert torch.equal(batch.n_id, torch.arange(data.num_nodes)) and batch.batch_size == data.num_nodes
        got = batch.n_id[batch.edge_index]
        assert torch.equal(got, data.edge_index[:, batch.e_id])
        assert sorted(batch.e_id.tolist()) == list(range(data.edge_index.size(1)))
        assert torch.equal(batch.edge_attr, data.edge_attr[batch.e_id])  # edge attributes follow e_id
        assert batch.num_sampled_edges[-1] == 0 or len(fanouts) == 1


def _chi2_p(counts: list[int], expected: float) -> float:
    """Upper-tail p-value of Pearson's chi-square statistic (df = len(counts) - 1), Wilson-Hilferty."""
    stat = sum((c - expected) ** 2 / expected for c in counts)
    df = len(counts) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("floyd_max", [sampler_mod.FLOYD_MAX_FANOUT, 0])  # Floyd's algorithm, then sorted keys
def test_neighbours_are_uniform_on_a_star(monkeypatch, floyd_max):
    """Star: node 0 has in-neighbours 1..d. A seed repeated R times gives R independent k-subsets; each of the
    C(d, k) subsets must be equally likely (chi-square over subsets), and so each neighbour (k / d)."""
    monkeypatch.setattr(sampler_mod, "FLOYD_MAX_FANOUT", floyd_max)
    d, k, reps = 7, 3, 7000
    star = Data(edge_index=torch.stack([torch.arange(1, d + 1), torch.zeros(d, dtype=torch.long)]), num_nodes=d + 1)
    sampler = TorchNeighborSampler(star, [k], generator=torch.Generator().manual_seed(1234))
    out = _sample(sampler, torch.zeros(reps, dtype=torch.long))
    assert out.num_sampled_edges == [reps * k]
    picked = out.node[out.row].view(reps, k)  # edges grouped by target, k per seed copy
    assert torch.equal(out.col.view(reps, k), torch.arange(reps).unsqueeze(1).expand(reps, k))
    subsets = Counter(tuple(sorted(r)) for r in picked.tolist())
    assert all(len(set(s)) == k for s in subsets)  # without replacement
    all_subsets = list(combinations(range(1, d + 1), k))
    assert set(subsets) <= set(all_subsets)
    assert _chi2_p([subsets[s] for s in all_subsets], reps / len(all_subsets)) > 1e-4
    per_node = torch.bincount(picked.view(-1), minlength=d + 1)[1:].tolist()
    assert _chi2_p(per_node, reps * k / d) > 1e-4


def test_chi2_test_rejects_a_biased_draw():
    """The statistic used above does reject what it must: counts skewed by 20% on a quarter of the cells."""
    counts = [1200] * 9 + [933] * 26
    assert _chi2_p(counts, sum(counts) / len(counts)) < 1e-4


def test_high_degree_nodes_get_exactly_the_fanout():
    hub = 5000
    ei = torch.stack([torch.arange(1, hub + 1), torch.zeros(hub, dtype=torch.long)])
    data = Data(edge_index=ei, num_nodes=hub + 1)
    for k in (10, 40):  # both sampling routes
        out = _sample(TorchNeighborSampler(data, [k]), [0])
        assert out.row.numel() == k and out.node.numel() == k + 1 and out.edge.unique().numel() == k


def test_same_generator_state_same_batches():
    data = _graph()
    seeds = torch.arange(0, 100, 7)
    g = torch.Generator().manual_seed(5)
    sampler = TorchNeighborSampler(data, [3, 2], generator=g)
    state = g.get_state()
    a = _sample(sampler, seeds)
    b = _sample(sampler, seeds)
    g.set_state(state)
    c = _sample(sampler, seeds)
    assert torch.equal(a.node, c.node) and torch.equal(a.edge, c.edge) and torch.equal(a.row, c.row)
    assert not torch.equal(a.edge, b.edge)  # the stream moves on between batches
    # Without a generator the global one is used: torch.manual_seed reproduces the batch.
    plain = TorchNeighborSampler(data, [3, 2])
    torch.manual_seed(3)
    x = _sample(plain, seeds)
    torch.manual_seed(3)
    assert torch.equal(x.edge, _sample(plain, seeds).edge)


def test_loader_batches_feed_a_gcn():
    data = _graph()
    data.y = torch.randint(0, 3, (data.num_nodes,))
    train = torch.zeros(data.num_nodes, dtype=torch.bool)
    train[:50] = True
    loader = make_neighbor_loader(data, train, [5, 5], batch_size=16, shuffle=True,
                                  generator=torch.Generator().manual_seed(0))
    if neighbor_sampler() == "qgnn":
        assert isinstance(loader, NodeLoader) and isinstance(loader.node_sampler, TorchNeighborSampler)
    conv1, conv2 = GCNConv(8, 16), GCNConv(16, 3)
    seen = []
    for batch in loader:
        assert {"n_id", "e_id", "input_id", "batch_size"} <= set(batch.keys())
        assert torch.equal(batch.n_id[:batch.batch_size], train.nonzero().view(-1)[batch.input_id])
        out = conv2(conv1(batch.x, batch.edge_index).relu(), batch.edge_index)[:batch.batch_size]
        loss = torch.nn.functional.cross_entropy(out, batch.y[:batch.batch_size])
        loss.backward()
        assert torch.isfinite(loss) and conv1.lin.weight.grad is not None
        seen += batch.n_id[:batch.batch_size].tolist()
    assert sorted(seen) == list(range(50))  # every training node is a seed exactly once per epoch
    # The same generator seed gives the same epoch (shuffle and sampling).
    again = make_neighbor_loader(data, train, [5, 5], batch_size=16, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))
    first = make_neighbor_loader(data, train, [5, 5], batch_size=16, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.n_id, b.n_id) and torch.equal(a.e_id, b.e_id)


def test_bad_fanout_and_batch_size():
    data = _graph()
    with pytest.raises(ConfigError, match="fanout -2"):
        TorchNeighborSampler(data, [5, -2])
    with pytest.raises(ConfigError, match="batch size 0"):
        make_neighbor_loader(data, None, [5], batch_size=0, shuffle=False)
    with pytest.raises(ConfigError, match="homogeneous"):
        TorchNeighborSampler("not a graph", [5])
    with pytest.raises(ConfigError, match="names node 9 but data.num_nodes is 5"):
        TorchNeighborSampler(Data(edge_index=torch.tensor([[0, 9], [1, 2]]), num_nodes=5), [5])


@pytest.mark.skipif(neighbor_sampler() == "qgnn", reason="neither pyg-lib nor torch-sparse imports here")
def test_same_batches_as_pygs_neighbor_loader_with_full_fanout():
    """With fanout -1 nothing is random: PyG's own sampler and ours must give the same subgraph."""
    from torch_geometric.loader import NeighborLoader

    data = _graph()
    seeds = torch.tensor([5, 3, 40, 77, 119])
    ours = next(iter(NodeLoader(data, node_sampler=TorchNeighborSampler(data, [-1, -1]), input_nodes=seeds,
                                batch_size=seeds.numel())))
    pyg = next(iter(NeighborLoader(data, num_neighbors=[-1, -1], input_nodes=seeds, batch_size=seeds.numel())))
    assert torch.equal(ours.n_id[:ours.batch_size], pyg.n_id[:pyg.batch_size])
    assert set(ours.n_id.tolist()) == set(pyg.n_id.tolist())
    assert sorted(ours.e_id.tolist()) == sorted(pyg.e_id.tolist())
    assert ours.num_sampled_edges == list(pyg.num_sampled_edges)
    assert ours.num_sampled_nodes == list(pyg.num_sampled_nodes)
    assert set(map(tuple, ours.n_id[ours.edge_index].t().tolist())) == set(map(tuple,
                                                                           pyg.n_id[pyg.edge_index].t().tolist()))


def test_backends_report_the_sampler_without_importing_torch():
    assert backends(probe_torch=True)["sampler"][0]
    assert neighbor_sampler(True) in backends(probe_torch=True)["sampler"][1] or neighbor_sampler(True) == "qgnn"
    code = ("import sys\nfrom qgnn.env import backends\nline = backends(probe_torch=False)['sampler']\n"
            "print(line[1]); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    why, imported = r.stdout.strip().splitlines()
    assert imported == "False"
    assert ("qgnn torch sampler" in why) == (neighbor_sampler(probe_torch=False) == "qgnn")
