"""Small random datasets for unit tests; the same seed always gives the same data.

All randomness comes from ``numpy.random.default_rng(seed)``, never from torch's
global generator, so creating a dataset does not disturb a test's torch seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, to_undirected

from qgnn.data.planetoid import NodeDataset
from qgnn.data.recsys import RecDataset, _finish, split_per_user
from qgnn.data.tu import GraphDataset, GraphList
from qgnn.errors import ConfigError


def _masks(n: int, rng: np.random.Generator, fracs=(0.6, 0.2)) -> list[torch.Tensor]:
    perm = rng.permutation(n)
    a, b = int(round(fracs[0] * n)), int(round((fracs[0] + fracs[1]) * n))
    out = []
    for part in (perm[:a], perm[a:b], perm[b:]):
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.from_numpy(part)] = True
        out.append(m)
    return out


def random_node_dataset(
    num_nodes: int = 100, num_features: int = 16, num_classes: int = 3, avg_degree: float = 4,
    seed: int = 0, p_intra: float = 0.8, noise: float = 1.0, normalize_features: bool = False,
) -> NodeDataset:
    """A stochastic-block-model-like graph a GCN can learn.

    Balanced random labels; each of ``num_nodes * avg_degree / 2`` sampled edges joins
    two nodes of the same class with probability ``p_intra`` (else two random nodes),
    then edges are made undirected without self-loops or duplicates. Features are
    ``|class mean + N(0, noise^2)|`` with class means drawn from U(0, 2): non-negative
    like bag-of-words features, so ``normalize_features`` (row sums to 1, as for
    Planetoid) is well defined. Random 60/20/20 train/val/test masks.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(num_nodes) % num_classes)
    m = max(1, int(num_nodes * avg_degree / 2))
    src = rng.integers(0, num_nodes, m)
    by_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    same = rng.random(m) < p_intra
    dst = rng.integers(0, num_nodes, m)
    for i in np.flatnonzero(same):
        pool = by_class[y[src[i]]]
        dst[i] = pool[rng.integers(0, len(pool))]
    keep = src != dst
    ei = torch.from_numpy(np.stack([src[keep], dst[keep]])).long()
    ei = to_undirected(ei, num_nodes=num_nodes)
    means = rng.uniform(0.0, 2.0, (num_classes, num_features))
    x = np.abs(means[y] + noise * rng.normal(0.0, 1.0, (num_nodes, num_features)))
    train, val, test = _masks(num_nodes, rng)
    data = Data(x=torch.tensor(x, dtype=torch.float32), edge_index=ei, y=torch.from_numpy(y).long(),
                train_mask=train, val_mask=val, test_mask=test)
    if normalize_features:
        import torch_geometric.transforms as T

        data = T.NormalizeFeatures()(data)
    return NodeDataset(name="synthetic-node", data=data, num_features=num_features, num_classes=num_classes)


def _cycle(n: int) -> np.ndarray:
    a = np.arange(n)
    return np.stack([a, (a + 1) % n])


def _dense(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """The n-cycle plus each other pair with probability p (at least one chord)."""
    iu = np.triu_indices(n, 1)
    chord = (iu[1] - iu[0] != 1) & ~((iu[0] == 0) & (iu[1] == n - 1))
    keep = chord & (rng.random(len(iu[0])) < p)
    if not keep.any():
        keep[np.flatnonzero(chord)[0]] = True
    return np.concatenate([_cycle(n), np.stack([iu[0][keep], iu[1][keep]])], axis=1)


def random_graph_dataset(
    num_graphs: int = 60, min_nodes: int = 6, max_nodes: int = 14, num_features: int = 8, seed: int = 0,
    node_features: str = "degree",
) -> GraphDataset:
    """Two balanced classes: class 0 is an n-cycle, class 1 the n-cycle plus random chords
    (each other node pair with probability 0.5, at least one), so class 1 is always denser.

    ``node_features="degree"`` (also ``"auto"``): x is the one-hot node degree, capped at
    ``num_features - 1``, so the classes differ in features as well as structure;
    ``"constant"``: x = 1 (one feature), so only structure tells them apart.
    """
    if num_features < 1 or min_nodes < 3 or max_nodes < min_nodes:
        raise ConfigError("random_graph_dataset needs num_features >= 1 and 3 <= min_nodes <= max_nodes")
    if node_features not in ("auto", "degree", "constant"):
        raise ConfigError(f"node_features must be auto, degree or constant, got {node_features!r}")
    mode = "constant" if node_features == "constant" else "degree"
    num_features = 1 if mode == "constant" else num_features
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_graphs) % 2)
    graphs = []
    for c in labels:
        n = int(rng.integers(min_nodes, max_nodes + 1))
        ei = torch.from_numpy(_cycle(n) if c == 0 else _dense(n, 0.5, rng)).long()
        ei = to_undirected(ei, num_nodes=n)
        deg = torch.bincount(ei[0], minlength=n).clamp(max=num_features - 1)
        x = torch.nn.functional.one_hot(deg, num_features).float() if mode == "degree" else torch.ones(n, 1)
        graphs.append(Data(x=x, edge_index=ei, y=torch.tensor([int(c)])))
    ds = GraphList(graphs, "synthetic-graph")
    return GraphDataset(name="synthetic-graph", dataset=ds, num_features=num_features, num_classes=2,
                        labels=torch.from_numpy(labels).long(), node_features=mode)


