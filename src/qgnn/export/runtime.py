"""Integer inference runtime: runs an export file (``qgnn.export.format``) with integer arithmetic.

Node models of GCN, SAGE, GIN and GAT layers run on the **packed executor** (:mod:`qgnn.export.packed`):
activations stay as packed 8 / 4 / 2-bit codes between layers, layers run in chunks of rows, and the
kernels are fbgemm's (quantized linear, rowwise embedding bag) through :mod:`qgnn.kernels.intops`.
``IntModel.prepare(x, edge_index)`` is the load step (graph plans, features encoded as codes) and
``IntModel.run`` one forward on it. What follows describes the **per-layer path**, which runs graph-level
models and layers the packed executor does not take (``IntModel.packed`` is None, ``packed_why`` says why),
and the backends named ``float`` / ``scipy`` / ``float_csr``.

Weights are unpacked to int8 once at load time (codes of ``b <= 8`` bits, a grid with ``qmax > 127`` shifted
by −128 so that it fits int8, the zero-point shifted with it). Each layer computes what the fake-quant
layer computes in eval mode (``qgnn.nn``), on codes:

* **Linear** (QuantLinear, GCN's X·W, SAGE's lin_l / lin_r, GAT's lin, GIN's MLP):
  ``acc = Σ_k (q_x − z_x)(q_w − z_w)`` in int32 (:func:`~qgnn.export.intops.int_linear`), then
  ``y = s_x s_w · acc + b``: one float rescale. On CPU at full float32 matmul precision the same exact
  integer sums come from one float GEMM on the centred codes (:func:`~qgnn.export.intops.centred_matmul_float`,
  exact by the 2^24 bound), which skips int_linear's zero-point passes.
* **Aggregation** (MixQ-GNN, Moustafa et al. 2025, Theorem 1): ``acc_i = Σ_j (q_e,ij − z_e)(q_h,j − z_h)``
  over the graph (:class:`~qgnn.export.intops.GraphPlan`), then ``s_e s_h · acc``: GCN sums the ``xw``
  codes weighted by the codes of the normalised adjacency; GIN the input codes (its self term
  ``(1 + ε) x̂_i`` joins the integer sum when ε = 0); SAGE sums the int32 accumulators of ``q_x W_lᵀ``
  (linearity: ``mean_j(x̂_j) Ŵ_lᵀ = s_x s_w mean_j(acc_j)``); GAT sums the ``xw`` codes weighted by the
  attention codes, per head.
  Backends (``agg``): see :mod:`qgnn.export.intops` (exact integer sums, all bit-identical).
* **Float where the method needs it**: GCN's normalisation D^-1/2 (A + I) D^-1/2 (per graph, cached), GAT's
  LeakyReLU + softmax, ELU / ReLU, BatchNorm, pooling, bias, the rescales, and a quantizer's rounding
  ``round(x / s) + z`` (one requantization per quantized slot).

Where a layer's operands cannot be factored (a float slot, per-channel activation scales inside a
matmul, per-node scales inside a neighbourhood sum) the layer runs the fake-quant computation in float on
the dequantized codes instead, which is exactly what the fake-quant model does. ``IntModel.paths`` lists
which path each op took.

Exactness: integer parts are exact; the outputs equal the fake-quant model's up to float rounding of the
rescales (float32 sums in the fake-quant model against exact integer sums here). When that rounding
difference meets a rounding boundary of a later quantizer, one code differs (a tie flip, see
``docs/integer.md``); tests and ``benchmarks/export.py`` measure how often predictions differ (target:
never).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import add_self_loops, remove_self_loops, scatter, softmax

from qgnn.errors import CheckpointError, ConfigError
from qgnn.quant import dequantize, quantize
from qgnn.quant.a2q import nearest_group

from .format import read_file
from .intops import GraphPlan, centred_matmul_float, int_linear, resolve_gemm
from .packing import packed_nbytes, unpack_bits

__all__ = ["IntModel", "load_int_model", "ActQuant", "WeightQ", "QTensor"]

POOLS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}


# --------------------------------------------------------------------------------------------------
# quantized values
# --------------------------------------------------------------------------------------------------


class QTensor:
    """Codes with their (scale, zero-point) broadcastable against them: ``x̂ = (q − z) · s``."""

    def __init__(self, codes: Tensor, scale: Tensor, zero_point: Tensor, granularity: str, qmax: int):
        self.codes, self.scale, self.zero_point = codes, scale, zero_point
        self.granularity = granularity
        self.offset = 128 if qmax > 127 else 0  # what makes the codes fit int8

    def dequant(self) -> Tensor:
        """Exactly the fake-quant output (``dequantize(*quant_int(x))`` contract of qgnn.quant)."""
        return dequantize(self.codes, self.scale, self.zero_point)

    def int8(self) -> tuple[Tensor, Tensor]:
        """(int8 codes, int32 zero-point) with the same differences q − z."""
        if self.offset:
            return (self.codes.to(torch.int16) - self.offset).to(torch.int8), (self.zero_point - self.offset).to(
                torch.int32)
        return self.codes.to(torch.int8), self.zero_point.to(torch.int32)

    def centered(self, dtype=torch.int32) -> Tensor:
        return self.codes.to(dtype).sub_(self.zero_point.to(dtype))  # one buffer

    @property
    def row_factorable(self) -> bool:
        """One scale per tensor or per row: it can be taken out of a sum over the channels."""
        return self.granularity in ("tensor", "node")

    @property
    def column_factorable(self) -> bool:
        """One scale per tensor or per channel: it can be taken out of a sum over the nodes."""
        return self.granularity in ("tensor", "channel")


def _table(d: dict, key: str, tensors: dict[str, Tensor], dtype, like: Tensor | None = None) -> Tensor:
    v = d.get(key)
    if v is None:  # zero_point null: all zero
        return torch.zeros(like.shape, dtype=dtype)
    return (tensors[v] if isinstance(v, str) else torch.tensor(v)).to(dtype)


def _a2q_grid(widths: Tensor, signed: bool, top: int, where: str) -> tuple[Tensor, Tensor]:
    """(qmin, qmax) per entry as floats, as ``qgnn.quant.a2q.a2q_grid``: signed [−2^(B−1), 2^(B−1) − 1],
    unsigned [0, 2^B − 1]."""
    lo = 2 if signed else 1
    if widths.numel() and (int(widths.min()) < lo or int(widths.max()) > top):
        raise CheckpointError(f"{where}: A2Q widths must lie in [{lo}, {top}]")
    w = widths.to(torch.float32)
    if signed:
        half = torch.exp2(w - 1)
        return -half, half - 1
    return torch.zeros_like(w), torch.exp2(w) - 1


class ActQuant:
    """An activation quantizer of the file: ``q = clamp(round(x / s) + z, qmin, qmax)``; A2Q (``kind``
    "a2q"): ``q = clamp(round(x / s), qmin(B), qmax(B))`` with a step and a width per entry (node, channel,
    or nearest-neighbour group picked per row as :meth:`qgnn.quant.a2q.A2QQuantizer._assign` does)."""

    def __init__(self, d: dict, tensors: dict[str, Tensor], where: str):
        self.bits, self.qmin, self.qmax, self.binary = d["bits"], d["qmin"], d["qmax"], d["binary"]
        self.granularity = d["granularity"]
        self.scale = _table(d, "scale", tensors, torch.float32)
        self.zero_point = _table(d, "zero_point", tensors, torch.int32, self.scale)
        _check_tables(self, where)
        self._zf = self.zero_point.to(torch.float32)
        self.a2q = d.get("kind") == "a2q"
        # a plain grid (one scale and zero-point, not binary, not A2Q): its numbers as Python scalars, read by
        # the packed runtime's per-chunk ops without a tensor read each time
        self.plain = self.granularity == "tensor" and not self.a2q and not self.binary
        if self.plain:
            self.s = float(self.scale.reshape(()))
            self.z = int(self.zero_point.reshape(()))
        if self.a2q:
            self.signed = bool(d["signed"])
            self.widths = _table(d, "widths", tensors, torch.int64)
            if self.widths.numel() != self.scale.numel():
                raise CheckpointError(f"{where}: A2Q widths and scales differ in length")
            self.tqmin, self.tqmax = _a2q_grid(self.widths, self.signed, self.bits, where)

    def _assign(self, x: Tensor) -> Tensor:
        return nearest_group(x, self.scale * self.tqmax, self.signed)

    def _a2q_call(self, x: Tensor, start: int) -> QTensor:
        if self.granularity == "nn":
            idx = self._assign(x) if x.size(0) else torch.zeros(0, dtype=torch.long)
            s, qmin, qmax = (t.index_select(0, idx).view(-1, 1) for t in (self.scale, self.tqmin, self.tqmax))
        else:
            s, qmin, qmax = (self._expand(t, x, start) for t in (self.scale, self.tqmin, self.tqmax))
        q = torch.maximum(torch.minimum(torch.round(x / s), qmax), qmin)  # A2Q's forward, op for op
        gran = "node" if self.granularity in ("node", "nn") else self.granularity
        return QTensor(q.to(torch.int16), s, torch.zeros((), dtype=torch.int32), gran, self.qmax)

    def _expand(self, t: Tensor, x: Tensor, start: int = 0) -> Tensor:
        if self.granularity == "tensor":
            return t.reshape(())
        if self.granularity == "channel":
            return t.view(1, -1)
        if start + x.size(0) > t.numel():
            raise ConfigError(f"per-node quantizer has {t.numel()} nodes but the input has {start + x.size(0)} "
                              "rows (per-node tables belong to the graph the model was trained on)")
        return t[start:start + x.size(0)].view(-1, 1)

    @property
    def span(self) -> int:
        """The largest ``qmax − qmin`` over the entries: unsigned codes ``q − qmin`` lie in [0, span]."""
        if self.a2q:
            return int((self.tqmax - self.tqmin).max()) if self.tqmax.numel() else 0
        return int(self.qmax) - int(self.qmin)

    def unsigned(self, x: Tensor, start: int = 0) -> tuple[Tensor, Tensor, Tensor, str]:
        """(``u = q − qmin`` as uint8, scale, ``z − qmin``, granularity "tensor" / "channel" / "node") of
        ``x``, the form the packed runtime stores (``x̂ = s (u − (z − qmin))``); scale and offset are 0-d,
        [C] or [rows]."""
        if self.a2q:
            if self.granularity == "nn":
                idx = self._assign(x) if x.size(0) else torch.zeros(0, dtype=torch.long)
                s, qmin, qmax = (t.index_select(0, idx) for t in (self.scale, self.tqmin, self.tqmax))
                gran = "node"
            elif self.granularity == "node":
                s, qmin, qmax = (self._expand(t, x, start).reshape(-1) for t in (self.scale, self.tqmin, self.tqmax))
                gran = "node"
            else:
                s, qmin, qmax = (self._expand(t, x, start) for t in (self.scale, self.tqmin, self.tqmax))
                gran = self.granularity
            bs, bmin, bmax = (t.view(-1, 1) if gran == "node" else t for t in (s, qmin, qmax))
            q = torch.maximum(torch.minimum(torch.round(x / bs), bmax), bmin)  # A2Q's forward, op for op
            u = q.sub_(bmin).to(torch.uint8)
            return u, s.reshape(-1) if s.dim() else s, (-qmin).to(torch.int32).reshape(-1) if qmin.dim() else (
                -qmin).to(torch.int32), gran
        qt = self(x, start)
        gran = self.granularity
        z = qt.zero_point
        u = (qt.codes.to(torch.int16) - int(self.qmin)).to(torch.uint8)
        s = qt.scale.reshape(-1) if qt.scale.dim() else qt.scale
        z = (z.reshape(-1) if z.dim() else z).to(torch.int32) - int(self.qmin)
        return u, s, z, gran

    def fake(self, x: Tensor, start: int = 0, inplace: bool = False) -> Tensor:
        """``x̂ = s (q − z)``, the fake-quant value of ``x``: ``self(x, start).dequant()`` bit for bit. On a plain
        grid in four ops, in place on ``x`` with ``inplace``: ``s · clamp(round(x / s), qmin − z, qmax − z)``
        (``round(x / s)`` is an integer-valued float, so adding z, clamping to [qmin, qmax] and subtracting z is
        exactly clamping to the shifted bounds)."""
        if not self.plain:
            return self(x, start).dequant()
        y = x.div_(self.s) if inplace else torch.div(x, self.s)
        return y.round_().clamp_(self.qmin - self.z, self.qmax - self.z).mul_(self.s)

    def __call__(self, x: Tensor, start: int = 0) -> QTensor:
        """Codes of ``x``; ``start``: the node id of its first row (per-node tables, row chunks)."""
        if self.a2q:
            return self._a2q_call(x, start)
        s = self._expand(self.scale, x, start)
        z = self._expand(self._zf, x, start)
        codes = quantize(x, s, None if self.binary else z, self.qmin, self.qmax, binary=self.binary)
        return QTensor(codes, s, self._expand(self.zero_point, x, start), self.granularity, self.qmax)


def _check_tables(q, where: str) -> None:
    if not bool((q.scale > 0).all()) or not bool(torch.isfinite(q.scale).all()):
        raise CheckpointError(f"{where}: scales must be finite and positive")
    if bool((q.zero_point < q.qmin).any()) or bool((q.zero_point > q.qmax).any()):
        raise CheckpointError(f"{where}: zero-points must lie in the grid [{q.qmin}, {q.qmax}]")
    if q.binary and bool((q.zero_point != 0).any()):
        raise CheckpointError(f"{where}: binary codes have zero-point 0")


class WeightQ:
    """A packed weight unpacked to int8 codes [O, K] (+ its scale / zero-point per tensor or output channel)."""

    def __init__(self, d: dict, tensors: dict[str, Tensor], where: str):
        self.bits, self.qmin, self.qmax, self.binary = d["bits"], d["qmin"], d["qmax"], d["binary"]
        self.shape = tuple(d["shape"])
        self.granularity = d["granularity"]
        self.scale = _table(d, "scale", tensors, torch.float32)
        self.zero_point = _table(d, "zero_point", tensors, torch.int32, self.scale)
        _check_tables(self, where)
        numel = 1
        for s in self.shape:
            numel *= s
        if d.get("kind") == "a2q":
            self._a2q_codes(d, tensors, where, numel)
        else:
            self._codes(d, tensors, where, numel)
        self.offset = 128 if self.qmax > 127 else 0
        self.q8 = (self.codes - self.offset).to(torch.int8).reshape(self.shape[0], -1)
        self.z8 = (self.zero_point - self.offset).to(torch.int32)
        self.rowsum = self.q8.to(torch.int32).sum(1)
        # centred codes (q − z)ᵀ as float32 integers, for intops.centred_matmul_float
        zc = self.z8.view(-1, 1) if self.z8.numel() > 1 else self.z8.reshape(())
        self.centred_t = (self.q8.to(torch.int32) - zc).to(torch.float32).t().contiguous()
        rows = [-1] + [1] * (len(self.shape) - 1)
        s = self.scale.view(rows) if self.scale.numel() > 1 else self.scale.reshape(())
        z = self.zero_point.view(rows) if self.zero_point.numel() > 1 else self.zero_point.reshape(())
        self.dequant = dequantize(self.codes, s, None if self.binary else z.to(torch.float32))

    def _a2q_codes(self, d, tensors, where, numel) -> None:
        """Rows packed one after another, each at its own width (one stream for a per-tensor width)."""
        widths = _table(d, "widths", tensors, torch.int64)
        if widths.numel() != self.scale.numel():
            raise CheckpointError(f"{where}: A2Q widths and scales differ in length")
        signed = bool(d["signed"])
        qmin, qmax = _a2q_grid(widths, signed, self.bits, where)
        buf = tensors[d["codes"]]
        rows = [(numel, 0)] if widths.numel() == 1 else [(numel // self.shape[0], r) for r in range(self.shape[0])]
        need = sum(packed_nbytes(k, int(widths[r])) for k, r in rows)
        if buf.numel() != need:
            raise CheckpointError(f"{where}: packed codes have {buf.numel()} bytes, the widths need {need}")
        out, pos = [], 0
        try:
            for k, r in rows:
                nb = packed_nbytes(k, int(widths[r]))
                out.append(unpack_bits(buf[pos:pos + nb], int(widths[r]), k).to(torch.int16) + int(qmin[r]))
                pos += nb
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from None
        self.codes = torch.cat(out).view(self.shape)

    def _codes(self, d, tensors, where, numel) -> None:
        try:
            stored = unpack_bits(tensors[d["codes"]], self.bits, numel).to(torch.int16)
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from None
        if self.binary:
            codes = stored * 2 - 1  # {0, 1} -> {-1, +1}
            if bool((stored > 1).any()):
                raise CheckpointError(f"{where}: binary codes must be 0 or 1")
        else:
            codes = stored + self.qmin
            if bool((codes > self.qmax).any()):
                raise CheckpointError(f"{where}: codes beyond the grid maximum {self.qmax}")
        self.codes = codes.view(self.shape)  # int16, the true codes

    def row_scale(self) -> Tensor:
        """Scale per output row, [O] (per tensor: broadcast)."""
        return self.scale.reshape(-1).expand(self.shape[0]) if self.scale.numel() == 1 else self.scale


def _slot(d: dict | None, tensors, where, cls=ActQuant):
    return None if d is None else cls(d, tensors, where)


def _requant(q: ActQuant | None, x: Tensor) -> Tensor:
    """A quantized slot on a float tensor: the fake-quant value (one requantization)."""
    return x if q is None else q(x).dequant()


# --------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------


class GraphCache:
    """The graph plans (:class:`~qgnn.export.intops.GraphPlan`, GCN's normalised edge weights) of the last
    graph a model saw, shared by its layers: each form of the graph (raw, with self-loops, normalised) is
    built once per graph, not once per layer (five GIN layers on a fresh batch: one CSR build, not five),
    and reused across calls on the same graph (a node task's one graph). The graph is held by reference
    and identified by object and version, so an edited or different edge_index rebuilds."""

    def __init__(self):
        self._key = None
        self._plans: dict = {}

    def get(self, edge_index: Tensor, n: int, form: tuple, build: Callable[[], object]):
        key = (id(edge_index), edge_index._version, n)
        if self._key is None or self._key[0] is not edge_index or self._key[1:] != key[1:]:
            self._key = (edge_index, *key[1:])  # the tensor itself: its id cannot be reused while held
            self._plans = {}
        if form not in self._plans:
            self._plans[form] = build()
        return self._plans[form]


class Ctx:
    """Per-forward settings, the model's graph cache and the record of which path each op took."""

    def __init__(self, gemm: str, agg: str, graphs: GraphCache | None = None):
        self.gemm, self.agg = gemm, agg
        self.graphs = graphs if graphs is not None else GraphCache()
        self.paths: dict[str, str] = {}


def _linear(name: str, x: Tensor | QTensor, w: WeightQ | Tensor, bias: Tensor | None, ctx: Ctx) -> Tensor:
    """``x̂ Ŵᵀ + b``: integer when x is a QTensor with one scale per row and W is quantized."""
    if isinstance(x, QTensor) and isinstance(w, WeightQ) and x.row_factorable:
        s = x.scale.reshape(-1, 1) * w.row_scale().view(1, -1) if x.scale.dim() else x.scale * w.row_scale()
        if resolve_gemm(ctx.gemm, x.codes.device, x.codes.size(0), w.shape[1], w.shape[0]) == "float":
            # the same exact integer sums, on centred codes: one GEMM, no zero-point passes
            y = centred_matmul_float(x.centered(torch.float32), w.centred_t).mul_(s)
        else:
            a, za = x.int8()
            y = int_linear(a, za, w.q8, w.z8, w.rowsum, ctx.gemm).to(torch.float32).mul_(s)
        ctx.paths[name] = "int8 x int8 -> int32"
        return y if bias is None else y + bias
    ctx.paths[name] = "float (fake-quant)"
    xf = x.dequant() if isinstance(x, QTensor) else x
    return F.linear(xf, w.dequant if isinstance(w, WeightQ) else w, bias)


# Rows quantized and multiplied at a time: about CHUNK_ELEMENTS input values (4 MB of float32) per chunk,
# so no full-size code or float copy of a wide input is held, while narrow inputs (64 channels: 16k rows)
# run in one or few chunks: each chunk costs a fixed ~0.5 ms of quantize / GEMM call overhead, which with
# fixed 256-row chunks made GIN on REDDIT-BINARY (~14k nodes per batch) 5x slower than FP32.
CHUNK_ELEMENTS = 1 << 20
MIN_CHUNK_ROWS = 256


def chunk_rows(in_features: int) -> int:
    """Rows per chunk for an input of ``in_features`` columns (at least MIN_CHUNK_ROWS)."""
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(1, in_features))


def _quant_linear(name: str, x: Tensor, q: ActQuant | None, w: WeightQ | Tensor, bias: Tensor | None,
                  ctx: Ctx) -> Tensor:
    """``Q(x) Ŵᵀ + b`` for float ``x``: quantized and multiplied in chunks of rows when the rows are
    independent (a per-tensor, per-node or per-row-group input scale), so no full-size code or float copy
    of a wide input (Cora: 2,708 x 1,433) is ever held; the result is the same as one pass."""
    if q is None:
        return _linear(name, x, w, bias, ctx)
    rows = chunk_rows(x.size(1) if x.dim() == 2 else 1)
    if not isinstance(w, WeightQ) or q.granularity == "channel" or x.size(0) <= rows:
        return _linear(name, q(x), w, bias, ctx)
    out = x.new_empty((x.size(0), w.shape[0]))
    for start in range(0, x.size(0), rows):
        out[start:start + rows] = _linear(name, q(x[start:start + rows], start), w, bias, ctx)
    return out


def _linear_acc(name: str, x: QTensor, w: WeightQ, ctx: Ctx) -> Tensor:
    a, za = x.int8()
    ctx.paths[name] = "int8 x int8 -> int32"
    return int_linear(a, za, w.q8, w.z8, w.rowsum, ctx.gemm)


def _weight(layer: dict, key: str, tensors, where) -> WeightQ | Tensor:
    d = layer["slots"].get(key)
    return WeightQ(d, tensors, f"{where}.{key}") if d is not None else tensors[layer[f"{key}_float"]]


def _opt(tensors, name):
    return None if name is None else tensors[name]


RUNTIME_OPS: dict[str, Callable] = {}  # export type -> per-layer op class (parses its spec, runs the layer)


def runtime_op(kind: str):
    """Class decorator: the per-layer runtime op of export type ``kind`` (``qgnn.nn.registry``'s kinds and the
    MLP pieces). The class parses its layer spec (``__init__(layer, tensors, where)``) and runs the layer; the
    packed executor reads its parsed quantizers and weights (:func:`qgnn.export.packed.packed_op`)."""

    def deco(cls):
        cls.kind = kind
        RUNTIME_OPS[kind] = cls
        return cls

    return deco


@runtime_op("linear")
class Linear:
    def __init__(self, layer, tensors, where):
        self.name = where
        s = layer["slots"]
        self.input, self.output = _slot(s.get("input"), tensors, f"{where}.input"), _slot(
            s.get("output"), tensors, f"{where}.output")
        self.weight = _weight(layer, "weight", tensors, where)
        self.bias = _opt(tensors, layer.get("bias"))

    def __call__(self, x, ctx):
        return _requant(self.output, _quant_linear(self.name, x, self.input, self.weight, self.bias, ctx))


@runtime_op("batchnorm")
class BatchNorm:
    def __init__(self, layer, tensors, where):
        self.weight, self.bias = _opt(tensors, layer.get("weight")), _opt(tensors, layer.get("bias"))
        self.mean, self.var = tensors[layer["running_mean"]], tensors[layer["running_var"]]
        self.eps = float(layer["eps"])
        if bool((self.var < 0).any()):
            raise CheckpointError(f"{where}: running_var must be non-negative")

    def __call__(self, x, ctx):
        return F.batch_norm(x, self.mean, self.var, self.weight, self.bias, False, 0.0, self.eps)


@runtime_op("relu")
class ReLU:
    def __init__(self, *_):
        pass

    def __call__(self, x, ctx):
        return F.relu(x)


class _Conv:
    def __init__(self, layer, tensors, where):
        self.name = where
        s = layer["slots"]
        self.q = {k: _slot(v, tensors, f"{where}.{k}") for k, v in s.items() if k not in ("weight", "weight_root",
                                                                                          "att")}
        self.bias = _opt(tensors, layer.get("bias"))
        self.flow = layer.get("flow", "source_to_target")
        if self.flow not in ("source_to_target", "target_to_source"):
            raise CheckpointError(f"{where}: unknown flow {self.flow!r}")

    def _endpoints(self, edge_index):
        return (edge_index[0], edge_index[1]) if self.flow == "source_to_target" else (edge_index[1], edge_index[0])

    def _in(self, x):
        q = self.q.get("input")
        return q(x) if q is not None else x

    def _finish(self, out, ctx):
        out = _requant(self.q.get("aggr"), out)
        if self.bias is not None:
            out = out + self.bias
        return _requant(self.q.get("output"), out)


@runtime_op("gcn")
class GCN(_Conv):
    def __init__(self, layer, tensors, where):
        super().__init__(layer, tensors, where)
        self.weight = _weight(layer, "weight", tensors, where)
        o = layer["options"]
        self.normalize, self.improved, self.add_self_loops = o["normalize"], o["improved"], o["add_self_loops"]

    def graph(self, edge_index, n, ctx):
        """(plan, normalised edge weights or None), from the model's graph cache."""
        def build():
            w, ei = None, edge_index
            if self.normalize:
                ei, w = gcn_norm(edge_index, None, n, self.improved, self.add_self_loops, self.flow, torch.float32)
            return GraphPlan(*self._endpoints(ei), n), w

        form = ("gcn", self.flow, self.normalize, self.improved, self.add_self_loops)
        return ctx.graphs.get(edge_index, n, form, build)

    def __call__(self, x, edge_index, ctx):
        n = x.size(0)
        plan, w = self.graph(edge_index, n, ctx)
        xw = _quant_linear(f"{self.name}.xw", x, self.q.get("input"), self.weight, None, ctx)
        qh, qe = self.q.get("xw"), self.q.get("edge")
        h = qh(xw) if qh is not None else None
        e = qe(w) if (qe is not None and w is not None) else None
        if h is not None and h.column_factorable and (w is None or e is not None):
            acc = plan.accumulate(h.centered(), None if e is None else e.centered().view(-1), ctx.agg)
            s = h.scale if e is None else e.scale * h.scale
            out = acc.to(torch.float32).mul_(s)
            ctx.paths[f"{self.name}.aggregate"] = "integer"
        else:
            hf = h.dequant() if h is not None else xw
            ef = e.dequant() if e is not None else w
            msg = hf.index_select(0, plan.src)
            if ef is not None:
                msg = ef.view(-1, 1) * msg
            out = scatter(msg, plan.dst, 0, dim_size=n, reduce="sum")
            ctx.paths[f"{self.name}.aggregate"] = "float (fake-quant)"
        return self._finish(out, ctx)


def _raw_plan(conv, edge_index, n, ctx):
    """The plan of the graph as given (GIN, SAGE), from the model's graph cache."""
    return ctx.graphs.get(edge_index, n, ("raw", conv.flow), lambda: GraphPlan(*conv._endpoints(edge_index), n))


@runtime_op("gin")
class GIN(_Conv):
    def __init__(self, layer, tensors, where):
        super().__init__(layer, tensors, where)
        self.eps = float(layer["eps"])
        self.reduce = {"add": "sum", "sum": "sum", "mean": "mean"}.get(layer["options"]["aggr"])
        if self.reduce is None:
            raise CheckpointError(f"{where}: GIN aggregation {layer['options']['aggr']!r} is not supported")
        self.nn = [_build(sub, tensors, f"{where}.nn.{i}") for i, sub in enumerate(layer["nn"])]

    def __call__(self, x, edge_index, ctx):
        n = x.size(0)
        plan = _raw_plan(self, edge_index, n, ctx)
        xq = self._in(x)
        if isinstance(xq, QTensor) and xq.column_factorable:
            # the self term (1 + ε) x̂_i is added in float after the rescale, as QuantGINConv's integer mode
            # does: the same float ops, so the two agree bit for bit on data with exact ties (one-hot features)
            acc = plan.accumulate(xq.centered(), None, ctx.agg)
            out = acc.to(torch.float32).mul_(xq.scale.reshape(1, -1))
            if self.reduce == "mean":
                out = out / plan.deg.clamp(min=1).to(out.dtype).view(-1, 1)
            out = out + (1 + self.eps) * xq.dequant()
            ctx.paths[f"{self.name}.aggregate"] = "integer"
        else:
            xf = xq.dequant() if isinstance(xq, QTensor) else xq
            out = scatter(xf.index_select(0, plan.src), plan.dst, 0, dim_size=n, reduce=self.reduce)
            out = out + (1 + self.eps) * xf
            ctx.paths[f"{self.name}.aggregate"] = "float (fake-quant)"
        out = _requant(self.q.get("aggr"), out)
        for m in self.nn:
            out = m(out, ctx)
        return _requant(self.q.get("output"), out)


@runtime_op("sage")
class SAGE(_Conv):
    def __init__(self, layer, tensors, where):
        super().__init__(layer, tensors, where)
        o = layer["options"]
        self.reduce = {"add": "sum", "sum": "sum", "mean": "mean"}.get(o["aggr"])
        if self.reduce is None:
            raise CheckpointError(f"{where}: SAGE aggregation {o['aggr']!r} is not supported")
        self.normalize = bool(o["normalize"])
        self.weight = _weight(layer, "weight", tensors, where)
        self.root = _weight(layer, "weight_root", tensors, where) if layer.get("root_weight") else None

    def __call__(self, x, edge_index, ctx):
        n = x.size(0)
        plan = _raw_plan(self, edge_index, n, ctx)
        xq = self._in(x)
        deg = plan.deg.clamp(min=1).to(torch.float32).view(-1, 1)
        aggr_q = self.q.get("aggr")
        integer = (isinstance(xq, QTensor) and xq.granularity == "tensor" and isinstance(self.weight, WeightQ)
                   and aggr_q is None)
        if integer:
            # lin_l(mean_j x̂_j) = s_x s_w · mean_j acc_j: sum the int32 accumulators of q_x W_lᵀ
            acc = plan.accumulate(_linear_acc(f"{self.name}.lin_l", xq, self.weight, ctx), None, ctx.agg)
            out = acc.to(torch.float32).mul_(xq.scale * self.weight.row_scale())
            if self.reduce == "mean":
                out = out / deg
            if self.bias is not None:
                out = out + self.bias
            ctx.paths[f"{self.name}.aggregate"] = "integer"
        else:
            if isinstance(xq, QTensor) and xq.column_factorable:
                out = plan.accumulate(xq.centered(), None, ctx.agg).to(torch.float32).mul_(xq.scale)
                out = out / deg if self.reduce == "mean" else out
                ctx.paths[f"{self.name}.aggregate"] = "integer"
            else:
                xf = xq.dequant() if isinstance(xq, QTensor) else xq
                out = scatter(xf.index_select(0, plan.src), plan.dst, 0, dim_size=n, reduce=self.reduce)
                ctx.paths[f"{self.name}.aggregate"] = "float (fake-quant)"
            out = _linear(f"{self.name}.lin_l", aggr_q(out) if aggr_q is not None else out, self.weight,
                          self.bias, ctx)
        if self.root is not None:
            out = out + _linear(f"{self.name}.lin_r", xq, self.root, None, ctx)
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=-1)
        return _requant(self.q.get("output"), out)


