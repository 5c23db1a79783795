"""The FP32 PyTorch Geometric twin of an export file: what ``qgnn eval --fp32-reference`` compares against.

:func:`build_fp32_reference` rebuilds the file's architecture (``desc["model"]``, the layout of
:mod:`qgnn.export.format`) from plain PyG layers (``GCNConv``, ``SAGEConv``, ``GINConv`` with its MLP of
``Linear`` / ``BatchNorm1d`` / ``ReLU``, ``GATConv``; for graph tasks the per-depth readout
``Σ_k head_k(norm_k(pool(h^(k))))`` of :mod:`qgnn.models.graph`) and fills them with the file's weights
**dequantized**, ``ŵ = (q − z) · s`` (exactly the fake-quant weights; float weights as stored), biases and
BatchNorm statistics. It has no quantizers at all: it is the model a user would run in FP32 with the same
weights, so its latency and peak memory are the baseline the integer runtime has to beat.

The graph is given to it the way PyG runs fastest on CPU without ``torch_sparse``: a ``torch.sparse_csr``
``adj_t`` (rows = target nodes), on which ``GCNConv`` / ``SAGEConv`` / ``GINConv`` aggregate with one
``torch.sparse.mm`` (``torch_geometric.utils.spmm``) instead of a gather / scatter over ``[E, C]`` messages,
and ``GATConv`` takes its CSR pointers for a segment softmax. :func:`fp32_graph` builds it once, the "load"
step (as ``T.ToSparseTensor`` / ``T.GCNNorm`` would in a dataset's transform), so timing covers forwards only:

* GCN's normalisation ``D^-1/2 (A + I) D^-1/2`` is computed there with PyG's ``gcn_norm`` on the edge list
  (``add_remaining_self_loops``, as the runtime and ``GCNConv(cached=True)`` on an ``edge_index`` do), and the
  layer runs as ``GCNConv(normalize=False)`` on the normalised ``adj_t``;
* GAT's self-loops (``remove_self_loops`` then ``add_self_loops``, as ``GATConv(add_self_loops=True)``) are
  added there too, and the layer runs as ``GATConv(add_self_loops=False)``;
* a ``flow="target_to_source"`` layer gets the transposed matrix (PyG refuses that flow on sparse input).

A prompted file's prompts (``desc["prompts"]``) run in float at the same places as in training: GPF /
GPF-plus on the features (FP32 has no input quantizer, so one trained after it acts on the features here),
LoRAP on each layer's aggregate through PyG's aggregation hooks.

``to_torch_csr_tensor`` coalesces the edge list: a multigraph's repeated edges become one entry of weight
k, which gives the same sums but a different mean (SAGE) or softmax (GAT) than per-edge messages. PyG's
datasets are coalesced.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import add_self_loops, remove_self_loops, to_torch_csr_tensor

from qgnn.errors import CheckpointError, ConfigError

__all__ = ["FP32Graph", "FP32Reference", "build_fp32_reference", "from_file", "fp32_graph"]

POOLS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}
FLOWS = ("source_to_target", "target_to_source")


# --------------------------------------------------------------------------------------------------
# the graph, built once ("load")
# --------------------------------------------------------------------------------------------------


class FP32Graph:
    """The CSR ``adj_t`` forms of one graph that a reference's layers read, keyed by form (see :func:`form`)."""

    def __init__(self, num_nodes: int, adj: dict[tuple, Tensor]):
        self.num_nodes = num_nodes
        self.adj = adj

    def __getitem__(self, key: tuple) -> Tensor:
        try:
            return self.adj[key]
        except KeyError:
            raise ConfigError(f"this graph was built without the {key} adjacency the model needs; build it "
                              "with the model's own graph() or fp32_graph(..., forms=model.forms)") from None

    def nbytes(self) -> int:
        """Bytes held by the adjacencies (crow / col indices and values)."""
        return sum(t.crow_indices().nbytes + t.col_indices().nbytes + t.values().nbytes for t in self.adj.values())


def form(layer: dict) -> tuple:
    """Which adjacency a layer of the descriptor reads: ``("adj", flow)`` (plain, weight 1),
    ``("gcn", flow, improved, add_self_loops)`` (normalised) or ``("loops", flow)`` (GAT's self-loops)."""
    flow = layer.get("flow", "source_to_target")
    if flow not in FLOWS:
        raise CheckpointError(f"unknown flow {flow!r}")
    if layer["type"] == "gcn" and layer["options"]["normalize"]:
        o = layer["options"]
        return ("gcn", flow, bool(o["improved"]), bool(o["add_self_loops"]))
    if layer["type"] == "gat" and layer["options"]["add_self_loops"]:
        return ("loops", flow)
    return ("adj", flow)


