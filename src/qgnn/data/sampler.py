"""Uniform neighbour sampling in plain torch, for PyG's ``NodeLoader`` when neither pyg-lib nor torch-sparse
imports (PyG's own ``NeighborSampler`` needs one of them to sample).

:class:`TorchNeighborSampler` implements PyG's ``BaseSampler.sample_from_nodes`` and returns PyG's
``SamplerOutput`` with the conventions of PyG's ``NeighborSampler`` on a homogeneous graph (directed
subgraph, ``disjoint=False``, ``replace=False``), so ``NodeLoader(data, node_sampler=TorchNeighborSampler(...),
input_nodes=..., batch_size=...)`` yields the same kind of ``Data`` batch as ``NeighborLoader``:

* ``node`` (the batch's ``n_id``): the seeds first, in input order (``n_id[:batch_size]`` equals them), then
  the nodes each hop reaches for the first time, in order of first appearance;
* ``row`` / ``col``: local ids of each sampled edge's source (the neighbour) and target (the node it was
  sampled for): messages flow ``row -> col``, as in the full graph's ``edge_index``; edges are grouped by
  hop, then by target in frontier order, then by CSC position;
* ``edge``: each sampled edge's CSC position; :attr:`TorchNeighborSampler.edge_permutation` maps it to the
  edge's column in ``data.edge_index`` (``NodeLoader`` applies it for ``e_id`` and edge attributes);
* ``num_sampled_nodes`` = [seeds, new nodes of hop 1, ...], ``num_sampled_edges`` = [edges of hop 1, ...];
  ``batch`` None; ``metadata`` = ``(input_id, time)``.

Hop ``l`` expands only the nodes first reached at hop ``l - 1`` (the seeds at hop 1). A node ``v`` of
in-degree ``d`` keeps all its in-edges when ``fanout == -1`` or ``d <= fanout``; otherwise a uniformly random
``fanout``-subset of them (without replacement):

* ``fanout <= FLOYD_MAX_FANOUT``: Floyd's algorithm, vectorised over nodes and looped over the fanout's
  ``k`` steps: for ``j = d - k, ..., d - 1`` draw ``t`` uniform in ``[0, j]`` and take ``t``, or ``j`` when
  ``t`` was already taken. Every ``k``-subset has probability ``1 / C(d, k)``; the work is ``O(k^2)`` per
  node whatever its degree (hubs cost no more than anyone else);
* larger fanouts: one uniform key per candidate edge, the ``k`` smallest keys of each node kept (one sort of
  the candidates, ``O(d log d)`` per node).

Memory: the graph as CSC (``colptr`` [N + 1], ``row`` [E], ``perm`` [E], int64) plus one [N] int64 global ->
local map reused across batches, so ``O(N + E)``; a batch costs ``O(sampled edges)``. No [E, C] tensor.

Randomness: every draw comes from :attr:`TorchNeighborSampler.generator`; ``None`` (the default) means
torch's global CPU generator, which :func:`qgnn.train.seeding.rng_state` already saves, so a resumed run
draws the same batches. When a private ``torch.Generator`` is passed, whoever resumes must save and restore
``sampler.generator.get_state()`` (``rng_state`` only finds generators held by ``nn.Module``\\s). With
``num_workers > 0`` each worker process draws from its own copy of the generator (PyG's loaders behave the
same), so a resumed run is exact only with ``num_workers=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput

from qgnn.env import neighbor_sampler
from qgnn.errors import ConfigError

__all__ = ["FLOYD_MAX_FANOUT", "TorchNeighborSampler", "make_neighbor_loader", "neighbor_sampler"]

#: Up to this fanout, nodes with more neighbours are sampled by Floyd's algorithm (O(k^2) per node); above
#: it, by sorting one random key per candidate edge (O(d log d) per node).
FLOYD_MAX_FANOUT = 32


def _segments(lengths: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """For segments of the given lengths laid end to end: each element's segment and its offset inside it."""
    seg = torch.repeat_interleave(torch.arange(lengths.numel()), lengths, output_size=total)
    starts = torch.cumsum(lengths, 0) - lengths
    return seg, torch.arange(total) - starts.index_select(0, seg)


