"""Node classification on sampled mini-batches (GraphSAGE-style neighbour sampling, Hamilton et al. 2017).

An epoch walks the training nodes in shuffled batches of ``batch_size`` seeds. Each batch is the subgraph
that PyG's loader samples around its seeds (:func:`qgnn.data.sampler.make_neighbor_loader`: ``fanout[l]``
in-neighbours per node at hop ``l``, ``-1`` = all; seeds first, ``n_id`` the global ids of its rows,
``e_id`` the columns of ``data.edge_index`` its edges came from). The model runs on the batch under
:func:`qgnn.nn.context.node_ids`, so per-node quantizer state is looked up by global id; the loss is the
cross-entropy of the seeds (the first ``batch.batch_size`` rows) plus the method's penalties, and the
optimizer steps once per batch. Evaluation runs over the whole graph (:meth:`MiniBatchNodeTask._full_forward`).

GCN normalisation. A sampled subgraph's own ``gcn_norm`` is wrong: its outermost nodes have no in-edges in
the batch (so their degree would read 1) and every sampled node's degree is capped at its fanout. Instead
the whole graph's symmetric normalisation is computed once (:class:`GlobalGCNNorm`),
``w_ji = 1 / sqrt(d_i d_j)`` with ``d`` the in-degree plus the self loop (PyG's ``gcn_norm``), and a batch
uses its sampled edges plus a self loop per node with weights

    w_ji · n_i / s_i   (edge j -> i)          1 / d_i   (self loop of i)

where ``n_i`` is i's number of in-neighbours in the whole graph and ``s_i`` the number sampled into the batch
(self loops not counted). Sampling is uniform without replacement, so ``(n_i / s_i) Σ_{j sampled} w_ji h_j``
is an unbiased estimate of ``Σ_{j ∈ N(i)} w_ji h_j``, and exact when every neighbour is sampled
(fanout -1: ``s_i = n_i``, the batch computes what the full graph computes for the seeds). The weights reach
every GCN layer as ``edge_weight`` with its own normalisation off (:func:`external_gcn_norm`), so a
quantized GCN layer's ``edge`` slot quantizes exactly these normalised weights. Other layers (SAGE's mean,
GAT's softmax over the sampled neighbours and the self loop, GIN's sum) take the sampled edges as they are,
as PyG's sampled training does.

Randomness: the shuffle and the sampling draw from one ``torch.Generator`` owned by the task, seeded from
torch's global generator when the task is built (so ``set_seed`` fixes the batches), and saved with the
run's resume state through :meth:`MiniBatchNodeTask.generators` (:mod:`qgnn.train.seeding`).

Per-node state: before a model's first batch the task calls :func:`qgnn.nn.context.attach_graph` with the
whole graph (A2Q's per-node tables are sized to every node, Degree-Quant's protection probabilities come from
the whole graph's in-degrees), and every batch runs under :func:`qgnn.nn.context.node_ids`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from qgnn.data.sampler import make_neighbor_loader
from qgnn.errors import ConfigError
from qgnn.nn.context import attach_graph, node_ids
from qgnn.train.tasks import node_scores, penalty

__all__ = ["GlobalGCNNorm", "MiniBatchNodeTask", "external_gcn_norm", "gcn_convs", "no_cached_normalisation"]


def gcn_convs(model: nn.Module) -> list[GCNConv]:
    """Every GCN layer of ``model`` (float ``GCNConv`` and its quantized subclasses, inside prompt wrappers too)."""
    return [m for m in model.modules() if isinstance(m, GCNConv)]


def no_cached_normalisation(model: nn.Module) -> nn.Module:
    """Turn off PyG's ``cached`` normalisation on every layer that has it (GCN's ``cached=True``): a cache
    holds one graph's normalised adjacency, and under mini-batches a layer sees many graphs."""
    for m in model.modules():
        if isinstance(getattr(m, "cached", None), bool):
            m.cached = False
            for attr in ("_cached_edge_index", "_cached_adj_t"):
                if hasattr(m, attr):
                    setattr(m, attr, None)
    return model