ALL_FORMS = tuple(("gcn", f, imp, loops) for f in FLOWS for imp in (False, True) for loops in (False, True)) + tuple(
    (k, f) for k in ("adj", "loops") for f in FLOWS)


def _csr(edge_index: Tensor, weight: Tensor | None, n: int, flow: str) -> Tensor:
    """``adj_t`` with rows = the nodes that aggregate (targets for source_to_target)."""
    rows_cols = edge_index.flip(0) if flow == "source_to_target" else edge_index
    with warnings.catch_warnings():  # torch's "sparse CSR is beta" / "invariant checks disabled" notes
        warnings.simplefilter("ignore", UserWarning)
        return to_torch_csr_tensor(rows_cols, weight, size=(n, n))


def fp32_graph(edge_index: Tensor, num_nodes: int, forms: tuple | list = ALL_FORMS) -> FP32Graph:
    """Build the CSR ``adj_t`` forms of a graph once (the "load" step; module docstring). ``forms``: those a
    model needs (``FP32Reference.forms``, what :meth:`FP32Reference.graph` passes); default all of them."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ConfigError("edge_index must be a [2, num_edges] integer tensor")
    n = int(num_nodes)
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ConfigError(f"edge_index refers to nodes outside 0..{n - 1}")
    adj = {}
    for key in dict.fromkeys(forms):
        kind, flow = key[0], key[1]
        if kind == "gcn":
            ei, w = gcn_norm(edge_index, None, n, key[2], key[3], flow, torch.float32)
        elif kind == "loops":
            ei, _ = add_self_loops(remove_self_loops(edge_index)[0], num_nodes=n)
            w = None
        elif kind == "adj":
            ei, w = edge_index, None
        else:
            raise ConfigError(f"unknown adjacency form {key!r}")
        adj[key] = _csr(ei, w, n, flow)
    return FP32Graph(n, adj)


# --------------------------------------------------------------------------------------------------
# weights of the file
# --------------------------------------------------------------------------------------------------


def _weight(layer: dict, key: str, tensors: dict[str, Tensor], where: str) -> Tensor:
    """The weight ``key`` as float32: ``ŵ = (q − z) · s`` of its packed codes (the runtime's WeightQ unpacks
    them, with A2Q's per-row widths), or the stored float tensor (``<key>_float``)."""
    d = layer.get("slots", {}).get(key)
    if d is None:
        return tensors[layer[f"{key}_float"]].to(torch.float32)
    from .runtime import WeightQ  # the one decoder of packed weights: the reference cannot drift from it

    return WeightQ(d, tensors, f"{where}.{key}").dequant.to(torch.float32)


def _set(param: Tensor | None, value: Tensor | None, where: str) -> None:
    if param is None or value is None:
        if (param is None) != (value is None):
            raise CheckpointError(f"{where}: the file and the layer disagree on whether it exists")
        return
    if tuple(param.shape) != tuple(value.shape):
        raise CheckpointError(f"{where}: shape {tuple(value.shape)} in the file, the layer needs {tuple(param.shape)}")
    param.data.copy_(value)


def _opt(tensors, name):
    return None if name is None else tensors[name].to(torch.float32)


def _linear(layer: dict, tensors, where: str) -> nn.Linear:
    bias = _opt(tensors, layer.get("bias"))
    m = nn.Linear(layer["in"], layer["out"], bias=bias is not None)
    _set(m.weight, _weight(layer, "weight", tensors, where), f"{where}.weight")
    _set(m.bias, bias, f"{where}.bias")
    return m


def _batchnorm(layer: dict, tensors, where: str) -> nn.BatchNorm1d:
    w, b = _opt(tensors, layer.get("weight")), _opt(tensors, layer.get("bias"))
    m = nn.BatchNorm1d(layer["channels"], eps=float(layer["eps"]), affine=w is not None or b is not None)
    if m.affine:
        _set(m.weight, w if w is not None else torch.ones(layer["channels"]), f"{where}.weight")
        _set(m.bias, b if b is not None else torch.zeros(layer["channels"]), f"{where}.bias")
    _set(m.running_mean, _opt(tensors, layer["running_mean"]), f"{where}.running_mean")
    _set(m.running_var, _opt(tensors, layer["running_var"]), f"{where}.running_var")
    return m


def _seq_item(layer: dict, tensors, where: str) -> nn.Module:
    t = layer.get("type")
    if t == "linear":
        return _linear(layer, tensors, where)
    if t == "batchnorm":
        return _batchnorm(layer, tensors, where)
    if t == "relu":
        return nn.ReLU()
    raise ConfigError(f"{where}: layer type {t!r} has no FP32 PyG reference")


_REDUCE = {"add": "sum", "sum": "sum", "mean": "mean"}


def _reduce(layer: dict, where: str) -> str:
    r = _REDUCE.get(layer["options"]["aggr"])
    if r is None:
        raise ConfigError(f"{where}: aggregation {layer['options']['aggr']!r} has no FP32 PyG reference")
    return r


FP32_OPS: dict = {}  # export type -> builder (layer, tensors, where) -> the PyG module with the file's weights


def fp32_op(kind: str):
    """Decorator: the FP32 PyG builder of export type ``kind`` (``qgnn.nn.registry``'s kinds)."""

    def deco(fn):
        FP32_OPS[kind] = fn
        return fn

    return deco


def _conv(layer: dict, tensors, where: str) -> nn.Module:
    """One PyG convolution with the file's (dequantized) weights; the graph's preprocessing that PyG does
    inside the layer (normalisation, self-loops) is done by :func:`fp32_graph` instead."""
    t = layer.get("type")
    build = FP32_OPS.get(t)
    if build is None:
        raise ConfigError(f"{where}: layer type {t!r} has no FP32 PyG reference ({', '.join(sorted(FP32_OPS))})")
    return build(layer, tensors, where)


@fp32_op("gcn")
def _gcn(layer: dict, tensors, where: str) -> nn.Module:
    bias = _opt(tensors, layer.get("bias"))
    m = GCNConv(layer["in"], layer["out"], improved=bool(layer["options"]["improved"]), cached=False,
                add_self_loops=False, normalize=False, bias=bias is not None)
    _set(m.lin.weight, _weight(layer, "weight", tensors, where), f"{where}.weight")
    _set(m.bias, bias, f"{where}.bias")
    return m


@fp32_op("sage")
def _sage(layer: dict, tensors, where: str) -> nn.Module:
    bias = _opt(tensors, layer.get("bias"))
    root = bool(layer.get("root_weight"))
    m = SAGEConv(layer["in"], layer["out"], aggr=_reduce(layer, where),
                 normalize=bool(layer["options"]["normalize"]), root_weight=root, bias=bias is not None)
    _set(m.lin_l.weight, _weight(layer, "weight", tensors, where), f"{where}.weight")
    _set(m.lin_l.bias, bias, f"{where}.bias")
    if root:
        _set(m.lin_r.weight, _weight(layer, "weight_root", tensors, where), f"{where}.weight_root")
    return m


@fp32_op("gin")
def _gin(layer: dict, tensors, where: str) -> nn.Module:
    seq = nn.Sequential(*[_seq_item(sub, tensors, f"{where}.nn.{i}") for i, sub in enumerate(layer["nn"])])
    state = {k: v.clone() for k, v in seq.state_dict().items()}
    m = GINConv(seq, eps=float(layer["eps"]), train_eps=False, aggr=_reduce(layer, where))
    seq.load_state_dict(state)  # GINConv.__init__ re-initialises its MLP (reset_parameters)
    return m


@fp32_op("gat")
def _gat(layer: dict, tensors, where: str) -> nn.Module:
    bias = _opt(tensors, layer.get("bias"))
    o = layer["options"]
    m = GATConv(layer["in"], layer["out"], heads=layer["heads"], concat=bool(o["concat"]),
                negative_slope=float(o["negative_slope"]), dropout=0.0, add_self_loops=False,
                bias=bias is not None)
    _set(m.lin.weight, _weight(layer, "weight", tensors, where), f"{where}.weight")
    att = _weight(layer, "att", tensors, where)  # [2, H, C]: att_src, att_dst (exporter._conv)
    _set(m.att_src, att[0:1], f"{where}.att_src")
    _set(m.att_dst, att[1:2], f"{where}.att_dst")
    _set(m.bias, bias, f"{where}.bias")
    return m


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


class FP32Reference(nn.Module):
    """The FP32 PyG model of an export file (module docstring). ``model(x, graph)`` for node tasks,
    ``model(x, graph, batch)`` for graph tasks -> float logits; ``graph`` is :meth:`graph`'s result (an
    ``edge_index`` also works, at the cost of building the adjacency inside the call)."""

    def __init__(self, desc: dict, convs: list[nn.Module], forms: list[tuple], norms=None, heads=None,
                 readout_norms=None):
        super().__init__()
        m = desc["model"]
        self.desc = desc
        self.task, self.arch = desc["task"], m["arch"]
        self.num_features = desc["num_features"]
        self.convs = nn.ModuleList(convs)
        self.conv_forms = list(forms)
        self.forms = tuple(dict.fromkeys(forms))  # what fp32_graph has to build for this model
        if self.arch == "node_stack":
            self.act = F.elu if m["activation"] == "elu" else F.relu
        else:
            self.norms, self.heads = nn.ModuleList(norms), nn.ModuleList(heads)
            self.readout_norms = None if readout_norms is None else nn.ModuleList(readout_norms)
            self.pool = POOLS[m["pooling"]]
        self.prompts = None  # a prompted file's prompts (build_fp32_reference)
        self.requires_grad_(False)
        self.eval()

    def graph(self, edge_index: Tensor, num_nodes: int) -> FP32Graph:
        """The "load" step for this model: the adjacency forms its layers read (:func:`fp32_graph`)."""
        return fp32_graph(edge_index, num_nodes, self.forms)

    @torch.no_grad()
    def forward(self, x: Tensor, graph: FP32Graph | Tensor, batch: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != self.num_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ConfigError(f"the model takes node features [N, {self.num_features}], got {shape}")
        if not isinstance(graph, FP32Graph):
            graph = self.graph(graph, x.size(0))
        elif graph.num_nodes != x.size(0):
            raise ConfigError(f"the graph has {graph.num_nodes} nodes but x has {x.size(0)} rows")
        x = x.to(torch.float32)
        if self.arch == "node_stack":
            last = len(self.convs) - 1
            x = self._node_prompt(x)
            for i, (conv, key) in enumerate(zip(self.convs, self.conv_forms, strict=True)):
                x = self._conv(i, conv, x, graph[key])
                if i < last:
                    x = self.act(x)
            return x
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        size = int(batch.max()) + 1 if batch.numel() else 1
        out = self._readout(0, x, batch, size)
        h = self._node_prompt(x)
        for k, (conv, norm, key) in enumerate(zip(self.convs, self.norms, self.conv_forms, strict=True), start=1):
            h = F.relu(norm(self._conv(k - 1, conv, h, graph[key])))
            out = out + self._readout(k, h, batch, size)
        return out

    def _node_prompt(self, x: Tensor) -> Tensor:
        """GPF / GPF-plus of a prompted file on the features (FP32 has no input quantizer, so a prompt that
        the quantized model puts after it acts on the features here)."""
        p = self.prompts
        return p.node(x) if p is not None and p.has_node else x

    def _conv(self, i: int, conv, x: Tensor, adj) -> Tensor:
        """Layer ``i``; a prompted file's LoRAP acts on its aggregate through PyG's aggregation hooks (the
        fused ``message_and_aggregate`` path runs on a CSR ``adj_t``), as ``qgnn.prompts`` does in training."""
        p = self.prompts
        if p is None or not p.has_aggregate(i):
            return conv(x, adj)

        def hook(module, inputs, out):
            return p.aggregate(i, out.reshape(out.size(0), -1)).view_as(out)

        handles = [conv.register_aggregate_forward_hook(hook), conv.register_message_and_aggregate_forward_hook(hook)]
        try:
            return conv(x, adj)
        finally:
            for h in handles:
                h.remove()

    def _readout(self, k: int, h: Tensor, batch: Tensor, size: int) -> Tensor:
        pooled = self.pool(h, batch, size)
        if self.readout_norms is not None:
            pooled = self.readout_norms[k](pooled)
        return self.heads[k](pooled)


def build_fp32_reference(tensors: dict[str, Tensor], desc: dict) -> FP32Reference:
    """The FP32 PyG model of an export file's ``(tensors, descriptor)`` (:func:`qgnn.export.read_file`)."""
    if desc.get("task") == "rec":
        raise ConfigError("LightGCN (rec) export files have no FP32 PyG reference; evaluate them without "
                          "--fp32-reference")
    try:
        m = desc["model"]
        arch = m["arch"]
        if arch not in ("node_stack", "graph_readout"):
            raise ConfigError(f"model arch {arch!r} has no FP32 PyG reference (node_stack, graph_readout)")
        layers = m["convs"]
        convs = [_conv(layer, tensors, f"convs.{i}") for i, layer in enumerate(layers)]
        forms = [form(layer) for layer in layers]
        if arch == "node_stack":
            ref = FP32Reference(desc, convs, forms)
        else:
            rn = m.get("readout_norms")
            ref = FP32Reference(
                desc, convs, forms,
                norms=[_batchnorm(d, tensors, f"norms.{i}") for i, d in enumerate(m["norms"])],
                heads=[_linear(d, tensors, f"heads.{i}") for i, d in enumerate(m["heads"])],
                readout_norms=None if rn is None else [_batchnorm(d, tensors, f"readout_norms.{i}")
                                                       for i, d in enumerate(rn)])
    except KeyError as e:
        raise CheckpointError(f"export descriptor lacks {e}") from None
    if desc.get("prompts"):  # the file's prompts, in float, at the same places (qgnn.export.prompt_ops)
        from .prompt_ops import load_runtime_prompts

        ref.prompts = load_runtime_prompts(tensors, desc)
    return ref


def from_file(path: str | os.PathLike) -> FP32Reference:
    """Read an export file (validated, never unpickled) and build its FP32 PyG reference."""
    from .format import read_file

    tensors, desc = read_file(Path(path))
    try:
        return build_fp32_reference(tensors, desc)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
