"""Which global nodes the rows of the next forward are: the mini-batch context of quantized layers.

A model trained on sampled mini-batches sees a different subgraph each step; row ``i`` of a batch is node
``n_id[i]`` of the whole graph (PyG's ``NeighborLoader`` / ``NodeLoader`` put it in ``batch.n_id``). State
that belongs to nodes must be looked up by that global id, not by row:

* per-node quantizers (A2Q's step and width per node) index their tables with it;
* Degree-Quant's protective mask draws node i's protection with the probability computed from the *whole*
  graph's in-degrees (a sampled subgraph caps in-degrees at the fanout, which would flatten the CDF);

``with node_ids(model, batch.n_id): out = model(batch.x, batch.edge_index)`` sets it for every quantized
layer of ``model`` (and the model itself, for the method hooks) and clears it on exit. Outside the context
row i is node i, as before. The ids are a plain attribute: not state, not saved.

:func:`attach_graph` tells the model, once before training on mini-batches, which whole graph the ids refer
to: every object that keeps per-node state and defines ``on_full_graph(edge_index, num_nodes)`` (A2Q's
per-node tables size themselves to ``num_nodes``; Degree-Quant's mask computes the in-degree CDF) is called.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from qgnn.errors import ConfigError

__all__ = ["attach_graph", "current_node_ids", "node_ids"]

_ATTR = "_qgnn_node_ids"


@contextmanager
def node_ids(model: nn.Module, ids: Tensor | None) -> Iterator[nn.Module]:
    """Within the block, rows of ``model``'s inputs are the global nodes ``ids`` (a 1-d integer tensor);
    None: row i is node i. Restores the previous ids on exit (contexts nest)."""
    if ids is not None and (not isinstance(ids, Tensor) or ids.dim() != 1 or ids.is_floating_point()):
        raise ConfigError("node_ids takes a 1-d integer tensor of global node ids (PyG's batch.n_id)")
    # the model itself carries them too (the method hooks read them there); a DDP wrapper passes on to the model
    # it wraps (torchrun: the forward hooks are the inner model's)
    inner = model.module if isinstance(model, DistributedDataParallel) else None
    mods = [model, *(m for m in model.modules() if m is not model and (hasattr(m, "SLOTS") or m is inner))]
    saved = [m.__dict__.get(_ATTR) for m in mods]
    for m in mods:
        m.__dict__[_ATTR] = ids
    try:
        yield model
    finally:
        for m, old in zip(mods, saved, strict=True):
            m.__dict__[_ATTR] = old


def current_node_ids(module: nn.Module) -> Tensor | None:
    """The global ids of ``module``'s input rows set by :func:`node_ids` (None: row i is node i)."""
    return module.__dict__.get(_ATTR)


def attach_graph(model: nn.Module, edge_index: Tensor, num_nodes: int) -> int:
    """Call ``on_full_graph(edge_index, num_nodes)`` once on every sub-module of ``model`` and every
    ``node_protect`` hook of its quantized layers that defines it (each object once); returns how many.

    The graph is the whole graph whose node ids :func:`node_ids` later passes (``edge_index``: messages
    ``edge_index[0] -> edge_index[1]``)."""
    seen: set[int] = set()
    targets = []
    for m in model.modules():
        for obj in (m, getattr(m, "node_protect", None)):
            if obj is not None and callable(getattr(obj, "on_full_graph", None)) and id(obj) not in seen:
                seen.add(id(obj))
                targets.append(obj)
    for obj in targets:
        obj.on_full_graph(edge_index, int(num_nodes))
    return len(targets)
