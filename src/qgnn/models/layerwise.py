"""Layer-wise full-graph inference: one layer at a time over every node, in chunks of target nodes.

Sampled mini-batches train a model; evaluating it on every node of a large graph with the plain forward
would hold every layer's activations and, for sum / mean over an ``edge_index``, ``[E, C]`` messages. As
PyG's large-graph examples do (``GraphSAGE.inference``), :func:`layerwise_forward` computes layer ``l`` for
all nodes before layer ``l + 1`` starts, so memory is the graph + one layer's input and output
(``N · (C_in + C_out)`` floats) + one chunk's work:

* GCN (a per-node transform, then a weighted sum): ĥ = Q_xw(Q_in(x) W) for every node, in row chunks
  (:meth:`QuantGCNConv.transform`), then each chunk of targets sums its in-neighbours' rows of ĥ through
  the sparse product with the *whole graph's* normalisation D^-1/2 (A + I) D^-1/2
  (:meth:`QuantGCNConv.propagate_rows`);
* GIN, GraphSAGE, GAT (message passing from the raw input): each chunk of targets is a bipartite block,
  its in-neighbours as sources (targets first, PyG's block convention) and the chunk as targets, with the
  block's rows of the transposed adjacency as a CSR matrix; the layer's own forward runs on it.

Per-node quantizer tables are read at global ids (:func:`qgnn.nn.context.node_ids`). Float PyG layers run
through their quantized twin with no quantizer (the same parameters; it computes what the float layer
computes), so one path serves every method, FP32 included. The result equals the plain eval forward up to
float summation order (tested). Models whose layers are wrapped by prompts (``qgnn.prompts``) are not
decomposed: :func:`supports_layerwise` says so and callers use the plain forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError
from qgnn.nn import QUANT_LAYER_FOR, QuantGCNConv, QuantModule
from qgnn.nn.context import node_ids
from qgnn.nn.graph import GraphView, by_target, to_csr

__all__ = ["DEFAULT_CHUNK", "layerwise_forward", "supports_layerwise"]

DEFAULT_CHUNK = 65536  # target nodes per chunk


def _as_quant(conv: nn.Module) -> QuantModule | None:
    if isinstance(conv, QuantModule):
        return conv
    cls = QUANT_LAYER_FOR.get(type(conv))
    return None if cls is None else cls.from_float(conv, {})


def supports_layerwise(model: nn.Module) -> bool:
    """A stack of message-passing layers (``model.convs``, :class:`qgnn.models.node._Stack`) whose every
    layer is a PyG GCN / GIN / SAGE / GAT layer or its quantized twin."""
    convs = getattr(model, "convs", None)
    return (isinstance(convs, nn.ModuleList) and hasattr(model, "activation") and len(convs) > 0
            and all(_as_quant(c) is not None and not isinstance(c, nn.Linear) for c in convs))


class _Graph:
    """The transposed adjacency as CSR (rows = targets), built once per flow, and GCN's normalised one."""

    def __init__(self, edge_index: Tensor, num_nodes: int):
        self.edge_index, self.n = edge_index, num_nodes
        self._csr: dict = {}

    def csr(self, flow: str, normalised: tuple | None = None, dtype=torch.float32):
        """(ptr [N + 1], col [E], weight [E] or None) of the messages under ``flow``; with ``normalised``
        = (improved, add_self_loops), GCN's gcn_norm of the whole graph (self loops as the plain forward)."""
        key = (flow, normalised, dtype if normalised is not None else None)
        if key not in self._csr:
            ei, w = self.edge_index, None
            if normalised is not None:
                from torch_geometric.nn.conv.gcn_conv import gcn_norm

                improved, loops = normalised
                ei, w = gcn_norm(ei, None, self.n, improved, loops, flow, dtype)
            src, dst = (ei[0], ei[1]) if flow == "source_to_target" else (ei[1], ei[0])
            self._csr[key] = by_target(src, dst, w, self.n)[:3]
        return self._csr[key]


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _gcn_layer(layer: QuantGCNConv, x: Tensor, graph: _Graph, chunk: int) -> Tensor:
    n = x.size(0)
    norm = (bool(layer.improved), bool(layer.add_self_loops)) if layer.normalize else None
    ptr, col, w = graph.csr(layer.flow, norm, x.dtype)
    mode = layer.integer_aggregation_mode(w is not None)
    parts = []
    for a, b in _chunks(n, chunk):  # the per-node half, row chunk by row chunk
        with node_ids(layer, torch.arange(a, b)):
            parts.append(layer.transform(x[a:b], None, mode))
    if mode == "xw":  # codes: per-tensor / per-channel scale, the same for every chunk
        h = (torch.cat([p[0] for p in parts]), parts[0][1], parts[0][2], parts[0][3])
    else:
        h = torch.cat(parts)
    del parts
    out = None
    for a, b in _chunks(n, chunk):
        lo, hi = int(ptr[a]), int(ptr[b])
        rows = torch.arange(b - a)
        dst = torch.repeat_interleave(rows, ptr[a + 1:b + 1] - ptr[a:b])
        g = GraphView(col[lo:hi], dst, n, b - a, None, True, ptr[a:b + 1] - lo)
        with node_ids(layer, torch.arange(a, b)):
            y = layer.propagate_rows(h, g, None if w is None else w[lo:hi], None, None, mode)
        if out is None:
            out = y.new_empty((n, y.size(1)))
        out[a:b] = y
    return out if out is not None else x.new_zeros((0, layer.out_channels))


