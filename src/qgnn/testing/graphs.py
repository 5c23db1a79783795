"""Small seeded random graphs for tests, as ``(x, edge_index)`` tensors (``batch_of_graphs``: a PyG Batch).

Every graph is drawn from its own ``torch.Generator`` seeded with ``seed``: the global RNG is neither read
nor advanced, so a fixture never changes what a test draws after it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["graph", "isolated_graph", "hub_graph", "edgeless_graph", "batch_of_graphs"]


def graph(n: int = 30, e: int = 90, f: int = 8, seed: int = 0, *, features: str = "randn", isolated: int = 0,
          self_loops: bool = True, undirected: bool = False) -> tuple[Tensor, Tensor]:
    """Features ``[n, f]`` and ``e`` random directed edges among the first ``n - isolated`` nodes.

    features: ``"randn"`` (N(0, 1)) or ``"rand"`` (U(0, 1), non-negative like bag-of-words inputs).
    isolated: the last ``isolated`` nodes have no edge at all. self_loops=False drops the drawn
    self-loops (fewer than ``e`` edges then). undirected=True appends the reverse of every edge (2e
    edges, duplicates kept). Draw order: x, then the edges, so a graph equals the copies of this helper
    the tests used to carry.
    """
    if features not in ("randn", "rand"):
        raise ValueError(f"features must be 'randn' or 'rand', got {features!r}")
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn if features == "randn" else torch.rand)(n, f, generator=g)
    ei = torch.randint(0, max(n - isolated, 1), (2, e), generator=g)
    if not self_loops:
        ei = ei[:, ei[0] != ei[1]]
    if undirected:
        ei = torch.cat([ei, ei.flip(0)], 1)
    return x, ei


def isolated_graph(n: int = 12, e: int = 20, f: int = 8, isolated: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random graph whose last ``isolated`` nodes have no edge (degree 0: a sum over no neighbour)."""
    return graph(n, e, f, seed, isolated=isolated, self_loops=False)


def hub_graph(n: int = 30, f: int = 8, extra_edges: int = 20, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Node 0 is a hub joined both ways to every other node, plus ``extra_edges`` random edges among the
    others: one in-degree far above the rest (Degree-Quant's protective masking, per-node ranges)."""
    x, rest = graph(n - 1, extra_edges, f, seed, self_loops=False)
    x = torch.cat([torch.randn(1, f, generator=torch.Generator().manual_seed(seed + 1)), x])
    spokes = torch.arange(1, n)
    hub = torch.stack([torch.cat([spokes, torch.zeros_like(spokes)]), torch.cat([torch.zeros_like(spokes), spokes])])
    return x, torch.cat([hub, rest + 1], 1)


def edgeless_graph(n: int = 7, f: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` nodes with N(0, 1) features and no edge (``n=0``: no node either); edge_index has shape ``[2, 0]``.
    :func:`graph` with ``e=0``. (:func:`qgnn.data.empty_graph` is the dataset-side one: a PyG ``Data`` with
    zero features and, by default, no node.)"""
    return graph(n, 0, f, seed)


def batch_of_graphs(sizes=(5, 1, 12, 8), f: int = 8, edges_per_node: int = 2, seed: int = 0):
    """A ``torch_geometric.data.Batch`` of graphs with ``sizes`` nodes (a one-node graph included by
    default), each with ``edges_per_node · n`` undirected random edges and a label ``y`` in {0, 1}."""
    from torch_geometric.data import Batch, Data

    graphs = []
    for i, n in enumerate(sizes):
        x, ei = graph(n, edges_per_node * n, f, seed + i, undirected=True, self_loops=False)
        graphs.append(Data(x=x, edge_index=ei, y=torch.tensor([i % 2]), num_nodes=n))
    return Batch.from_data_list(graphs)