def _sums_only(model: nn.Module) -> bool:
    """Every message-passing layer of ``model`` is a GCN, GIN or SAGE layer (prompt wrappers looked through)."""
    from torch_geometric.nn import GINConv, MessagePassing, SAGEConv

    layers = [m for m in model.modules() if isinstance(m, MessagePassing)]
    return bool(layers) and all(isinstance(m, (GCNConv, GINConv, SAGEConv)) for m in layers)


def _trims(model: nn.Module, batch) -> bool:
    """Whether ``model``'s forward computes each layer on the rows a later layer reads only
    (:meth:`qgnn.models.node._Stack._trimmed`): a stack whose every layer is a GCN, GIN or SAGE layer (not
    wrapped by a prompt), on a batch with one hop per layer."""
    from torch_geometric.nn import GINConv, SAGEConv

    from qgnn.models.node import _Stack

    inner = getattr(model, "module", model)  # DDP's wrapped model
    hops = getattr(batch, "num_sampled_nodes", None)
    return (isinstance(inner, _Stack) and hops is not None and len(hops) == len(inner.convs) + 1
            and all(isinstance(c, (GCNConv, GINConv, SAGEConv)) for c in inner.convs))


def _csr(edge_index: Tensor, weight: Tensor | None, n: int) -> Tensor:
    """The batch's transposed adjacency ``adj_t`` (rows = targets) as a torch CSR tensor."""
    from qgnn.nn.graph import by_target, to_csr

    ptr, src, values, _ = by_target(edge_index[0], edge_index[1], weight, n)
    values = values if values is not None else torch.ones(src.numel(), device=src.device)
    return to_csr(ptr, src, values, (n, n))


@contextmanager
def external_gcn_norm(model: nn.Module) -> Iterator[list[GCNConv]]:
    """Within the block every GCN layer of ``model`` takes its normalised weights from the caller
    (``normalize=False``, ``cached=False``: it adds no self loops and computes no degrees); restored on exit.

    Only the plain GCN normalisation is reproduced by :class:`GlobalGCNNorm`: a layer with ``improved=True``,
    without self loops or with ``flow="target_to_source"`` is refused (ConfigError)."""
    convs = gcn_convs(model)
    for conv in convs:
        if conv.normalize and (conv.improved or not conv.add_self_loops or conv.flow != "source_to_target"):
            raise ConfigError(f"mini-batch GCN training reproduces the plain GCN normalisation only; "
                              f"{type(conv).__name__} has improved={conv.improved}, "
                              f"add_self_loops={conv.add_self_loops}, flow={conv.flow!r}")
    saved = [(conv.normalize, conv.cached) for conv in convs]
    try:
        for conv in convs:
            conv.normalize, conv.cached = False, False
        yield convs
    finally:
        for conv, (normalize, cached) in zip(convs, saved, strict=True):
            conv.normalize, conv.cached = normalize, cached


@dataclass
class GlobalGCNNorm:
    """The whole graph's GCN normalisation, aligned with ``data.edge_index`` (module docstring).

    ``edge``: [E] ``w_ji`` per column of ``edge_index`` (0 at self-loop columns: GCN replaces a graph's own
    self loops by one of its own per node); ``loop``: [N] the self-loop weights ``1 / d_i``; ``neighbours``:
    [N] in-edges per node without self loops (``n_i``, multi-edges counted as ``gcn_norm`` counts them);
    ``is_loop``: [E] which columns are self loops.
    """

    edge: Tensor
    loop: Tensor
    neighbours: Tensor
    is_loop: Tensor

    @classmethod
    def of(cls, edge_index: Tensor, num_nodes: int, dtype: torch.dtype = torch.float32) -> GlobalGCNNorm:
        """PyG's ``gcn_norm`` on the whole graph (self loops added), realigned with ``edge_index``'s columns."""
        is_loop = edge_index[0] == edge_index[1]
        _, w = gcn_norm(edge_index, None, num_nodes, improved=False, add_self_loops=True, dtype=dtype)
        kept = int((~is_loop).sum())
        # add_remaining_self_loops keeps the non-loop edges in their order and appends one loop per node
        if w.numel() != kept + num_nodes:
            raise RuntimeError(f"gcn_norm returned {w.numel()} weights, expected {kept} edges + {num_nodes} loops")
        edge = torch.zeros(edge_index.size(1), dtype=w.dtype, device=w.device)
        edge[~is_loop] = w[:kept]
        neighbours = torch.bincount(edge_index[1][~is_loop], minlength=num_nodes)
        return cls(edge, w[kept:], neighbours, is_loop)

    def to(self, device) -> GlobalGCNNorm:
        return GlobalGCNNorm(*(t.to(device) for t in (self.edge, self.loop, self.neighbours, self.is_loop)))

    def batch(self, batch) -> tuple[Tensor, Tensor]:
        """(edge_index, edge_weight) of a sampled batch: its edges without self loops, weights rescaled by
        ``n_i / s_i``, then one self loop per batch node (module docstring)."""
        keep = ~self.is_loop.index_select(0, batch.e_id)
        edge_index, e_id = batch.edge_index[:, keep], batch.e_id[keep]
        n = batch.num_nodes
        dst = edge_index[1]
        sampled = torch.bincount(dst, minlength=n).clamp_(min=1)  # s_i; 1 where none (no edge uses it then)
        rescale = self.neighbours.index_select(0, batch.n_id).to(self.edge.dtype) / sampled.to(self.edge.dtype)
        weight = self.edge.index_select(0, e_id) * rescale.index_select(0, dst)
        loop = torch.arange(n, device=edge_index.device)
        edge_index = torch.cat([edge_index, torch.stack([loop, loop])], 1)
        return edge_index, torch.cat([weight, self.loop.index_select(0, batch.n_id)])