def _block_layer(layer: QuantModule, x: Tensor, graph: _Graph, chunk: int) -> Tensor:
    n = x.size(0)
    ptr, col, _ = graph.csr(layer.flow)
    local = torch.full((n,), -1, dtype=torch.long)
    out = None
    for a, b in _chunks(n, chunk):
        lo, hi = int(ptr[a]), int(ptr[b])
        cols = col[lo:hi]
        # sources: the chunk's targets first (PyG's block convention), then their other in-neighbours
        local[a:b] = torch.arange(b - a)
        fresh = cols[local.index_select(0, cols) < 0].unique()
        local[fresh] = torch.arange(b - a, b - a + fresh.numel())
        srcs = torch.cat([torch.arange(a, b), fresh])
        adj = to_csr(ptr[a:b + 1] - lo, local.index_select(0, cols), x.new_ones(hi - lo), (b - a, srcs.numel()))
        local[a:b] = -1
        local[fresh] = -1
        with node_ids(layer, srcs):
            y = layer((x.index_select(0, srcs), x[a:b]), adj)
        if out is None:
            out = y.new_empty((n, y.size(1)))
        out[a:b] = y
    return out if out is not None else layer(x, torch.empty(2, 0, dtype=torch.long))


@torch.no_grad()
def layerwise_forward(model: nn.Module, x: Tensor, edge_index: Tensor, chunk_size: int = DEFAULT_CHUNK,
                      progress=None) -> Tensor:
    """The eval-mode output of ``model`` (a node-classification stack, :func:`supports_layerwise`) on the
    whole graph ``(x, edge_index)``, layer by layer in chunks of ``chunk_size`` target nodes (see the module
    docstring). ``progress``: an optional callable ``progress(layer_index, num_layers)`` after each layer."""
    if not supports_layerwise(model):
        raise ConfigError(f"layer-wise inference needs a stack of PyG GCN / GIN / SAGE / GAT layers "
                          f"(model.convs); {type(model).__name__} is not one")
    if int(chunk_size) < 1:
        raise ConfigError(f"layer-wise inference: chunk size {chunk_size} must be >= 1")
    was_training = model.training
    model.eval()
    try:
        n = x.size(0)
        graph = _Graph(edge_index.cpu(), n)
        h = x
        last = len(model.convs) - 1
        for i, conv in enumerate(model.convs):
            layer = _as_quant(conv)
            run = _gcn_layer if isinstance(layer, QuantGCNConv) else _block_layer
            h = run(layer, h, graph, int(chunk_size))
            if i < last:
                h = model.activation(h)
            if progress is not None:
                progress(i + 1, last + 1)
        return h
    finally:
        model.train(was_training)