def random_rec_dataset(
    num_users: int = 50, num_items: int = 80, interactions_per_user: int = 10, num_groups: int = 4,
    seed: int = 0, val_frac: float = 0.1,
) -> RecDataset:
    """Users and items fall into ``num_groups`` taste groups; a user picks 80% of its
    items from its own group. Split per user like ml-100k (10% test, ``val_frac`` val)."""
    rng = np.random.default_rng(seed)
    ug = rng.integers(0, num_groups, num_users)
    ig = rng.integers(0, num_groups, num_items)
    pairs = []
    for u in range(num_users):
        own = np.flatnonzero(ig == ug[u])
        k = min(interactions_per_user, num_items)
        p = np.full(num_items, 0.2 / num_items)
        if len(own):
            p[own] += 0.8 / len(own)
        items = rng.choice(num_items, size=k, replace=False, p=p / p.sum())
        pairs.append(np.stack([np.full(k, u), items], axis=1))
    pairs = np.concatenate(pairs).astype(np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    ds = _finish("synthetic-rec", *split_per_user(pairs, val_frac, 0.1, seed), num_users, num_items)
    return ds


def random_graph(
    num_nodes: int = 10, num_edges: int = 20, num_features: int = 4, seed: int = 0,
    num_isolated: int = 0, undirected: bool = False,
) -> Data:
    """A random graph: ``num_edges`` distinct directed edges (no self-loops) among the
    first ``num_nodes - num_isolated`` nodes, so the last ``num_isolated`` nodes have no
    edge. ``undirected=True`` adds the reverse of every edge (fewer than 2*num_edges if
    some pairs coincide). x ~ N(0, 1), float32."""
    rng = np.random.default_rng(seed)
    active = num_nodes - num_isolated
    if num_isolated < 0 or active < 0:
        raise ConfigError(f"num_isolated must be in [0, num_nodes], got {num_isolated}")
    possible = active * (active - 1)
    if num_edges > possible:
        raise ConfigError(f"{num_edges} edges do not fit among {active} nodes (at most {possible})")
    code = rng.choice(possible, size=num_edges, replace=False) if num_edges else np.zeros(0, np.int64)
    src, off = code // max(active - 1, 1), code % max(active - 1, 1)
    dst = off + (off >= src)  # skip the diagonal: no self-loops
    ei = torch.from_numpy(np.stack([src, dst])).long().view(2, -1)
    if undirected:
        ei = to_undirected(ei, num_nodes=num_nodes)
    else:
        ei = coalesce(ei, num_nodes=num_nodes)
    x = torch.from_numpy(rng.normal(0.0, 1.0, (num_nodes, num_features))).float()
    return Data(x=x, edge_index=ei, num_nodes=num_nodes)


def empty_graph(num_features: int = 4, num_nodes: int = 0) -> Data:
    """A graph without edges: ``num_nodes`` nodes (none by default), x all zeros."""
    return Data(x=torch.zeros(num_nodes, num_features), edge_index=torch.zeros(2, 0, dtype=torch.long),
                num_nodes=num_nodes)
