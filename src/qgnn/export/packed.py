"""The packed execution of node models: activations stay as packed codes, layers run in chunks of rows.

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
* **GIN**: ``a_i = (1 + ε) x̂_i + Σ_j x̂_j``, then the MLP on the chunk (its Linear layers quantized GEMMs).

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
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from qgnn.errors import ConfigError
from qgnn.kernels.intops import PreparedLinear, qlinear, qlinear_from_float, rowwise_aggregate, rowwise_values
from qgnn.kernels.reference.rowwise import container_bits, pack_rows, row_bytes, unpack_rows

__all__ = ["QRows", "CSRPlan", "PackedGraphModel", "PackedNodeModel", "packed_support", "row_chunk",
           "target_chunk"]

GEMM_BYTES = 1 << 18  # unpacked input codes per GEMM chunk: 256 KB (Cora: 256 rows of 1,433 features)


def row_chunk(channels: int) -> int:
    """Rows per GEMM chunk for ``channels`` input codes a row: about GEMM_BYTES (at least 256 rows), so the
    unpacked codes and the kernel's copy of them stay small beside the tables (peak memory), while a
    million-row layer still runs in a few hundred kernel calls."""
    return max(256, GEMM_BYTES // max(1, channels))

TARGET_BYTES = 1 << 20  # a chunk of aggregated float rows: 1 MB, so the chain after the kernel stays in cache


def target_chunk(channels: int) -> int:
    """Target rows per aggregation chunk: about TARGET_BYTES of float32 results (at least 256 rows)."""
    return max(256, TARGET_BYTES // (4 * max(1, channels)))


def gran_is_node(q) -> bool:
    """Per-node tables (A2Q node or nearest-neighbour groups)."""
    return q.granularity in ("node", "nn")


def _plain(q) -> bool:
    """A per-tensor, non-binary, non-A2Q grid: encoded straight into the table (QRows.put)."""
    return q.granularity == "tensor" and not q.a2q and not q.binary


def _bits_for(span: int) -> int:
    return container_bits(max(1, int(span).bit_length()))


class QRows:
    """An activation table: packed unsigned codes [N, C] with scale and zero-point (module docstring).

    ``fields``: rows in fbgemm's fused layout (scale / bias per row) for tables that are aggregated; a table
    that is only multiplied (GCN's input) keeps the code bytes alone, which the GEMM reads in place."""

    def __init__(self, n: int, channels: int, span: int, granularity: str, like_scale: Tensor, like_zero: Tensor,
                 fields: bool = True):
        self.n, self.channels, self.span, self.fields = n, channels, span, fields
        self.bits = _bits_for(span)
        self.granularity = granularity
        self.rows = torch.empty((n, row_bytes(channels, self.bits, fields)), dtype=torch.uint8)
        if granularity == "node":
            self.scale = torch.empty(n, dtype=torch.float32)
            self.zero = torch.empty(n, dtype=torch.int32)
        else:
            self.scale, self.zero = like_scale.to(torch.float32), like_zero.to(torch.int32)

    @classmethod
    def like(cls, q, n: int, first: Tensor, start: int = 0, fields: bool = True) -> QRows:
        """An empty table for ``n`` rows of ``q``'s codes, shaped by the first chunk ``first``."""
        if _plain(q):
            return cls(n, first.size(1), q.span, "tensor", q.scale.reshape(()), q.zero_point.reshape(()) - int(q.qmin),
                       fields)
        _, s, z, gran = q.unsigned(first[:1] if gran_is_node(q) else first, start)
        return cls(n, first.size(1), q.span, gran, s, z, fields)

    @classmethod
    def encode(cls, q, x: Tensor, fields: bool = True, chunk: int | None = None) -> QRows:
        """The table of ``q``'s codes of the float rows ``x`` (encoded chunk by chunk)."""
        chunk = chunk or row_chunk(4 * x.size(1))
        out = cls.like(q, x.size(0), x, 0, fields)
        for start in range(0, x.size(0), chunk):
            out.put(q, start, x[start:start + chunk])
        return out

    def put(self, q, start: int, x: Tensor, inplace: bool = False) -> None:
        """Encode float rows ``x`` with quantizer ``q`` into rows ``start ..``: for a per-tensor grid straight
        into the table, ``u = clamp(round(x / s) + (z − qmin), 0, span)`` (the quantizer's own ops: x / s,
        round half to even), no code tensor in between; otherwise through ``q.unsigned``. ``inplace``: ``x``
        is scratch and may be overwritten."""
        if _plain(q) and self.granularity == "tensor":
            y = x.div_(self.scale) if inplace else torch.div(x, self.scale)
            y.round_().add_(float(self.zero)).clamp_(0, self.span)
            if self.bits == 8:
                self.rows[start:start + x.size(0), :self.channels].copy_(y)
                if self.fields:
                    self._fields(start, start + x.size(0), -float(self.zero))
                return
            u = y.to(torch.uint8)
            self.write(start, u, self.scale, self.zero)
            return
        u, s, z, _ = q.unsigned(x, start)
        self.write(start, u, s, z)

    def _fields(self, start: int, end: int, bias) -> None:
        pack_rows(torch.empty((end - start, 0), dtype=torch.uint8), self.bits, 1.0, bias,
                  out=self.rows[start:end, row_bytes(self.channels, self.bits, False):])

    def write(self, start: int, u: Tensor, s: Tensor, z: Tensor) -> None:
        """Store the codes of rows ``start .. start + len(u)`` (their scale / zero-point when per node)."""
        end = start + u.size(0)
        if self.granularity == "node":
            self.scale[start:end] = s
            self.zero[start:end] = z
            bias = -z.to(torch.float32)
        elif self.granularity == "tensor":
            bias = -float(self.zero)
        else:
            bias = 0.0  # per-channel zero-points are subtracted after the sum (aggregate)
        pack_rows(u, self.bits, 1.0, bias, out=self.rows[start:end], fields=self.fields)

    def codes(self, start: int, end: int, pad: bool = False) -> Tensor:
        """Unsigned codes of rows ``start .. end`` as contiguous uint8 [rows, C] (a view where it can be);
        ``pad``: a planar table's rows may keep zero padding columns (a GEMM pads its weights to match)."""
        if self.bits == 8:
            return self.rows[start:end, :self.channels].contiguous()
        return unpack_rows(self.rows[start:end], self.bits, self.channels, self.fields, pad and not self.fields)[0]

    def row_params(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        """(scale, zero-point) for rows ``start .. end``: 0-d, [C] or [rows]."""
        if self.granularity == "node":
            return self.scale[start:end], self.zero[start:end]
        return self.scale, self.zero

    def dequant(self, start: int, end: int) -> Tensor:
        """``x̂ = s (u − z')`` of rows ``start .. end``, float32 (a fused table decodes through fbgemm)."""
        s, z = self.row_params(start, end)
        if self.fields:  # the rows' bias fields already hold −z' (per tensor / node)
            v = rowwise_values(self.rows, self.bits, self.channels, start, end)
            if self.granularity == "channel":
                v.sub_(z.to(torch.float32))
        else:
            v = self.codes(start, end).to(torch.float32)
            v.sub_(z.view(-1, 1).to(torch.float32) if self.granularity == "node" else z.to(torch.float32))
        return v.mul_(s.view(-1, 1) if self.granularity == "node" else s)

    def aggregate(self, plan: CSRPlan, start: int, end: int, mode: str = "sum", backend: str = "auto",
                  coef: Coefficients | None = None) -> Tensor:
        """``Σ_j e_ij x̂_j`` (``mode`` "mean": divided by the in-degree) for targets ``start .. end``;
        ``coef``: a layer's edge coefficients ``e = s_e · c`` (default: the plan's own values, or 1)."""
        values = None if coef is None else coef.codes
        indptr, indices, values = plan.chunk(start, end, values)
        c_scale = 1.0 if coef is None else coef.scale
        if self.granularity == "node":  # fold the per-node scales into the coefficients
            sj = self.scale.index_select(0, indices.long())
            values = sj if values is None else values * sj
            if mode == "mean":
                values = values / plan.degree(start, end).clamp(min=1).to(torch.float32).repeat_interleave(
                    plan.degree(start, end))
            out = rowwise_aggregate(self.rows, self.bits, self.channels, indptr, indices, values, "sum", backend)
            return out.mul_(c_scale) if coef is not None else out
        out = rowwise_aggregate(self.rows, self.bits, self.channels, indptr, indices, values, mode, backend)
        if self.granularity == "channel":
            if values is None:
                wsum = plan.degree(start, end).to(torch.float32)
                if mode == "mean":
                    wsum = (wsum > 0).to(torch.float32)
            else:
                wsum = plan.weight_sum(start, end, None if coef is None else coef.codes)
            out -= wsum.view(-1, 1) * self.zero.to(torch.float32).view(1, -1)
        return out.mul_(self.scale * c_scale if coef is not None else self.scale)

    def exact(self, plan: CSRPlan, coef: Coefficients | None = None) -> bool:
        """Whether every float32 partial sum of :meth:`aggregate` is an integer float32 holds exactly
        (products of integer codes and integer coefficients, |Σ| <= 2^24), so the sum *is* MixQ-GNN's
        integer sum: per-tensor or per-channel codes, integer (or no) coefficients, and a bound
        ``max_i Σ_j |c_ij| · max |u − z| <= 2^24``."""
        if self.granularity == "node" or (coef is None and plan.values is not None) or (
                coef is not None and not coef.integer):
            return False
        zmax = int(self.zero.abs().max()) if self.zero.numel() else 0
        return plan.bound(None if coef is None else coef.codes) * (self.span + zmax) <= FLOAT_EXACT

    def nbytes(self) -> int:
        return self.rows.numel() + (self.scale.numel() + self.zero.numel()) * 4


FLOAT_EXACT = 1 << 24  # float32 holds every integer of magnitude <= 2^24 exactly


class FloatRows:
    """Float rows [N, C] behind :class:`QRows`' interface (granularity "float": scale 1, offset 0), so that a
    layer reads them where it reads codes: the first layer's input when a node prompt acts on its quantized
    input (``PromptConfig.node_after_quant``: x̂ = Q_in(x), then x̂ + prompt(x̂) enters the layer in float,
    as in the fake-quant model). Linear layers take _Lin's float branch; aggregation is a float CSR sum."""

    granularity = "float"
    fields = True

    def __init__(self, x: Tensor):
        self.x = x.to(torch.float32)
        self.n, self.channels = self.x.shape
        self.scale = torch.tensor(1.0)
        self.zero = torch.tensor(0, dtype=torch.int32)

    def codes(self, start: int, end: int, pad: bool = False) -> Tensor:
        return self.x[start:end].clone()  # _Lin's float branch works in place on what it gets

    def row_params(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        return self.scale, self.zero

    def dequant(self, start: int, end: int) -> Tensor:
        return self.x[start:end].clone()

    def exact(self, plan, coef=None) -> bool:
        return False

    def aggregate(self, plan, start: int, end: int, mode: str = "sum", backend: str = "auto", coef=None) -> Tensor:
        ptr, idx, v = plan.chunk(start, end, None if coef is None else coef.codes)
        deg = (ptr[1:] - ptr[:-1]).long()
        rows = self.x.index_select(0, idx.long())
        if v is not None:
            rows = rows * v.view(-1, 1)
        tgt = torch.repeat_interleave(torch.arange(end - start), deg)
        out = torch.zeros((end - start, self.channels)).index_add_(0, tgt, rows)
        if mode == "mean":
            out /= deg.clamp(min=1).to(torch.float32).view(-1, 1)
        return out if coef is None else out.mul_(coef.scale)

    def nbytes(self) -> int:
        return self.x.numel() * 4


class Coefficients:
    """A layer's edge coefficients in a plan's order, ``e = scale · codes``: the centred integer codes
    ``q_e − z_e`` of a per-tensor edge quantizer (``integer``) with its scale, or float values with scale 1."""

    def __init__(self, codes: Tensor, scale: float = 1.0, integer: bool = False):
        self.codes, self.scale, self.integer = codes.to(torch.float32).reshape(-1), float(scale), integer

    @classmethod
    def of(cls, q, values: Tensor) -> Coefficients:
        """Edge quantizer ``q`` (None: float) applied to the plan's ``values``."""
        if q is None:
            return cls(values)
        if q.granularity == "tensor" and not q.a2q and not q.binary:
            qt = q(values)
            return cls(qt.codes.to(torch.int32) - qt.zero_point.reshape(()).to(torch.int32),
                       float(qt.scale.reshape(())), True)
        return cls(q(values).dequant())


class CSRPlan:
    """One form of a graph, by target: ``indptr`` [N + 1], source ``indices`` and coefficients ``values``
    (None: all 1) in CSR order, built once per graph (int32 indices where they fit, as fbgemm reads them)."""

    def __init__(self, src: Tensor, dst: Tensor, n: int, values: Tensor | None = None, num_src: int | None = None):
        from qgnn.nn.graph import by_target

        self.n = n
        ptr, src_sorted, values, _ = by_target(src, dst, values, n)
        small = src.numel() < 2**31 - 1 and (num_src or n) < 2**31 - 1
        itype = torch.int32 if small else torch.int64  # fbgemm takes offsets and indices of one dtype
        self.indptr = ptr.to(itype)
        self.indices = src_sorted.to(itype)
        self.values = None if values is None else values.to(torch.float32)
        self.deg = ptr[1:] - ptr[:-1]
        self._wsum: dict = {}

    def chunk(self, start: int, end: int, values: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(indptr rebased to 0, indices, coefficients) of targets ``start .. end``; ``values``: other
        coefficients in this plan's order (a layer's quantized ones), else the plan's own."""
        a, b = int(self.indptr[start]), int(self.indptr[end])
        ptr = self.indptr[start:end + 1] - a
        v = self.values if values is None else values
        return ptr, self.indices[a:b], None if v is None else v[a:b]

    def degree(self, start: int, end: int) -> Tensor:
        return self.deg[start:end]

    def weight_sum(self, start: int, end: int, values: Tensor | None = None) -> Tensor:
        """``Σ_j e_ij`` per target (cached per coefficient tensor)."""
        v = self.values if values is None else values
        key = id(v)
        if key not in self._wsum:
            tgt = torch.repeat_interleave(torch.arange(self.n), self.deg)
            self._wsum[key] = torch.zeros(self.n).index_add_(0, tgt, v)
        return self._wsum[key][start:end]

    def bound(self, codes: Tensor | None = None) -> int:
        """``max_i Σ_j |c_ij|`` (codes None: the largest in-degree)."""
        if self.deg.numel() == 0:
            return 0
        if codes is None:
            return int(self.deg.max())
        tgt = torch.repeat_interleave(torch.arange(self.n), self.deg)
        return int(torch.zeros(self.n, dtype=torch.float64).index_add_(0, tgt, codes.abs().double()).max())

    def nbytes(self) -> int:
        b = self.indptr.numel() * self.indptr.element_size() + self.indices.numel() * self.indices.element_size()
        return b + (0 if self.values is None else self.values.numel() * 4) + self.deg.numel() * 8


# --------------------------------------------------------------------------------------------------
# which layers run packed
# --------------------------------------------------------------------------------------------------


def _quantized_linear_ok(layer) -> bool:
    from .runtime import WeightQ

    return isinstance(layer.weight, WeightQ)


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


# --------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------


def _prepared(w) -> PreparedLinear | None:
    from .runtime import WeightQ

    if not isinstance(w, WeightQ):
        return None
    return PreparedLinear(w.q8, w.z8, w.scale, None)


class _Lin:
    """``y = x̂ Ŵᵀ + b`` on a chunk, from stored codes or from float rows and an input quantizer."""

    def __init__(self, weight, bias, backend: str):
        from .runtime import WeightQ

        self.w = weight
        self.quantized = isinstance(weight, WeightQ)
        self.prep = PreparedLinear(weight.q8, weight.z8, weight.scale, bias) if self.quantized else None
        self.bias = bias
        self.backend = backend
        self._padded = None

    def _prep_for(self, k: int) -> PreparedLinear:
        """The prepared weight for ``k`` input columns: padding columns (zero codes of a planar table) get the
        weight's zero-point, so that ``(u − z_x)(w − z_w) = 0`` there and the sums are unchanged."""
        if k == self.prep.in_features:
            return self.prep
        if self._padded is None or self._padded.in_features != k:
            w = self.prep.w
            z = self.prep.zero.view(-1, 1) if self.prep.zero.dim() else self.prep.zero
            pad = z.expand(w.size(0), k - w.size(1)).to(torch.int8)
            self._padded = PreparedLinear(torch.cat([w, pad], 1), self.prep.zero, self.prep.scale, self.prep.bias)
        return self._padded

    def from_codes(self, u: Tensor, s: Tensor, z: Tensor, gran: str, out=None) -> Tensor:
        if self.quantized and gran in ("tensor", "node"):
            prep = self._prep_for(u.size(1))
            if gran == "tensor":
                return qlinear(u, int(z), float(s), prep, out, self.backend)
            return qlinear(u, z, s, prep, out, self.backend)
        u = u[:, :self.w.shape[1]]  # padding columns of a planar table, if any
        xf = u.to(torch.float32)
        xf = xf.sub_(z.view(-1, 1) if gran == "node" else z.to(torch.float32)).mul_(
            s.view(-1, 1) if gran == "node" else s)
        y = F.linear(xf, self.w.dequant if self.quantized else self.w, self.bias)
        if out is None:
            return y
        s_y, z_y, u_max = out  # the output grid's codes, as the fused kernel would return them
        return torch.div(y, s_y).round_().add_(z_y).clamp_(0, u_max).to(torch.uint8)

    def __call__(self, q, x: Tensor, start: int, scratch: bool = False) -> Tensor:
        """Float rows ``x`` (node ids from ``start``) through input quantizer ``q`` (None: float) and W;
        ``scratch``: ``x`` may be overwritten."""
        if q is None:
            return F.linear(x, self.w.dequant if self.quantized else self.w, self.bias)
        if self.quantized and _plain(q):  # quantized inside the GEMM kernel: no code tensor in between
            return qlinear_from_float(x, int(q.zero_point.reshape(())) - int(q.qmin), float(q.scale.reshape(())),
                                      q.span, self.prep, self.backend, scratch)
        u, s, z, gran = q.unsigned(x, start)
        return self.from_codes(u, s, z, gran)


INT_LINEAR, FLOAT_LINEAR = "int8 x int8 -> int32", "float (fake-quant)"
INT_AGG, FLOAT_AGG = "integer", "float32 sums of codes"


def _lin_label(lin: _Lin, gran: str | None) -> str:
    """The path of a linear layer on codes of granularity ``gran`` (None: float input)."""
    return INT_LINEAR if lin.quantized and gran in ("tensor", "node") else FLOAT_LINEAR


def _gran(q) -> str | None:
    return None if q is None else "node" if gran_is_node(q) else q.granularity


def _requant(q, x: Tensor, start: int) -> Tensor:
    return x if q is None else q(x, start).dequant()


PACKED_OPS: dict[str, type] = {}  # export type -> packed op class


def packed_op(kind: str):
    """Class decorator: the packed executor's op for export type ``kind``; built from the per-layer runtime
    op (``qgnn.export.runtime.runtime_op``) that parsed the layer, it runs the layer on packed tables:
    ``plan(edge_index, n)`` / ``form()`` (the graph form it reads), ``coefficients(plan)``, ``run(x, plan,
    emit, coef)`` (read the input table in chunks, ``emit(start, float_rows)`` per chunk of targets), and the
    class attribute ``input_fields`` (whether its input table is aggregated). A kind without a packed op runs
    on the per-layer path."""

    def deco(cls):
        PACKED_OPS[kind] = cls
        return cls

    return deco


class _PackedConv:
    input_fields = True  # the input table is aggregated (fbgemm's fused rows)

    @classmethod
    def refuses(cls, conv) -> str:
        """Why this op cannot run the parsed layer ``conv`` ("" when it can)."""
        return ""

    def __init__(self, conv, backend):
        self.conv, self.backend = conv, backend
        self.q = conv.q
        self.input = conv.q["input"]
        self.name = conv.name
        self.paths: dict[str, str] = {}
        # the aggregation prompt of this layer (LoRAP, qgnn.prompts): float rows -> float rows, or None
        self.prompt = None

    def _prompted(self, s: Tensor) -> Tensor:
        return s if self.prompt is None else self.prompt(s)

    def _agg_label(self, table: QRows, plan: CSRPlan, coef) -> None:
        key = f"{self.name}.aggregate"
        if key not in self.paths:
            self.paths[key] = INT_AGG if table.exact(plan, coef) else FLOAT_AGG

    def finish(self, y: Tensor, start: int) -> Tensor:
        y = self._prompted(_requant(self.q.get("aggr"), y, start))  # prompt: after aggr, before the bias
        if self.conv.bias is not None:
            y += self.conv.bias  # y is this chunk's own buffer
        return _requant(self.q.get("output"), y, start)


@packed_op("gcn")
class PackedGCN(_PackedConv):
    input_fields = False  # X is only multiplied: the GEMM reads its code bytes in place

    @classmethod
    def refuses(cls, conv) -> str:
        return "" if conv.q.get("xw") is not None and _quantized_linear_ok(conv) else "GCN without a quantized X·W"
    def __init__(self, conv, backend):
        super().__init__(conv, backend)
        self.lin = _Lin(conv.weight, None, backend["linear"])
        self.xw = conv.q["xw"]

    def plan(self, edge_index: Tensor, n: int) -> CSRPlan:
        c = self.conv
        if not c.normalize:
            return CSRPlan(edge_index[0], edge_index[1], n)
        ei, w = gcn_norm(edge_index, None, n, c.improved, c.add_self_loops, c.flow, torch.float32)
        return CSRPlan(ei[0], ei[1], n, w)

    def coefficients(self, plan: CSRPlan) -> Coefficients | None:
        """This layer's edge coefficients ê = Q_edge(plan's normalised weights), in the plan's order."""
        if plan.values is None:
            return None
        return Coefficients.of(self.q.get("edge"), plan.values)

    def form(self):
        c = self.conv
        return ("gcn", c.normalize, c.improved, c.add_self_loops)

    def run(self, x: QRows, plan: CSRPlan, emit, coef: Coefficients | None = None) -> None:
        n = x.n
        h = None
        fused = self.xw.granularity == "tensor" and not self.xw.a2q and not self.xw.binary and self.lin.quantized
        step = row_chunk(x.channels)
        for start in range(0, n, step):
            end = min(n, start + step)
            s, z = x.row_params(start, end)
            u = x.codes(start, end, pad=True)
            if fused:
                if h is None:
                    h = QRows(n, self.lin.prep.out_features, self.xw.span, "tensor",
                              self.xw.scale.reshape(()), self.xw.zero_point.reshape(()) - int(self.xw.qmin))
                grid = (float(self.xw.scale.reshape(())), int(h.zero), h.span)
                hu = self.lin.from_codes(u, s, z, x.granularity, grid)
                h.write(start, hu, h.scale, h.zero)
            else:
                y = self.lin.from_codes(u, s, z, x.granularity)
                hu, hs, hz, gran = self.xw.unsigned(y, start)
                if h is None:
                    h = QRows(n, y.size(1), self.xw.span, gran, hs, hz)
                h.write(start, hu, hs, hz)
        self.paths[f"{self.name}.xw"] = _lin_label(self.lin, x.granularity)
        if h is None:  # no rows
            return
        self._agg_label(h, plan, coef)
        step = target_chunk(h.channels)
        for start in range(0, n, step):
            end = min(n, start + step)
            a = h.aggregate(plan, start, end, "sum", self.backend["aggregate"], coef)
            emit(start, self.finish(a, start))


@packed_op("sage")
class PackedSAGE(_PackedConv):
    LINEAR_NAMES = ("lin_l", "lin_r")  # the two matmuls' names in paths
    def __init__(self, conv, backend):
        super().__init__(conv, backend)
        self.lin_l = _Lin(conv.weight, conv.bias, backend["linear"])
        self.lin_r = _Lin(conv.root, None, backend["linear"]) if conv.root is not None else None

    def plan(self, edge_index: Tensor, n: int) -> CSRPlan:
        return CSRPlan(edge_index[0], edge_index[1], n)

    def form(self):
        return ("raw",)

    def coefficients(self, plan: CSRPlan) -> None:
        return None

    def run(self, x: QRows, plan: CSRPlan, emit, coef: None = None) -> None:
        c = self.conv
        aggr_q = self.q.get("aggr")
        self._agg_label(x, plan, None)
        rel, root = self.LINEAR_NAMES
        self.paths[f"{self.name}.{rel}"] = _lin_label(self.lin_l, _gran(aggr_q) if self.prompt is None else None)
        if self.lin_r is not None:
            self.paths[f"{self.name}.{root}"] = _lin_label(self.lin_r, x.granularity)
        step = target_chunk(max(x.channels, c.weight.shape[0]))
        for start in range(0, x.n, step):
            end = min(x.n, start + step)
            a = x.aggregate(plan, start, end, c.reduce, self.backend["aggregate"])
            if self.prompt is None:
                y = self.lin_l(aggr_q, a, start, scratch=True)
            else:  # the prompt's float output is lin_l's input (prompts sit outside every quantizer slot)
                y = self.lin_l(None, self.prompt(_requant(aggr_q, a, start)), start)
            if self.lin_r is not None:
                if _plain(self.input) and x.granularity != "float":  # decoded by fbgemm, re-quantized in the GEMM
                    y += self.lin_r(self.input, x.dequant(start, end), start, scratch=True)
                else:
                    s, z = x.row_params(start, end)
                    y += self.lin_r.from_codes(x.codes(start, end), s, z, x.granularity)
            if c.normalize:
                y = F.normalize(y, p=2.0, dim=-1)
            emit(start, _requant(self.q.get("output"), y, start))


@packed_op("gin")
class PackedGIN(_PackedConv):
    @classmethod
    def refuses(cls, conv) -> str:
        from .runtime import BatchNorm, Linear, ReLU

        return "" if all(isinstance(m, (Linear, BatchNorm, ReLU)) for m in conv.nn) else "GIN MLP with an unknown layer"

    def __init__(self, conv, backend):
        from .runtime import Linear

        super().__init__(conv, backend)
        self.mlp = [(m, _Lin(m.weight, m.bias, backend["linear"]) if isinstance(m, Linear) else None)
                    for m in conv.nn]

    def plan(self, edge_index: Tensor, n: int) -> CSRPlan:
        return CSRPlan(edge_index[0], edge_index[1], n)

    def form(self):
        return ("raw",)

    def coefficients(self, plan: CSRPlan) -> None:
        return None

    def run(self, x: QRows, plan: CSRPlan, emit, coef: None = None) -> None:
        c = self.conv
        self._agg_label(x, plan, None)
        for k, (m, lin) in enumerate(self.mlp):
            if lin is not None:
                self.paths[f"{self.name}.nn.{k}"] = _lin_label(lin, _gran(m.input))
        step = target_chunk(max([x.channels, *(m.weight.shape[0] for m, lin in self.mlp if lin is not None)]))
        for start in range(0, x.n, step):
            end = min(x.n, start + step)
            a = self._prompted(x.aggregate(plan, start, end, c.reduce, self.backend["aggregate"]))
            y = a.add_(x.dequant(start, end), alpha=1 + c.eps)
            y = _requant(self.q.get("aggr"), y, start)
            for m, lin in self.mlp:
                if lin is not None:
                    y = _requant(m.output, lin(m.input, y, start, scratch=True), start)
                else:
                    y = m(y, None)
            emit(start, _requant(self.q.get("output"), y, start))


@packed_op("gat")
class PackedGAT(_PackedConv):
    """GAT: ``H = Q_xw(X̂ Ŵᵀ)`` stored as one table per head; attention logits ``ĥ_j · â`` from the codes
    (exact integer dot products, one scale per vector); for each chunk of targets the softmax over its edges
    (float, as the method needs), ``Q_attention``'s codes as the coefficients, and one aggregation per head."""

    input_fields = False

    @classmethod
    def refuses(cls, conv) -> str:
        xw = conv.q.get("xw")
        ok = xw is not None and _plain(xw) and _quantized_linear_ok(conv)
        return "" if ok else "GAT without a per-tensor quantized X·W"

    def __init__(self, conv, backend):
        super().__init__(conv, backend)
        self.lin = _Lin(conv.weight, None, backend["linear"])
        self.xw = conv.q["xw"]
        self.heads, self.ch = conv.heads, conv.ch

    def plan(self, edge_index: Tensor, n: int) -> CSRPlan:
        from torch_geometric.utils import add_self_loops, remove_self_loops

        ei = edge_index
        if self.conv.add_self_loops:
            ei, _ = remove_self_loops(ei)
            ei, _ = add_self_loops(ei, num_nodes=n)
        return CSRPlan(ei[0], ei[1], n)

    def form(self):
        return ("gat", self.conv.add_self_loops)

    def coefficients(self, plan: CSRPlan) -> None:
        return None

    def _logits(self, u: Tensor, h: QRows) -> tuple[Tensor, Tensor]:
        """(ĥ_j · â_src, ĥ_j · â_dst) per head, [rows, heads] each, from the codes of a chunk."""
        from .runtime import WeightQ

        att = self.conv.att
        hc = u.to(torch.float32).sub_(float(h.zero)).view(-1, self.heads, self.ch)
        if isinstance(att, WeightQ):  # exact integer dot products (|Σ| < 2^24 for ch <= 256), then the scales
            za = att.zero_point.reshape(-1, 1, 1) if att.zero_point.numel() > 1 else att.zero_point
            ac = (att.codes.to(torch.int32) - za.to(torch.int32)).to(torch.float32)
            sa = att.row_scale()
            return ((hc * ac[0]).sum(-1) * (h.scale * sa[0]), (hc * ac[1]).sum(-1) * (h.scale * sa[1]))
        hf = hc.mul_(h.scale)
        return (hf * att[0]).sum(-1), (hf * att[1]).sum(-1)

    def run(self, x: QRows, plan: CSRPlan, emit, coef: None = None) -> None:
        from torch_geometric.utils import softmax

        c = self.conv
        n, heads, ch = x.n, self.heads, self.ch
        tables: list[QRows] = []
        a_src = torch.empty((n, heads))
        a_dst = torch.empty((n, heads))
        z_h = self.xw.zero_point.reshape(()) - int(self.xw.qmin)
        grid = None
        step = row_chunk(x.channels)
        for start in range(0, n, step):
            end = min(n, start + step)
            s, z = x.row_params(start, end)
            if not tables:
                tables = [QRows(n, ch, self.xw.span, "tensor", self.xw.scale.reshape(()), z_h) for _ in range(heads)]
                grid = (float(self.xw.scale.reshape(())), int(tables[0].zero), tables[0].span)
            hu = self.lin.from_codes(x.codes(start, end, pad=True), s, z, x.granularity, grid)
            a_src[start:end], a_dst[start:end] = self._logits(hu, tables[0])
            for k, t in enumerate(tables):
                t.write(start, hu[:, k * ch:(k + 1) * ch], t.scale, t.zero)
        self.paths[f"{self.name}.xw"] = _lin_label(self.lin, x.granularity)
        if not tables:
            return
        from .runtime import WeightQ

        self.paths[f"{self.name}.attention_logits"] = INT_AGG if isinstance(c.att, WeightQ) else FLOAT_LINEAR
        qa = self.q.get("attention")
        integer = qa is not None and qa.granularity == "tensor" and not qa.a2q and not qa.binary
        bound = int(plan.deg.max()) * (qa.span if integer else 0) * (tables[0].span + abs(int(z_h)))
        self.paths[f"{self.name}.aggregate"] = INT_AGG if integer and bound <= FLOAT_EXACT else FLOAT_AGG
        step = target_chunk(heads * ch)
        for start in range(0, n, step):
            end = min(n, start + step)
            ptr, idx, _ = plan.chunk(start, end)
            deg = (ptr[1:] - ptr[:-1]).long()
            tgt = torch.repeat_interleave(torch.arange(start, end), deg)
            alpha = a_src.index_select(0, idx.long()) + a_dst.index_select(0, tgt)
            alpha = softmax(F.leaky_relu(alpha, c.slope), tgt - start, None, end - start)  # float, per target
            if qa is None:
                codes, scale = alpha, 1.0
            elif integer:
                qt = qa(alpha)
                codes = (qt.codes.to(torch.int32) - qt.zero_point.reshape(()).to(torch.int32)).to(torch.float32)
                scale = float(qt.scale.reshape(()))
            else:
                codes, scale = qa(alpha).dequant(), 1.0
            outs = []
            for k, t in enumerate(tables):
                w = codes[:, k].contiguous()
                outs.append(rowwise_aggregate(t.rows, t.bits, ch, ptr, idx, w, "sum", self.backend["aggregate"]))
            y = torch.cat(outs, 1).mul_(scale * float(tables[0].scale))
            y = self._prompted(_requant(self.q.get("aggr"), y, start))  # heads concatenated
            if not c.concat:
                y = y.view(-1, heads, ch).mean(dim=1)
            if c.bias is not None:
                y += c.bias
            emit(start, _requant(self.q.get("output"), y, start))




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
        from qgnn.kernels.intops import aggregate_backend, linear_backend

        per_row = any(gran_is_node(layer.input) for layer in self.layers)
        return {"linear": linear_backend(False, self.backend["linear"])[0] + (
                    ", int_mm (per-node scales)" if per_row and self.backend["linear"] == "auto" else ""),
                "aggregate": aggregate_backend(torch.empty(0, dtype=torch.uint8), self.backend["aggregate"])[0]}


class PackedGraphModel(PackedNodeModel):
    """A graph-level model (``IntModel`` of arch "graph_readout", :mod:`qgnn.models.graph`) on packed tables:
    ``h_k = relu(norm_k(conv_k(h_{k-1})))`` layer by layer as the node stack, each chunk of ``h_k`` pooled
    into its graphs as it is produced (sum, mean or max), and ``out = Σ_k head_k(rnorm_k(pool(h_k)))`` on the
    pooled rows (one per graph). ``prepare(x, edge_index, batch)`` then ``run``."""

    def __init__(self, model, linear: str = "auto", aggregate: str = "auto"):
        super().__init__(model, linear, aggregate)
        self.heads = [(m, _Lin(m.weight, m.bias, linear)) for m in model.heads]
        self.pooling = model.desc["model"]["pooling"]

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
        else:  # PyG's own sum (global_add_pool's): one chunk gives the per-layer path's float sums exactly
            from torch_geometric.utils import scatter

            acc += scatter(y, idx, 0, dim_size=acc.size(0), reduce="sum")

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
        return _requant(m.output, lin(m.input, pooled, 0), 0)

    def run(self, prepared: dict) -> Tensor:
        batch, size, counts = prepared["batch"], prepared["size"], prepared["counts"]
        pools: list[Tensor] = []

        def step(i, start, y):
            y = F.relu(self.model.norms[i](y, None), inplace=True)
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