@runtime_op("gat")
class GAT(_Conv):
    def __init__(self, layer, tensors, where):
        super().__init__(layer, tensors, where)
        o = layer["options"]
        self.heads, self.ch = layer["heads"], layer["out"]
        self.concat, self.slope = bool(o["concat"]), float(o["negative_slope"])
        self.add_self_loops, self.fill_value = bool(o["add_self_loops"]), o["fill_value"]
        self.weight = _weight(layer, "weight", tensors, where)
        self.att = _weight(layer, "att", tensors, where)  # [2, H, C]: att_src, att_dst

    def graph(self, edge_index, n, ctx):
        def build():
            ei = edge_index
            if self.add_self_loops:
                ei, _ = remove_self_loops(ei)
                ei, _ = add_self_loops(ei, num_nodes=n)
            return GraphPlan(*self._endpoints(ei), n)

        return ctx.graphs.get(edge_index, n, ("self_loops" if self.add_self_loops else "raw", self.flow), build)

    def __call__(self, x, edge_index, ctx):
        n, heads, ch = x.size(0), self.heads, self.ch
        plan = self.graph(edge_index, n, ctx)
        xw = _quant_linear(f"{self.name}.xw", x, self.q.get("input"), self.weight, None, ctx)
        qh = self.q.get("xw")
        h = qh(xw) if qh is not None else None
        if h is not None and h.granularity == "tensor" and isinstance(self.att, WeightQ):
            # e_j = ĥ_j · â = s_h s_a Σ_c (q_h − z_h)(q_a − z_a), per head, in int32 (one scale per vector)
            hc = h.centered().view(n, heads, ch)
            za = self.att.zero_point.reshape(-1, 1, 1) if self.att.zero_point.numel() > 1 else self.att.zero_point
            ac = self.att.codes.to(torch.int32) - za.to(torch.int32)  # [2, H, C]
            sa = self.att.row_scale()
            a_src = (hc * ac[0]).sum(-1).to(torch.float32) * (h.scale * sa[0])
            a_dst = (hc * ac[1]).sum(-1).to(torch.float32) * (h.scale * sa[1])
            ctx.paths[f"{self.name}.attention_logits"] = "integer"
        else:
            hf = (h.dequant() if h is not None else xw).view(n, heads, ch)
            att = self.att.dequant if isinstance(self.att, WeightQ) else self.att
            a_src, a_dst = (hf * att[0]).sum(-1), (hf * att[1]).sum(-1)
            ctx.paths[f"{self.name}.attention_logits"] = "float (fake-quant)"
        alpha = a_src.index_select(0, plan.src) + a_dst.index_select(0, plan.dst)
        alpha = softmax(F.leaky_relu(alpha, self.slope), plan.dst, None, n)  # float: the method needs it
        qa = self.q.get("attention")
        at = qa(alpha) if qa is not None and alpha.numel() else None
        if h is not None and h.granularity == "tensor" and at is not None:
            hc = h.centered().view(n, heads, ch)
            ac = at.centered()  # [E, H]
            out = torch.stack([plan.accumulate(hc[:, k], ac[:, k], ctx.agg) for k in range(heads)], 1)
            out = out.to(torch.float32).mul_(at.scale * h.scale)
            ctx.paths[f"{self.name}.aggregate"] = "integer"
        else:
            hf = (h.dequant() if h is not None else xw).view(n, heads, ch)
            af = at.dequant() if at is not None else alpha
            out = scatter(af.unsqueeze(-1) * hf.index_select(0, plan.src), plan.dst, 0, dim_size=n, reduce="sum")
            ctx.paths[f"{self.name}.aggregate"] = "float (fake-quant)"
        out = _requant(self.q.get("aggr"), out.reshape(n, heads * ch))
        out = out if self.concat else out.view(n, heads, ch).mean(dim=1)
        if self.bias is not None:
            out = out + self.bias
        return _requant(self.q.get("output"), out)


