"""The packed execution of node and graph models: activations stay as packed codes, layers run in chunks.

This module decides which models run packed (:func:`packed_support`) and holds the executors
(:class:`PackedNodeModel`, :class:`PackedGraphModel`); the tables and the graph plan are in
:mod:`qgnn.export.tables`, the layer ops in :mod:`qgnn.export.packed_ops`.

Between layers every activation lives as a :class:`QRows` table: the unsigned codes ``u = q − qmin`` of the
quantizer that reads it, packed in fbgemm's fused rowwise layout at the narrowest container that holds
them (8, 4 or 2 bits per code, :mod:`qgnn.kernels.reference.rowwise`), with its scale and zero-point
(one per tensor, per channel or per node). No float32 copy of a whole layer exists: a layer reads its
input table chunk by chunk and writes its output table chunk by chunk.

Per layer kind (``x̂ = s_x (u_x − z_x)``, stored tables in capitals):

* **GCN**: ``H = Q_xw(X̂ Ŵᵀ)`` by the quantized GEMM with the requantisation to ``Q_xw``'s grid fused
  (:func:`qgnn.kernels.intops.qlinear`), then for each chunk of target rows
  ``y_i = Σ_j ê_ij ĥ_j`` over the normalised adjacency (self loops included) by the rowwise aggregation
  kernel (:func:`qgnn.kernels.intops.rowwise_aggregate`), the edge coefficients ``ê = Q_edge(D^-1/2 (A + I)
  D^-1/2)`` computed once per graph.
* **SAGE**: ``a_i = mean_j x̂_j`` by the aggregation kernel at the *input* width, then
  ``y_i = Q_aggr(a_i) Ŵ_lᵀ + b + x̂_i Ŵ_rᵀ`` by two quantized GEMMs on the chunk.
* **GIN**: ``a_i = Σ_j x̂_j + (1 + ε) x̂_i`` (one embedding bag over the CSR with a self loop per node),
  then the MLP on the chunk (its Linear layers quantized GEMMs, each with the BatchNorm after it folded in).

Each chunk's float result goes through the layer's remaining slots (aggr, bias, output), the activation,
and the next layer's input quantizer, and lands as codes in the next table. Scales are applied after the
sums (per tensor / channel), or folded into the edge coefficients (per node), so the packed rows hold only
codes and integer offsets (exact in the layout's float16 fields).

Arithmetic: the GEMM accumulates exactly in int32 (fbgemm or ``torch._int_mm``); the aggregation sums
float32 products of the codes, as the fake-quant model sums float32 products of their dequantized values, so
outputs agree with the fake-quant model within float32 rounding (benchmarks/runtime.py and the tests count
predictions that differ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qgnn.errors import ConfigError
from qgnn.kernels import intops as _intops  # SMALL_ROWS, read at call time (tests patch it)

from .packed_ops import PACKED_OPS, PackedSAGE, _gran, _Lin, _lin_label, _requant, packed_op
from .tables import CSRPlan, FloatRows, QRows, gran_is_node, row_chunk, target_chunk

__all__ = ["PACKED_OPS", "QRows", "CSRPlan", "PackedGraphModel", "PackedNodeModel", "PackedSAGE", "packed_op",
           "packed_support", "row_chunk", "target_chunk"]


# --------------------------------------------------------------------------------------------------
# which layers run packed
# --------------------------------------------------------------------------------------------------


def packed_support(model) -> tuple[bool, str]:
    """(True, "") when every layer of ``model`` (an IntModel) has a packed op that takes it, else (False, why)."""
    from .runtime import BatchNorm

    if model.arch not in ("node_stack", "graph_readout"):
        return False, f"architecture {model.arch!r}"
    if model.arch == "graph_readout" and not all(isinstance(m, BatchNorm) for m in model.norms):
        return False, "graph model with a norm other than BatchNorm"
    for i, conv in enumerate(model.convs):
        where = f"convs.{i}"
        op = PACKED_OPS.get(getattr(conv, "kind", None))
        if op is None:
            return False, f"{where}: {type(conv).__name__} runs the per-layer path"
        if conv.flow != "source_to_target":
            return False, f"{where}: flow {conv.flow}"
        if conv.q.get("input") is None:
            return False, f"{where}: float input"
        why = op.refuses(conv)
        if why:
            return False, f"{where}: {why}"
    return True, ""


class PackedNodeModel:
    """A node model (``IntModel`` of arch "node_stack") run on packed tables (module docstring).

    ``prepare(x, edge_index)`` is the load step a deployment does once: the first layer's input codes and
    the graph plans; ``run(prepared)`` is one forward. ``backend``: {"linear": .., "aggregate": ..} of
    :mod:`qgnn.kernels.intops`."""

    def __init__(self, model, linear: str = "auto", aggregate: str = "auto"):
        ok, why = packed_support(model)
        if not ok:
            raise ConfigError(f"the packed runtime cannot run this model: {why}")
        self.model = model
        self.backend = {"linear": linear, "aggregate": aggregate}
        self.layers = [PACKED_OPS[c.kind](c, self.backend) for c in model.convs]
        # prompts of a prompted model (qgnn.export.prompt_ops): GPF / GPF-plus on the features, LoRAP per layer
        self.prompts = getattr(model, "prompts", None)
        if self.prompts is not None:
            for i, layer in enumerate(self.layers):
                if self.prompts.has_aggregate(i):
                    layer.prompt = (lambda s, i=i: self.prompts.aggregate(i, s))
        self.activation = getattr(model, "activation", F.relu)  # graph models: ReLU after each norm

    def plans(self, edge_index: Tensor, n: int) -> dict:
        """The graph's plans (one per form the layers need) and each layer's edge coefficients."""
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ConfigError(f"edge_index refers to nodes outside 0..{n - 1}")  # before any normalisation
        plans: dict = {}
        for layer in self.layers:
            key = layer.form()
            if key not in plans:
                plans[key] = layer.plan(edge_index, n)
        return {"plans": plans, "coefs": [layer.coefficients(plans[layer.form()]) for layer in self.layers], "n": n}

    def encode(self, x: Tensor) -> QRows:
        """The first layer's input table of float features ``x`` (after the node prompt, if any)."""
        x = x.to(torch.float32)
        if self.prompts is not None and self.prompts.has_node:
            if self.prompts.node_after_quant:  # the prompt on the quantized input: layer 0 reads float rows
                return FloatRows(self.prompts.node(self.layers[0].input(x).dequant()))
            x = self.prompts.node(x)
        return QRows.encode(self.layers[0].input, x, self.layers[0].input_fields)

    def prepare(self, x: Tensor, edge_index: Tensor) -> dict:
        """The load step: plans and the encoded features (the float features may be freed after)."""
        return {**self.plans(edge_index, x.size(0)), "x": self.encode(x)}

    def run(self, prepared: dict) -> Tensor:
        out = self._layers(prepared, self._node_step)
        n = prepared["n"]
        return out if out is not None else torch.zeros((n, self.model.desc["num_classes"]))

    def _node_step(self, i: int, start: int, y: Tensor) -> Tensor:
        """A node stack's float chunk after layer ``i`` (not the last): the activation, in place."""
        return self.activation(y, inplace=True)

    def _layers(self, prepared: dict, step, keep_last: bool = True):
        """Run every layer; ``step(i, start, y)`` maps the float chunk after layer i before it is encoded for
        layer i + 1 (the last layer's chunks are gathered as float rows when ``keep_last``)."""
        x = prepared["x"]
        n = prepared["n"]
        out = None
        if n == 0:  # no rows: nothing to run (the callers return empty results)
            return None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            nxt = None if last else self.layers[i + 1].input
            fields = (not last) and self.layers[i + 1].input_fields
            state: dict = {}

            def emit(start, y, i=i, last=last, nxt=nxt, state=state, fields=fields):
                if last and keep_last:
                    if "out" not in state:
                        state["out"] = torch.empty((n, y.size(1)), dtype=torch.float32)
                    state["out"][start:start + y.size(0)] = y
                    return
                y = step(i, start, y)
                if last:
                    return
                if "out" not in state:
                    state["out"] = QRows.like(nxt, n, y, start, fields)
                state["out"].put(nxt, start, y, inplace=True)

            layer.run(x, prepared["plans"][layer.form()], emit, prepared["coefs"][i])
            x = state.get("out")
            out = x
        return out

    def __call__(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.run(self.prepare(x, edge_index))

    def paths(self) -> dict[str, str]:
        """Which path each op of the last forward took (``IntModel.paths``): "int8 x int8 -> int32" and
        "integer" (sums exact), or "float (fake-quant)" / "float32 sums of codes"."""
        out: dict[str, str] = {}
        for layer in self.layers:
            out.update(layer.paths)
        return out

    def kernels(self) -> dict[str, str]:
        """Which backend runs the linear layers and the aggregations here."""
        from qgnn.kernels.cpu.fbgemm import fbgemm_available
        from qgnn.kernels.intops import FLOAT_OUT_CHOICE, aggregate_backend, exact_backend, linear_backend

        auto = self.backend["linear"] == "auto"
        per_row = any(gran_is_node(layer.input) for layer in self.layers)
        linear = linear_backend(False, self.backend["linear"])[0]
        if auto and linear != "fbgemm" and fbgemm_available()[0]:  # a CPU where fbgemm saturates on full-range
            # codes: it still runs the layers whose codes cannot reach its int16 limits (4-bit ones)
            linear = f"fbgemm where a layer's codes cannot saturate it, else {linear}"
        out = {"linear": linear + (f", {exact_backend()[0]} (per-node scales)" if per_row and auto else ""),
               "aggregate": aggregate_backend(torch.empty(0, dtype=torch.uint8), self.backend["aggregate"])[0]}
        if auto:
            out["linear_small_layers"] = (f"float rows into a layer of <= {_intops.SMALL_ROWS} rows: exact float32 "
                                          "GEMM on the centred codes (blocks whose sums fit 2^24)")
        if FLOAT_OUT_CHOICE.table and self.backend["linear"] == "auto":  # codes in, float out: measured per
            # shape (rows bucket x K -> O), in this process
            out["linear_float_out"] = ", ".join(f"{m}x{k}->{o}: {name}"
                                                for (m, k, o), name in sorted(FLOAT_OUT_CHOICE.table.items()))
        return out


class PackedGraphModel(PackedNodeModel):
    """A graph-level model (``IntModel`` of arch "graph_readout", :mod:`qgnn.models.graph`) on packed tables:
    ``h_k = relu(norm_k(conv_k(h_{k-1})))`` layer by layer as the node stack, each chunk of ``h_k`` pooled
    into its graphs as it is produced (sum, mean or max), and ``out = Σ_k head_k(rnorm_k(pool(h_k)))`` on the
    pooled rows (one per graph). ``prepare(x, edge_index, batch)`` then ``run``."""

    def __init__(self, model, linear: str = "auto", aggregate: str = "auto"):
        super().__init__(model, linear, aggregate)
        self.heads = [(m, _Lin(m.weight, m.bias, linear)) for m in model.heads]
        self.pooling = model.desc["model"]["pooling"]
        # each layer's norm, or None where the layer's op folded it into its last GEMM (PackedGIN.absorb_norm)
        self.norms = [None if getattr(op, "absorb_norm", lambda _: False)(bn) else bn
                      for op, bn in zip(self.layers, model.norms, strict=True)]

    def prepare(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> dict:
        n = x.size(0)
        batch = torch.zeros(n, dtype=torch.long) if batch is None else batch.long()
        size = int(batch.max()) + 1 if batch.numel() else 1
        counts = torch.bincount(batch, minlength=size)
        p = {**self.plans(edge_index, n), "x": self.encode(x), "batch": batch, "size": size, "counts": counts}
        p["pooled0"] = self._pool_all(x.to(torch.float32), batch, size, counts)
        return p

    def _pool_all(self, h: Tensor, batch: Tensor, size: int, counts: Tensor) -> Tensor:
        acc = self._pool_init(size, h.size(1))
        self._pool_into(acc, h, batch)
        return self._pool_finish(acc, counts)

    def _pool_init(self, size: int, c: int) -> Tensor:
        return torch.full((size, c), float("-inf")) if self.pooling == "max" else torch.zeros((size, c))

    def _pool_into(self, acc: Tensor, y: Tensor, idx: Tensor) -> None:
        if self.pooling == "max":
            acc.scatter_reduce_(0, idx.view(-1, 1).expand_as(y), y, "amax", include_self=True)
        else:  # rows added in order into the graphs' sums (one op); one chunk gives the per-layer path's float
            # sums (PyG's global_add_pool: a scatter-add into zeros, in the same order) exactly
            acc.index_add_(0, idx, y)

    def _pool_finish(self, acc: Tensor, counts: Tensor) -> Tensor:
        if self.pooling == "max":
            return acc.masked_fill_((counts == 0).view(-1, 1), 0.0)  # an empty graph pools to 0, as PyG
        if self.pooling == "mean":
            return acc.div_(counts.clamp(min=1).to(acc.dtype).view(-1, 1))
        return acc

    def _readout(self, k: int, pooled: Tensor) -> Tensor:
        rn = self.model.readout_norms
        if rn is not None:
            pooled = rn[k](pooled, None)
        m, lin = self.heads[k]
        return _requant(m.output, lin(m.input, pooled, 0, small=pooled.size(0) <= _intops.SMALL_ROWS), 0)

    def run(self, prepared: dict) -> Tensor:
        batch, size, counts = prepared["batch"], prepared["size"], prepared["counts"]
        pools: list[Tensor] = []

        def step(i, start, y):
            norm = self.norms[i]
            y = F.relu(y if norm is None else norm(y, None), inplace=True)
            if len(pools) <= i:
                pools.append(self._pool_init(size, y.size(1)))
            self._pool_into(pools[i], y, batch[start:start + y.size(0)])
            return y

        self._layers(prepared, step, keep_last=False)
        for k in range(len(pools), len(self.layers)):  # no rows (an empty batch): every pool is empty
            pools.append(self._pool_init(size, self.heads[k + 1][0].weight.shape[1]))
        out = self._readout(0, prepared["pooled0"])
        for k, acc in enumerate(pools, start=1):
            out = out + self._readout(k, self._pool_finish(acc, counts))
        for k, (m, lin) in enumerate(self.heads):
            self.layers[0].paths[f"heads.{k}"] = _lin_label(lin, _gran(m.input))
        return out

    def __call__(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> Tensor:
        return self.run(self.prepare(x, edge_index, batch))