def _floyd(deg: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """[m, k] distinct offsets in ``[0, deg_i)`` per row, each k-subset equally likely (Floyd's algorithm;
    requires ``deg > k``)."""
    upper = deg.unsqueeze(1) - k + torch.arange(k)  # j = d - k + i: step i draws from [0, j]
    # float64 draws: a uniform in [0, 1) scaled to [0, j + 1) has no visible bias for any realistic degree.
    t = (torch.rand(upper.shape, generator=generator, dtype=torch.float64) * (upper + 1)).long()
    t = torch.minimum(t, upper)  # rand < 1, but guard the product's rounding
    out = torch.empty_like(t)
    out[:, 0] = t[:, 0]
    for i in range(1, k):
        taken = (out[:, :i] == t[:, i:i + 1]).any(1)
        out[:, i] = torch.where(taken, upper[:, i], t[:, i])
    return out


def _smallest_keys(deg: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """[m, k] distinct offsets in ``[0, deg_i)`` per row: the k candidates with the smallest uniform keys."""
    total = int(deg.sum())
    seg, within = _segments(deg, total)
    # Segment id + key in [0, 1): one sort orders by segment, then by key (float64 holds both exactly enough).
    keys = seg.to(torch.float64) + torch.rand(total, generator=generator, dtype=torch.float64)
    order = torch.argsort(keys)
    # A sort keeps the segments where they were, so position p of `order` still belongs to segment seg[p].
    keep = within < k
    starts = torch.cumsum(deg, 0) - deg
    return (order[keep] - starts[seg[keep]]).view(-1, k)


def _check_fanouts(fanouts: Sequence[int]) -> list[int]:
    out = [int(k) for k in fanouts]
    bad = [k for k in out if k < -1]
    if bad:
        raise ConfigError(f"fanout {bad[0]}: use a number of neighbours >= 0, or -1 for all of them")
    return out


class TorchNeighborSampler(BaseSampler):
    """Uniform neighbour sampling without replacement, one fanout per hop (``-1`` = all neighbours), in
    vectorised torch; PyG's ``NeighborSampler`` conventions (see the module docstring).

    ``data``: a homogeneous ``Data`` with ``edge_index`` (messages ``edge_index[0] -> edge_index[1]``); it is
    converted once to CSC, stably sorted by target, so each node's in-neighbours keep their order in
    ``edge_index``. ``generator``: the ``torch.Generator`` every draw uses (None: torch's global one).
    """

    def __init__(self, data: Data, num_neighbors: Sequence[int], generator: torch.Generator | None = None):
        if not isinstance(data, Data):
            raise ConfigError(f"the qgnn neighbour sampler takes a homogeneous torch_geometric Data, "
                              f"not {type(data).__name__}")
        self.num_neighbors = _check_fanouts(num_neighbors)
        self.generator = generator
        self.num_nodes = int(data.num_nodes or 0)
        edge_index = data.edge_index if "edge_index" in data else None
        if edge_index is None and "adj_t" in data:
            raise ConfigError("the qgnn neighbour sampler reads data.edge_index; this Data holds only adj_t")
        if edge_index is None:
            edge_index = torch.empty(2, 0, dtype=torch.long)
        src, dst = edge_index.cpu().long()
        if src.numel() and int(torch.maximum(src.max(), dst.max())) >= self.num_nodes:
            raise ConfigError(f"data.edge_index names node {int(torch.maximum(src.max(), dst.max()))} but "
                              f"data.num_nodes is {self.num_nodes}")
        dst, self.perm = torch.sort(dst, stable=True)
        self.row = src[self.perm]
        self.colptr = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        self.colptr[1:] = torch.cumsum(torch.bincount(dst, minlength=self.num_nodes), 0)
        # Global -> local ids of the batch being sampled; -1 between batches (reset after each one).
        self._local = torch.full((self.num_nodes,), -1, dtype=torch.long)

    @property
    def edge_permutation(self) -> Tensor:
        """CSC position -> column of ``data.edge_index`` (``NodeLoader`` maps ``edge`` through it)."""
        return self.perm

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> SamplerOutput:
        if index.input_type is not None:
            raise ConfigError("the qgnn neighbour sampler samples homogeneous graphs only")
        if index.time is not None:
            raise ConfigError("the qgnn neighbour sampler does not sample by time")
        out = self.sample(index.node)
        out.metadata = (index.input_id, index.time)
        return out

    def sample_from_edges(self, index, neg_sampling=None):
        raise ConfigError("the qgnn neighbour sampler samples from nodes only (no link-level loaders)")

    def sample(self, seed: Tensor) -> SamplerOutput:
        """The sampled subgraph around ``seed`` (global node ids), without ``metadata``."""
        seed = seed.long().cpu()
        local = self._local
        nodes = [seed]
        rows, cols, edges = [], [], []
        num_nodes, num_edges = [seed.numel()], []
        try:
            # A seed listed twice keeps its place twice in `node`; sampled edges point at its first copy.
            local.scatter_reduce_(0, seed, torch.arange(seed.numel()), "amin", include_self=False)
            # The frontier's local ids are always the range [base, base + len(frontier)).
            frontier, base, n = seed, 0, seed.numel()
            for k in self.num_neighbors:
                pos, target = self._sample_edges(frontier, k)
                nbr = self.row.index_select(0, pos)
                loc = local.index_select(0, nbr)
                fresh = loc < 0
                cand = nbr.masked_select(fresh)
                # New nodes in order of first appearance: each candidate writes its position, the smallest wins.
                order = torch.arange(cand.numel())
                local.scatter_reduce_(0, cand, order, "amin", include_self=False)
                new = cand.masked_select(local.index_select(0, cand) == order)
                local.index_copy_(0, new, torch.arange(n, n + new.numel()))
                loc.masked_scatter_(fresh, local.index_select(0, cand))
                rows.append(loc)
                cols.append(target + base)
                edges.append(pos)
                nodes.append(new)
                num_nodes.append(new.numel())
                num_edges.append(pos.numel())
                frontier, base, n = new, n, n + new.numel()
            node = torch.cat(nodes)
        except BaseException:
            local.fill_(-1)  # an interrupted batch may leave any entry set; the next one needs a clean map
            raise
        local.index_fill_(0, node, -1)
        empty = torch.empty(0, dtype=torch.long)
        return SamplerOutput(
            node=node,
            row=torch.cat(rows) if rows else empty,
            col=torch.cat(cols) if cols else empty,
            edge=torch.cat(edges) if edges else empty,
            batch=None,
            num_sampled_nodes=num_nodes,
            num_sampled_edges=num_edges,
        )

    def _sample_edges(self, frontier: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """CSC positions of the in-edges kept for each frontier node (all when ``k == -1`` or the degree is at
        most ``k``, else a uniform ``k``-subset), grouped by frontier node, ascending within a node; and each
        edge's index into ``frontier``."""
        start = self.colptr.index_select(0, frontier)
        deg = self.colptr.index_select(0, frontier + 1) - start
        counts = deg if k < 0 else deg.clamp(max=k)
        target, offset = _segments(counts, int(counts.sum()))  # offset: 0, 1, ... inside each node's slots
        if k > 0:
            sampled = deg > k
            if bool(sampled.any()):
                pick = _floyd if k <= FLOYD_MAX_FANOUT else _smallest_keys
                chosen = pick(deg.masked_select(sampled), k, self.generator).sort(dim=1).values
                # The sampled nodes' slots, in frontier order, are exactly the rows of `chosen` laid end to end.
                offset.masked_scatter_(sampled.index_select(0, target), chosen.view(-1))
        return start.index_select(0, target) + offset, target


def make_neighbor_loader(data: Data, input_nodes, fanouts: Sequence[int], batch_size: int, shuffle: bool,
                         generator: torch.Generator | None = None, **kwargs):
    """A mini-batch loader over ``input_nodes`` (indices, a bool mask or None = all nodes) sampling
    ``fanouts[l]`` in-neighbours per node at hop ``l`` (``-1`` = all).

    PyG's ``NeighborLoader`` when pyg-lib or torch-sparse imports (its sampler, its RNG); otherwise PyG's
    ``NodeLoader`` with :class:`TorchNeighborSampler`. Both yield PyG ``Data`` batches with ``n_id``,
    ``e_id``, ``batch_size``, ``input_id`` and the seeds first. ``generator`` drives the shuffle (and, with
    the qgnn sampler, the sampling); None: torch's global generator. ``kwargs`` go to the loader (and on to
    ``torch.utils.data.DataLoader``)."""
    if int(batch_size) < 1:
        raise ConfigError(f"batch size {batch_size}: use a batch size of at least 1")
    fanouts = _check_fanouts(fanouts)
    if neighbor_sampler() != "qgnn":
        from torch_geometric.loader import NeighborLoader

        return NeighborLoader(data, num_neighbors=fanouts, input_nodes=input_nodes, batch_size=batch_size,
                              shuffle=shuffle, generator=generator, **kwargs)
    from torch_geometric.loader import NodeLoader

    sampler = TorchNeighborSampler(data, fanouts, generator=generator)
    return NodeLoader(data, node_sampler=sampler, input_nodes=input_nodes, batch_size=batch_size,
                      shuffle=shuffle, generator=generator, **kwargs)