def _build(layer: dict, tensors, where: str):
    op = RUNTIME_OPS.get(layer["type"])
    if op is None:
        raise CheckpointError(f"{where}: no runtime op for layer type {layer['type']!r} "
                              f"(known: {', '.join(sorted(RUNTIME_OPS))})")
    return op(layer, tensors, where)


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


class IntModel:
    """The integer model of an export file. ``model(x, edge_index)`` (node tasks) or
    ``model(x, edge_index, batch)`` (graph tasks) -> float logits.

    ``gemm`` / ``agg``: backends of :mod:`qgnn.export.intops` (``"auto"``, ``"reference"``, ...).
    ``paths``: which path each op of the last forward took.
    """

    def __init__(self, tensors: dict[str, Tensor], desc: dict, gemm: str = "auto", agg: str = "auto",
                 packed: bool | None = None):
        self.desc = desc
        self.task = desc["task"]
        self.gemm, self.agg = gemm, agg
        m = desc["model"]
        self.arch = m["arch"]
        try:
            self.convs = [_build(layer, tensors, f"convs.{i}") for i, layer in enumerate(m["convs"])]
            if self.arch == "node_stack":
                self.activation = F.elu if m["activation"] == "elu" else F.relu
            else:
                self.norms = [_build(d, tensors, f"norms.{i}") for i, d in enumerate(m["norms"])]
                self.heads = [_build(d, tensors, f"heads.{i}") for i, d in enumerate(m["heads"])]
                rn = m.get("readout_norms")
                self.readout_norms = None if rn is None else [_build(d, tensors, f"readout_norms.{i}")
                                                              for i, d in enumerate(rn)]
                self.pool = POOLS[m["pooling"]]
        except KeyError as e:
            raise CheckpointError(f"export descriptor lacks {e}") from None
        self.paths: dict[str, str] = {}
        self._graphs = GraphCache()  # shared by the layers (see GraphCache)
        self.prompts = None
        if desc.get("prompts") is not None:  # a prompted model: its prompts run in the packed executor only
            from .prompt_ops import load_runtime_prompts

            self.prompts = load_runtime_prompts(tensors, desc)
            if packed is False:
                raise ConfigError("a prompted model runs on the packed executor only (packed=False refused)")
            packed = True
        self.packed = self._packed_model(packed)

    def _packed_model(self, want: bool | None):
        """The packed executor (:mod:`qgnn.export.packed`) when it can run this model and the backends
        asked for are its own (``want``: None = when it can, True = required, False = never)."""
        from qgnn.kernels.intops import AGGREGATE_BACKENDS, LINEAR_BACKENDS

        from .packed import PackedGraphModel, PackedNodeModel, packed_support

        if want is False:
            return None
        ok, why = packed_support(self)
        names_ok = self.gemm in LINEAR_BACKENDS and self.agg in AGGREGATE_BACKENDS
        if not names_ok:
            why = f"backends {self.gemm} / {self.agg} belong to the per-layer path"
        if not (ok and names_ok):
            if want:
                raise ConfigError(f"the packed runtime cannot run this model: {why}")
            self.packed_why = why
            return None
        self.packed_why = ""
        cls = PackedNodeModel if self.arch == "node_stack" else PackedGraphModel
        return cls(self, linear=self.gemm, aggregate=self.agg)

    def prepare(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None):
        """The load step on one graph (or one batch of graphs, ``batch``): with the packed executor, the graph
        plans and the features encoded as the first layer's codes (the float features can be freed after);
        ``model.run`` then runs forwards on it. Other models keep the inputs as given."""
        self._check_inputs(x, edge_index)
        if self.packed is None:
            return {"x": x, "edge_index": edge_index, "batch": batch}
        if self.arch == "node_stack":
            return self.packed.prepare(x, edge_index)
        return self.packed.prepare(x, edge_index, batch)

    @torch.no_grad()
    def run(self, prepared) -> Tensor:
        """One forward on :meth:`prepare`'s result."""
        if self.packed is None:
            return self(prepared["x"], prepared["edge_index"], prepared["batch"])
        out = self.packed.run(prepared)
        self.paths = self.packed.paths()
        return out

    def _check_inputs(self, x, edge_index) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(1) != self.desc["num_features"]:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ConfigError(f"the model takes node features [N, {self.desc['num_features']}], got {shape}")
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ConfigError("edge_index must be a [2, num_edges] integer tensor")

    @torch.no_grad()
    def __call__(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None) -> Tensor:
        self._check_inputs(x, edge_index)
        x = x.to(torch.float32)
        if self.packed is not None and self.arch != "node_stack":  # a batch of graphs: load and run it
            out = self.packed(x, edge_index, batch)
            self.paths = self.packed.paths()
            return out
        if self.packed is not None:
            n = x.size(0)
            plans = self._graphs.get(edge_index, n, ("packed",), lambda: self.packed.plans(edge_index, n))
            out = self.packed.run({**plans, "x": self.packed.encode(x)})
            self.paths = self.packed.paths()
            return out
        ctx = Ctx(self.gemm, self.agg, self._graphs)
        if self.arch == "node_stack":
            for i, conv in enumerate(self.convs):
                x = conv(x, edge_index, ctx)
                if i < len(self.convs) - 1:
                    x = self.activation(x)
            self.paths = ctx.paths
            return x
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        size = int(batch.max()) + 1 if batch.numel() else 1
        out = self._readout(0, x, batch, size, ctx)
        h = x
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True), start=1):
            h = F.relu(norm(conv(h, edge_index, ctx), ctx))
            out = out + self._readout(k, h, batch, size, ctx)
        self.paths = ctx.paths
        return out

    def _readout(self, k, h, batch, size, ctx):
        pooled = self.pool(h, batch, size)
        if self.readout_norms is not None:
            pooled = self.readout_norms[k](pooled, ctx)
        return self.heads[k](pooled, ctx)


def load_int_model(path: str | os.PathLike, gemm: str = "auto", agg: str = "auto",
                   packed: bool | None = None) -> IntModel:
    """Read and validate an export file (never unpickles) and build its :class:`IntModel`."""
    tensors, desc = read_file(Path(path))
    try:
        if desc.get("task") == "rec":  # LightGCN: packed table, propagation, int8 ranking (qgnn.export.rec)
            from .rec import RecIntModel

            return RecIntModel(tensors, desc)
        return IntModel(tensors, desc, gemm=gemm, agg=agg, packed=packed)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


from . import ops  # noqa: E402, F401  (registers the ops of layer kinds added beside the built-ins)
