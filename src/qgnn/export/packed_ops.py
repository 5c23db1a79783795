"""The packed executor's layer ops, one per layer kind (registered with :func:`packed_op`): each reads its
input table (:class:`~qgnn.export.tables.QRows`) in chunks of rows and hands every chunk of float results to
``emit`` (the executor, :mod:`qgnn.export.packed`, turns them into the next table). Per kind: see
:mod:`qgnn.export.packed`'s docstring; a kind added beside the built-ins registers its op in
``qgnn/export/ops/<kind>.py``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from qgnn.kernels import intops as _intops  # SMALL_ROWS, read at call time (tests patch it)
from qgnn.kernels.intops import CodeBuffer, PreparedLinear, qlinear, qlinear_from_float, rowwise_aggregate

from . import tables as _tables  # the chunk sizes, read at call time (tests patch them)
from .tables import FLOAT_EXACT, Coefficients, CSRPlan, GroupedRows, QRows, _plain, gran_is_node

__all__ = ["PACKED_OPS", "packed_op", "PackedGCN", "PackedSAGE", "PackedGIN", "PackedGAT"]


class _Lin:
    """``y = x̂ Ŵᵀ + b`` on a chunk, from stored codes or from float rows and an input quantizer."""

    def __init__(self, weight, bias, backend: str):
        from .runtime import WeightQ

        self.w = weight
        self.quantized = isinstance(weight, WeightQ)
        self.prep = PreparedLinear(weight.q8, weight.z8, weight.scale, bias) if self.quantized else None
        self.wf = weight.dequant if self.quantized else weight  # the float weight of the float paths
        self.bias = bias
        self.backend = backend
        self._padded = None

    def fold(self, bn) -> _Lin:
        """This layer and the inference BatchNorm ``bn`` after it as one layer: ``BN(y) = g y + β − g μ`` with
        ``g = γ / sqrt(var + eps)`` folds into the output scales (``s_x s_w g``, per channel) and the bias
        (``g (b − μ) + β``), the integer codes unchanged, as deployment runtimes fold a convolution's norm: a
        pass over the rows fewer (on a small graph's batch, one op of the few a layer runs). The result differs
        from the two ops by float32 rounding only."""
        inv = torch.rsqrt(bn.var.to(torch.float32) + bn.eps)
        g = inv if bn.weight is None else inv * bn.weight
        b0 = torch.zeros_like(g) if self.bias is None else self.bias.to(torch.float32)
        bias = (b0 - bn.mean) * g + (0.0 if bn.bias is None else bn.bias)
        out = copy.copy(self)
        out.bias, out._padded = bias, None
        out.wf = self.wf * g.view(-1, 1)
        if self.quantized:
            p = self.prep
            out.prep = PreparedLinear(p.w, p.zero, p.scale * g, bias)
        return out

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

    def from_codes(self, u: Tensor, s: Tensor, z: Tensor, gran: str, out=None, qx: Tensor | None = None,
                   u_max: int = 255) -> Tensor:
        """``qx``: ``u`` as a quint8 tensor (:func:`_gemm_chunks`), which fbgemm reads without a copy; ``u_max``:
        the largest code of the input's grid (where fbgemm is exact only for some codes)."""
        if self.quantized and gran in ("tensor", "node"):
            prep = self._prep_for(u.size(1))
            if gran == "tensor":
                return qlinear(u, int(z), float(s), prep, out, self.backend, qx, u_max)
            return qlinear(u, z, s, prep, out, self.backend, u_max=u_max)
        u = u[:, :self.w.shape[1]]  # padding columns of a planar table, if any
        xf = u.to(torch.float32)
        xf = xf.sub_(z.view(-1, 1) if gran == "node" else z.to(torch.float32)).mul_(
            s.view(-1, 1) if gran == "node" else s)
        y = F.linear(xf, self.wf, self.bias)
        if out is None:
            return y
        s_y, z_y, u_max = out  # the output grid's codes, as the fused kernel would return them
        return torch.div(y, s_y).round_().add_(z_y).clamp_(0, u_max).to(torch.uint8)

    def __call__(self, q, x: Tensor, start: int, scratch: bool = False, on_grid: bool = False,
                 small: bool = False) -> Tensor:
        """Float rows ``x`` (node ids from ``start``) through input quantizer ``q`` (None: float) and W;
        ``scratch``: ``x`` may be overwritten; ``on_grid``: ``x`` holds ``q``'s grid values already (decoded
        codes of ``q``), which the kernel reads without snapping them first; ``small``: the layer has at most
        ``SMALL_ROWS`` rows (:func:`qgnn.kernels.intops.qlinear_from_float`)."""
        if q is None:
            return F.linear(x, self.wf, self.bias)
        if self.quantized and q.plain:  # quantized inside the GEMM kernel: no code tensor in between
            return qlinear_from_float(x, q.z - int(q.qmin), q.s, q.span, self.prep, self.backend, scratch, on_grid,
                                      small)
        u, s, z, gran = q.unsigned(x, start)
        return self.from_codes(u, s, z, gran)


INT_LINEAR, FLOAT_LINEAR = "int8 x int8 -> int32", "float (fake-quant)"
INT_AGG, FLOAT_AGG = "integer", "float32 sums of codes"


def _lin_label(lin: _Lin, gran: str | None) -> str:
    """The path of a linear layer on codes of granularity ``gran`` (None: float input)."""
    return INT_LINEAR if lin.quantized and gran in ("tensor", "node") else FLOAT_LINEAR


def _gran(q) -> str | None:
    return None if q is None else "node" if gran_is_node(q) else q.granularity


def _gemm_chunks(x: QRows, step: int):
    """The GEMM chunks of table ``x``: (start, end, codes [rows, code_width(pad)], their quint8 view or None,
    scale, zero-point). Each chunk's codes are unpacked into one :class:`CodeBuffer` for the whole layer, so
    per-tensor codes reach fbgemm's linear without the copy that wrapping them as a quantized tensor costs."""
    buf = None
    for start in range(0, x.n, step):
        end = min(x.n, start + step)
        s, z = x.row_params(start, end)
        if x.granularity == "float":  # FloatRows: _Lin's float branch
            yield start, end, x.codes(start, end, pad=True), None, s, z
            continue
        if getattr(x, "quantized", None) is not None:  # 8-bit codes stored as a quint8 tensor: views
            yield start, end, x.rows[start:end], x.quantized[start:end], s, z
            continue
        tensor = x.granularity == "tensor"
        if buf is None:
            zero = int(z) if tensor else 0
            buf = CodeBuffer(min(step, x.n), x.code_width(True), float(s) if tensor else 1.0,
                             zero if 0 <= zero <= 255 else 0)  # an odd zero-point: qlinear wraps a copy
        u, qx = buf.take(end - start)
        x.codes_into(start, end, u)
        yield start, end, u, qx if tensor else None, s, z


GROUPED_CHUNK = 1024  # rows of a GroupedRows GEMM chunk at most, when widened (_gemm_rows)


def _gemm_rows(x: QRows | GroupedRows, step: int, fn):
    """(start, end, ``fn(codes, quint8 view or None, scale, zero-point)``) per chunk of rows of ``x`` in node
    order, for a row-wise ``fn`` (a GEMM). A table grouped by width (:class:`GroupedRows`) runs ``fn`` on each
    group's rows of the chunk as they are stored, and scatters the (narrower) results into node order, rather
    than gathering wide code rows first."""
    if not isinstance(x, GroupedRows):
        for start, end, u, qx, s, z in _gemm_chunks(x, step):
            yield start, end, fn(u, qx, s, z)
        return
    # a chunk's rows split among the groups; on a small graph (short chunks) widen it so that each GEMM call
    # still takes a few hundred rows, up to GROUPED_CHUNK (Cora's A2Q GCN: 11 chunks of 256 rows gave 33 calls)
    step = max(step, min(step * len(x.groups), GROUPED_CHUNK))
    for start in range(0, x.n, step):
        end = min(x.n, start + step)
        yield start, end, x.map_rows(start, end, lambda u, s, z: fn(u, None, s, z))


def _requant(q, x: Tensor, start: int) -> Tensor:
    """The fake-quant value of a chunk's float rows ``x`` (a fresh buffer of the op's, overwritten)."""
    return x if q is None else q.fake(x, start, inplace=True)


def _quantized_linear_ok(layer) -> bool:
    from .runtime import WeightQ

    return isinstance(layer.weight, WeightQ)


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

    # the graph as given, without coefficients (sum / mean layers); GCN and GAT build their own forms
    def plan(self, edge_index: Tensor, n: int) -> CSRPlan:
        return CSRPlan(edge_index[0], edge_index[1], n)

    def form(self):
        return ("raw",)

    def coefficients(self, plan: CSRPlan) -> Coefficients | None:
        return None

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
        grid = None
        if fused:
            h = QRows(n, self.lin.prep.out_features, self.xw.span, "tensor",
                      self.xw.scale.reshape(()), self.xw.zero_point.reshape(()) - int(self.xw.qmin))
            grid = (float(self.xw.scale.reshape(())), int(h.zero), h.span)
        gran_x, span_x = x.granularity, getattr(x, "span", 255)

        def gemm(u, qx, s, z):
            return self.lin.from_codes(u, s, z, gran_x, grid, qx, span_x)

        for start, _end, y in _gemm_rows(x, _tables.row_chunk(x.channels), gemm):
            if fused:  # y: the codes of X·W
                h.write(start, y, h.scale, h.zero)
            else:
                hu, hs, hz, gran = self.xw.unsigned(y, start)
                if h is None:  # per-node A2Q widths: rows grouped by container
                    h = GroupedRows(self.xw, n, y.size(1)) if GroupedRows.applies(self.xw, n) else \
                        QRows(n, y.size(1), self.xw.span, gran, hs, hz)
                h.write(start, hu, hs, hz)
        self.paths[f"{self.name}.xw"] = _lin_label(self.lin, x.granularity)
        if n == 0:  # no rows
            return
        self._agg_label(h, plan, coef)
        step = _tables.target_chunk(h.channels)
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

    def run(self, x: QRows, plan: CSRPlan, emit, coef: None = None) -> None:
        c = self.conv
        aggr_q = self.q.get("aggr")
        self._agg_label(x, plan, None)
        rel, root = self.LINEAR_NAMES
        self.paths[f"{self.name}.{rel}"] = _lin_label(self.lin_l, _gran(aggr_q) if self.prompt is None else None)
        if self.lin_r is not None:
            self.paths[f"{self.name}.{root}"] = _lin_label(self.lin_r, x.granularity)
        step = _tables.target_chunk(max(x.channels, c.weight.shape[0]))
        small = x.n <= _intops.SMALL_ROWS
        for start in range(0, x.n, step):
            end = min(x.n, start + step)
            a = x.aggregate(plan, start, end, c.reduce, self.backend["aggregate"])
            if self.prompt is None:
                y = self.lin_l(aggr_q, a, start, scratch=True, small=small)
            else:  # the prompt's float output is lin_l's input (prompts sit outside every quantizer slot)
                y = self.lin_l(None, self.prompt(_requant(aggr_q, a, start)), start)
            if self.lin_r is not None:
                if _plain(self.input) and x.granularity != "float":
                    # the rows decoded by fbgemm's bag (one kernel: the grid values s (u − z)), which the GEMM
                    # kernel quantizes back to the same codes; reading 8-bit codes as they are costs more
                    # (a copy out of the fused rows, then the quantized tensor's own float copy)
                    y += self.lin_r(self.input, x.dequant(start, end), start, scratch=True, on_grid=True,
                                    small=small)
                else:
                    y += x.map_rows(start, end, lambda u, s, z: self.lin_r.from_codes(
                        u, s, z, x.granularity, u_max=getattr(x, "span", 255)))
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
        from .runtime import BatchNorm, Linear

        super().__init__(conv, backend)
        self.mlp = [(m, _Lin(m.weight, m.bias, backend["linear"]) if isinstance(m, Linear) else None)
                    for m in conv.nn]
        # the MLP as run: a Linear without an output quantizer and the BatchNorm after it fold into one step
        self.steps: list = []
        for m, lin in self.mlp:
            if isinstance(m, BatchNorm) and self.steps and self.steps[-1][1] is not None \
                    and self.steps[-1][0].output is None and not self.steps[-1][2]:
                prev, plin, _ = self.steps.pop()
                self.steps.append((prev, plin.fold(m), True))
            else:
                self.steps.append((m, lin, False))

    def absorb_norm(self, bn) -> bool:
        """Fold the inference BatchNorm that follows this layer (a graph model's ``norms[i]``) into the MLP's last
        Linear, where nothing sits between them (no output quantizer on either); True when folded, and the
        caller skips the norm."""
        if not self.steps or self.q.get("output") is not None:
            return False
        m, lin, folded = self.steps[-1]
        if lin is None or folded or m.output is not None:
            return False
        self.steps[-1] = (m, lin.fold(bn), True)
        return True

    def _self_loops(self) -> bool:
        """Whether the self term ``(1 + ε) x̂_i`` joins the neighbour sum as a self loop of the plan (weight
        1 + ε): one embedding bag a chunk instead of a bag, a decode of the chunk's own rows and an add. Only for a
        sum with no prompt between the sum and the self term (LoRAP's prompt reads the neighbour sum)."""
        return self.conv.reduce == "sum" and self.prompt is None

    def form(self):
        return ("gin", float(self.conv.eps)) if self._self_loops() else ("raw",)

    def plan(self, edge_index: Tensor, n: int) -> CSRPlan:
        if not self._self_loops():
            return super().plan(edge_index, n)
        loop = torch.arange(n, dtype=edge_index.dtype)
        eps = float(self.conv.eps)
        values = None if eps == 0 else torch.cat([torch.ones(edge_index.size(1)), torch.full((n,), 1 + eps)])
        # appended after the edges: each target's loop comes after its neighbours in the CSR (a stable sort by
        # target), so the sum adds the self term last, as ``Σ_j x̂_j + (1 + ε) x̂_i`` does
        return CSRPlan(torch.cat([edge_index[0], loop]), torch.cat([edge_index[1], loop]), n, values)

    def run(self, x: QRows, plan: CSRPlan, emit, coef: None = None) -> None:
        c = self.conv
        loops = self._self_loops()
        self._agg_label(x, plan, None)
        for k, (m, lin) in enumerate(self.mlp):
            if lin is not None:
                self.paths[f"{self.name}.nn.{k}"] = _lin_label(lin, _gran(m.input))
        step = _tables.target_chunk(max([x.channels, *(m.weight.shape[0] for m, lin in self.mlp if lin is not None)]))
        small = x.n <= _intops.SMALL_ROWS
        for start in range(0, x.n, step):
            end = min(x.n, start + step)
            a = x.aggregate(plan, start, end, c.reduce, self.backend["aggregate"])
            y = a if loops else self._prompted(a).add_(x.dequant(start, end), alpha=1 + c.eps)
            y = _requant(self.q.get("aggr"), y, start)
            for m, lin, _ in self.steps:
                if lin is not None:
                    y = _requant(m.output, lin(m.input, y, start, scratch=True, small=small), start)
                else:
                    y = m(y, None)
            emit(start, _requant(self.q.get("output"), y, start))


@packed_op("gat")
class PackedGAT(_PackedConv):
    """GAT: ``H = Q_xw(X̂ Ŵᵀ)`` stored as one table of ``N · heads`` rows (row ``i · heads + k``: head k of node
    i, so a GEMM chunk's codes are written in one call); attention logits ``ĥ_j · â`` from the codes (exact
    integer dot products, one scale per vector); for each chunk of targets the softmax over its edges (float,
    as the method needs), ``Q_attention``'s codes as the coefficients, and one embedding bag over every
    (head, target) pair: bag ``k · rows + i`` sums rows ``j · heads + k`` of i's in-neighbours j."""

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

    @staticmethod
    def _head_bags(ptr: Tensor, idx: Tensor, heads: int, n: int) -> tuple[Tensor, Tensor]:
        """(offsets, indices) of one embedding bag per (head, target) of a chunk, head-major: bag ``k · rows +
        i`` holds the rows ``j · heads + k`` of i's in-neighbours j (the head-interleaved table of ``n`` nodes).
        int64 where ``n · heads`` rows or ``heads`` times the chunk's edges overflow int32 (fbgemm takes one
        dtype for both)."""
        e = idx.numel()
        if max(n, e) * heads >= 2**31 - 1:
            ptr, idx = ptr.long(), idx.long()
        k = torch.arange(heads, dtype=idx.dtype).view(-1, 1)
        indices = (idx.view(1, -1) * heads + k).view(-1)
        offsets = torch.cat([(ptr[:-1].view(1, -1) + k * e).view(-1), ptr.new_full((1,), heads * e)])
        return offsets, indices

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
        a_src = torch.empty((n, heads))
        a_dst = torch.empty((n, heads))
        z_h = self.xw.zero_point.reshape(()) - int(self.xw.qmin)
        h = QRows(n * heads, ch, self.xw.span, "tensor", self.xw.scale.reshape(()), z_h)  # heads interleaved
        grid = (float(self.xw.scale.reshape(())), int(h.zero), h.span)
        gran_x, span_x = x.granularity, getattr(x, "span", 255)

        def gemm(u, qx, s, z):
            return self.lin.from_codes(u, s, z, gran_x, grid, qx, span_x)

        for start, end, hu in _gemm_rows(x, _tables.row_chunk(x.channels), gemm):
            a_src[start:end], a_dst[start:end] = self._logits(hu, h)
            h.write(start * heads, hu.reshape(-1, ch), h.scale, h.zero)
        self.paths[f"{self.name}.xw"] = _lin_label(self.lin, x.granularity)
        if n == 0:
            return
        from .runtime import WeightQ

        self.paths[f"{self.name}.attention_logits"] = INT_AGG if isinstance(c.att, WeightQ) else FLOAT_LINEAR
        qa = self.q.get("attention")
        integer = qa is not None and qa.granularity == "tensor" and not qa.a2q and not qa.binary
        bound = int(plan.deg.max()) * (qa.span if integer else 0) * (h.span + abs(int(z_h)))
        self.paths[f"{self.name}.aggregate"] = INT_AGG if integer and bound <= FLOAT_EXACT else FLOAT_AGG
        step = _tables.target_chunk(heads * ch)
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
            offsets, indices = self._head_bags(ptr, idx, heads, n)
            w = codes.t().contiguous().view(-1)  # head-major, as the bags
            y = rowwise_aggregate(h.rows, h.bits, ch, offsets, indices, w, "sum", self.backend["aggregate"],
                                  checked=True)  # [heads · rows, ch]
            y = y.view(heads, end - start, ch).transpose(0, 1).reshape(end - start, heads * ch)
            y.mul_(scale * float(h.scale))
            y = self._prompted(_requant(self.q.get("aggr"), y, start))  # heads concatenated
            if not c.concat:
                y = y.view(-1, heads, ch).mean(dim=1)
            if c.bias is not None:
                y += c.bias
            emit(start, _requant(self.q.get("output"), y, start))