class MiniBatchNodeTask:
    """Transductive node classification trained on sampled mini-batches; the interface of
    :class:`~qgnn.train.tasks.NodeTask` (module docstring).

    ``fanouts``: sampled in-neighbours per layer (``-1`` = all); ``batch_size``: seed nodes per batch.
    """

    metric = "acc"

    def __init__(self, data, fanouts: Sequence[int], batch_size: int, device: torch.device | str = "cpu",
                 progress: bool | None = False, shard=None):
        self.device = torch.device(device)
        # a bar over the batches of an epoch and the layers of an evaluation (an epoch of a million-node graph
        # takes minutes); None: shown on a terminal, as the runner's own bar
        self.progress = progress
        self.data = data  # the sampler reads the graph on the CPU
        self.eval_data = data.to(self.device)
        # seeded from torch's global generator: set_seed(seed) before building the task fixes every batch
        self.generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        self.fanouts, self.batch_size = list(fanouts), int(batch_size)
        train = data.train_mask.nonzero().view(-1)
        self.shuffle = None
        if shard is None:
            self.loader = make_neighbor_loader(data, train, list(fanouts), batch_size, shuffle=True,
                                               generator=self.generator)
        else:  # torchrun: this rank's share of each epoch's shuffled seeds (qgnn.train.distributed.ShardSampler),
            # shuffled by a generator seeded alike on every rank; the sampling draws from the rank's own
            self.shuffle = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
            self.loader = make_neighbor_loader(data, train, list(fanouts), shard.batch_size(batch_size),
                                               shuffle=False, generator=self.generator,
                                               sampler=shard.sampler(train.numel(), self.shuffle))
        self._gcn_norm: GlobalGCNNorm | None = None
        self._attached: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def val_batches(self) -> Iterator:
        """Sampled batches of validation seeds without end (shuffled passes, this task's generator): what the
        MixQ search steps its bit logits on (``alpha_split="val"``)."""
        val = self.data.val_mask.nonzero().view(-1)
        if val.numel() == 0:
            raise ConfigError("the validation split has no node to search on")
        loader = make_neighbor_loader(self.data, val, self.fanouts, self.batch_size, shuffle=True,
                                      generator=self.generator)
        while True:
            yield from loader

    def generators(self) -> dict[str, torch.Generator]:
        """The generators this task draws from, by name, for the resume state (qgnn.train.seeding)."""
        return {"minibatch": self.generator, **({"shard": self.shuffle} if self.shuffle is not None else {})}

    def gcn_norm(self) -> GlobalGCNNorm:
        """The whole graph's GCN normalisation, computed on first use (models without GCN layers never need it)."""
        if self._gcn_norm is None:
            d = self.data
            self._gcn_norm = GlobalGCNNorm.of(d.edge_index, d.num_nodes, d.x.dtype).to(self.device)
        return self._gcn_norm

    def prepare(self, model: nn.Module) -> None:
        """Tell ``model`` once which whole graph the batches' global ids refer to (:func:`attach_graph`: A2Q's
        per-node tables take one entry per node of the graph, Degree-Quant's mask the whole graph's in-degree
        CDF); before its first batch, after a resumed state was loaded."""
        if model not in self._attached:
            attach_graph(model, self.eval_data.edge_index, self.data.num_nodes)
            self._attached.add(model)

    def batch_forward(self, model: nn.Module, batch) -> Tensor:
        """The model's output on the rows of ``batch`` (a sampled batch on this task's device), the seeds
        first; a model that trims its layers (:func:`_trims`) returns the seeds' rows only.

        Models whose every layer sums or averages (GCN, GIN, SAGE) get the batch as a sparse adjacency
        (CSR ``adj_t``, GCN's normalised weights as its values), which the layers multiply without forming
        per-edge messages (faster than the gather / scatter of an edge list, and no ``[E, C]`` tensor).
        Attention (GAT) keeps the edge list."""
        sparse = _sums_only(model)
        # a stack of sum / mean layers trims each layer to the rows a later layer reads (PyG's trim_to_layer)
        trim = {"num_sampled_nodes_per_hop": batch.num_sampled_nodes} if sparse and _trims(model, batch) else {}
        with node_ids(model, batch.n_id):
            if not gcn_convs(model):
                graph = _csr(batch.edge_index, None, batch.num_nodes) if sparse else batch.edge_index
                return model(batch.x, graph, **trim)
            edge_index, edge_weight = self.gcn_norm().batch(batch)
            with external_gcn_norm(model):
                if sparse:
                    return model(batch.x, _csr(edge_index, edge_weight, batch.num_nodes), **trim)
                # a keyword: a third positional argument of a model's forward is a graph batch vector
                return model(batch.x, edge_index, edge_weight=edge_weight)

    @torch.no_grad()
    def warm_up(self, model: nn.Module) -> None:
        """One eval-mode forward on a batch of training seeds drawn from a generator of its own (seeded 0, the
        same batch on every rank; the task's streams untouched), so that quantizers sized by their first batch
        take their shapes before DDP wraps the model (:mod:`qgnn.train.task`)."""
        self.prepare(model)
        model.eval()
        train = self.data.train_mask.nonzero().view(-1)
        loader = make_neighbor_loader(self.data, train, self.fanouts, self.batch_size, shuffle=True,
                                      generator=torch.Generator().manual_seed(0))
        self.batch_forward(model, next(iter(loader)).to(self.device))

    def train_epoch(self, model: nn.Module, opt: torch.optim.Optimizer, penalties: list[nn.Module]) -> float:
        """One pass over the training nodes, one optimizer step per batch; the seed-weighted mean loss."""
        self.prepare(getattr(model, "module", model))  # under DDP: the model it wraps
        model.train()
        total, seeds = 0.0, 0
        for batch in self._bar(self.loader, "batches", getattr(self.loader, "__len__", lambda: None)()):
            batch = batch.to(self.device)
            opt.zero_grad(set_to_none=True)
            n = batch.batch_size
            out = self.batch_forward(model, batch)
            loss = F.cross_entropy(out[:n], batch.y[:n]) + penalty(penalties)
            loss.backward()
            opt.step()
            total += loss.item() * n
            seeds += n
        return total / seeds if seeds else 0.0

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        return node_scores(self._full_forward(model), self.eval_data)

    def _full_forward(self, model: nn.Module) -> Tensor:
        """Logits of every node (the model is in eval mode): layer-wise inference over the whole graph
        (:func:`qgnn.models.layerwise.layerwise_forward`: one layer at a time, in chunks of target nodes,
        with the whole graph's GCN normalisation), or one plain forward for a model it cannot decompose
        (prompted layers)."""
        from qgnn.models.layerwise import layerwise_forward, supports_layerwise

        d = self.eval_data
        if supports_layerwise(model):
            bar = self._bar(None, "evaluating (layers)", len(model.convs))
            try:
                return layerwise_forward(model, d.x, d.edge_index, progress=lambda i, n: bar.update(1))
            finally:
                bar.close()
        return model(d.x, d.edge_index)

    def _bar(self, iterable, desc: str, total: int | None):
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, unit="", dynamic_ncols=True,
                    disable=None if self.progress is None else not self.progress)
