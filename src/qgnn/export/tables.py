"""The packed runtime's data: activation tables of packed codes, the graph plan and edge coefficients.

* :class:`QRows`: an activation between layers, the unsigned codes ``u = q − qmin`` of the quantizer that reads
  it in fbgemm's fused rowwise layout (or planar code bytes for a table only multiplied), at 8, 4 or 2 bits
  a code, with its scale and zero-point per tensor, channel or node; :class:`FloatRows` the same interface over
  float rows (a prompted first layer's input).
* :class:`CSRPlan`: one form of a graph by target (indptr, source indices, coefficients), built once.
* :class:`Coefficients`: a layer's edge coefficients ``e = s_e · c`` (integer codes where the quantizer allows).
* :func:`row_chunk` / :func:`target_chunk`: how many rows a GEMM / an aggregation chunk takes.

The layers that read and write them: :mod:`qgnn.export.packed_ops`; the executor: :mod:`qgnn.export.packed`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgnn.errors import ConfigError
from qgnn.kernels import FLOAT_EXACT
from qgnn.kernels.intops import CodeBuffer, rowwise_aggregate, rowwise_values
from qgnn.kernels.reference.rowwise import (
    container_bits,
    pack_fused_codes,
    pack_rows,
    planar_width,
    row_bytes,
    unpack_planar_into,
    unpack_rows,
)

__all__ = ["QRows", "GroupedRows", "FloatRows", "CSRPlan", "Coefficients", "FLOAT_EXACT", "row_chunk", "target_chunk"]

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
        self._code_bytes = row_bytes(channels, self.bits) - row_bytes(0, self.bits)  # of a fused row
        self.quantized = None  # the rows as one quint8 tensor (8-bit planar codes of one scale): see below
        if granularity == "tensor" and self.bits == 8 and not fields:
            # the GEMM reads these codes as they are: kept in a quantized tensor's storage, a chunk reaches
            # fbgemm as a view (no copy, no scratch buffer)
            z = int(like_zero.reshape(()))
            buf = CodeBuffer(n, channels, float(like_scale.reshape(())), z if 0 <= z <= 255 else 0)
            self.rows, self.quantized = buf.u, buf.q
        else:
            self.rows = torch.empty((n, row_bytes(channels, self.bits, fields)), dtype=torch.uint8)
        if granularity == "node":
            self.scale = torch.empty(n, dtype=torch.float32)
            self.zero = torch.empty(n, dtype=torch.int32)
        else:
            self.scale, self.zero = like_scale.to(torch.float32), like_zero.to(torch.int32)
            if fields:  # one scale / bias for every row: written once here, each chunk then packs its codes only
                self._fields(0, n, -float(self.zero) if granularity == "tensor" else 0.0)

    @classmethod
    def like(cls, q, n: int, first: Tensor, start: int = 0, fields: bool = True) -> QRows | GroupedRows:
        """An empty table for ``n`` rows of ``q``'s codes, shaped by the first chunk ``first``; per-node A2Q
        widths that need more than one container give a :class:`GroupedRows`."""
        if GroupedRows.applies(q, n):
            return GroupedRows(q, n, first.size(1), fields)
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
        if _plain(q) and self.granularity == "tensor":  # the table's offset is z − qmin
            y = x.div_(q.s) if inplace else torch.div(x, q.s)
            y.round_().add_(q.z - int(q.qmin)).clamp_(0, self.span)
            if self.bits == 8:  # the rows' fields were written with the table
                self.rows[start:start + x.size(0), :self.channels].copy_(y)
                return
            if self.bits == 4 and self._put_nibbles(start, y):
                return
            u = y.to(torch.uint8)
            self.write(start, u, self.scale, self.zero)
            return
        u, s, z, _ = q.unsigned(x, start)
        self.write(start, u, s, z)

    def _put_nibbles(self, start: int, y: Tensor) -> bool:
        """4-bit codes ``y`` (integer-valued float rows, 0..15) packed in two passes: each byte's value
        ``lo + 16 hi`` in float (exact: at most 255), converted into the table's bytes by the copy. Fused rows
        pair columns 2j and 2j + 1, planar rows columns j and j + nb (:mod:`qgnn.kernels.reference.rowwise`).
        False where the rows need a padding column (odd C; a planar row longer than the codes)."""
        c = self.channels
        if self.fields:
            if c % 2:
                return False
            lo, hi = y[:, 0::2], y[:, 1::2]
        else:
            nb = self.rows.size(1)
            if 2 * nb != c:
                return False
            lo, hi = y[:, :nb], y[:, nb:]
        self.rows[start:start + y.size(0), :c // 2].copy_(torch.add(lo, hi, alpha=16))
        return True

    def _fields(self, start: int, end: int, bias: float) -> None:
        """Scale 1 and ``bias`` (an integer, exact in float16) in the fields of rows ``start .. end``: one row's
        field bytes broadcast (the layout of :func:`pack_rows`)."""
        ftype = torch.float32 if self.bits == 8 else torch.float16
        row = torch.tensor([1.0, bias], dtype=ftype).view(torch.uint8)
        self.rows[start:end, self._code_bytes:].copy_(
            row.expand(end - start, -1))

    def write(self, start: int, u: Tensor, s: Tensor, z: Tensor) -> None:
        """Store the codes of rows ``start .. start + len(u)`` (their scale / zero-point when per node)."""
        end = start + u.size(0)
        if self.granularity != "node":  # the fields (bias −z per tensor; 0 per channel, whose zero-points are
            # subtracted after the sum, aggregate) were written with the table
            if self.fields:  # the code bytes only, unchecked: the table is this one's own layout
                pack_fused_codes(u.to(torch.uint8), self.bits, self.rows[start:end, :self._code_bytes])
            else:
                pack_rows(u, self.bits, out=self.rows[start:end], fields=False)
            return
        self.scale[start:end] = s
        self.zero[start:end] = z
        pack_rows(u, self.bits, 1.0, -z.to(torch.float32), out=self.rows[start:end], fields=self.fields)

    def codes(self, start: int, end: int, pad: bool = False) -> Tensor:
        """Unsigned codes of rows ``start .. end`` as contiguous uint8 [rows, C] (a view where it can be);
        ``pad``: a planar table's rows may keep zero padding columns (a GEMM pads its weights to match)."""
        if self.bits == 8:
            return self.rows[start:end, :self.channels].contiguous()
        return unpack_rows(self.rows[start:end], self.bits, self.channels, self.fields, pad and not self.fields)[0]

    def code_width(self, pad: bool = False) -> int:
        """Columns of :meth:`codes` (``pad``: a planar table's codes with their padding columns)."""
        return planar_width(self.channels, self.bits) if pad and not self.fields else self.channels

    def codes_into(self, start: int, end: int, out: Tensor) -> Tensor:
        """:meth:`codes` of rows ``start .. end`` with ``pad``, written into ``out`` uint8 [rows,
        :meth:`code_width` (True)] (a GEMM's input buffer, :class:`~qgnn.kernels.intops.CodeBuffer`)."""
        if not self.fields:  # planar (or 8-bit) code bytes: unpacked straight into out (unchecked: own layout)
            return unpack_planar_into(self.rows[start:end], self.bits, out)
        return out.copy_(self.codes(start, end))

    def row_params(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        """(scale, zero-point) for rows ``start .. end``: 0-d, [C] or [rows]."""
        if self.granularity == "node":
            return self.scale[start:end], self.zero[start:end]
        return self.scale, self.zero

    def map_rows(self, start: int, end: int, fn) -> Tensor:
        """``fn(codes, scale, zero-point)`` of rows ``start .. end`` for a row-wise ``fn`` (a GEMM)."""
        return fn(self.codes(start, end), *self.row_params(start, end))

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
            out = rowwise_aggregate(self.rows, self.bits, self.channels, indptr, indices, values, "sum", backend,
                                    checked=True)
            return out.mul_(c_scale) if coef is not None else out
        out = rowwise_aggregate(self.rows, self.bits, self.channels, indptr, indices, values, mode, backend,
                                checked=True)
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


class GroupedRows:
    """A per-node A2Q table whose rows are grouped by width: each node's codes in the narrowest container
    (2, 4 or 8 bits) that holds its own width, one :class:`QRows` per container, behind QRows' interface.

    A2Q (Zhu et al., ICLR 2023, arXiv 2302.00193) learns a width b_i per node; one table at the widest width
    would store every node at the container of the widest (a model whose nodes average 3.4 bits but reach 5
    would store 8 bits a code). Grouped, the codes take Σ_i C · container(b_i) / 8
    bytes. Rows are numbered by node id across the whole table; a node's row in its group is its rank among
    the group's nodes, so the rows of any id range are one contiguous range in every group (chunks write and
    read each group once). An aggregation sums one embedding bag per group over the edges whose source is in
    that group (the split of a plan's CSR is computed once per plan and grouping, :meth:`_split`); per-node
    scales fold into the bags' weights as in QRows. Node-wise A2Q grids only ("node": the widths are fixed per
    node; nearest-neighbour groups pick a width per row from the data, and keep one table at the widest)."""

    granularity = "node"
    quantized = None  # no quint8 view: a GEMM unpacks each group's codes (_gemm_chunks)

    @staticmethod
    def applies(q, n: int) -> bool:
        """Whether ``q``'s codes for ``n`` rows are per-node A2Q codes of more than one container size."""
        widths = getattr(q, "widths", None)
        if not getattr(q, "a2q", False) or q.granularity != "node" or widths is None or widths.numel() != n:
            return False
        return len(_grouping(q)[0]) > 1

    def __init__(self, q, n: int, channels: int, fields: bool = True):
        self.n, self.channels, self.span, self.fields = n, channels, q.span, fields
        self.bits = _bits_for(self.span)  # the widest container (what one table would take)
        self.key = q  # the grouping (its widths); a plan's split is cached under it
        containers, counts, self.group_of, self.local = _grouping(q)
        self.groups: list[QRows] = [  # by container bits, narrowest first
            QRows(m, channels, (1 << bits) - 1, "node", torch.ones(()), torch.zeros(()), fields)
            for bits, m in zip(containers, counts, strict=True)]

    def _ranges(self, start: int, end: int):
        """Per group with rows among ``start .. end``: (group's sub-table, positions in the range, first row
        in the group)."""
        g = self.group_of[start:end]
        for i, sub in enumerate(self.groups):
            pos = (g == i).nonzero().view(-1)
            if pos.numel():
                yield sub, pos, int(self.local[start + int(pos[0])])

    def put(self, q, start: int, x: Tensor, inplace: bool = False) -> None:
        u, s, z, _ = q.unsigned(x, start)
        self.write(start, u, s, z)

    def write(self, start: int, u: Tensor, s: Tensor, z: Tensor) -> None:
        end = start + u.size(0)
        for sub, pos, lo in self._ranges(start, end):
            sub.write(lo, u.index_select(0, pos), s.index_select(0, pos), z.index_select(0, pos))

    def codes(self, start: int, end: int, pad: bool = False) -> Tensor:
        out = torch.empty((end - start, self.channels), dtype=torch.uint8)
        for sub, pos, lo in self._ranges(start, end):
            out.index_copy_(0, pos, sub.codes(lo, lo + pos.numel()))
        return out

    def code_width(self, pad: bool = False) -> int:
        return self.channels  # codes() never pads: the groups' planar widths differ

    def codes_into(self, start: int, end: int, out: Tensor) -> Tensor:
        for sub, pos, lo in self._ranges(start, end):
            out.index_copy_(0, pos, sub.codes(lo, lo + pos.numel()))
        return out

    def map_rows(self, start: int, end: int, fn) -> Tensor:
        """``fn(codes, scale, zero-point)`` of rows ``start .. end`` for a row-wise ``fn`` (a GEMM): run on each
        group's rows as stored (no gather of wide code rows), the results scattered into node order."""
        out = None
        for sub, pos, lo in self._ranges(start, end):
            hi = lo + pos.numel()
            y = fn(sub.codes(lo, hi), sub.scale[lo:hi], sub.zero[lo:hi])
            if out is None:
                out = y.new_empty((end - start, *y.shape[1:]))
            out.index_copy_(0, pos, y)
        return out if out is not None else fn(self.codes(start, end), *self.row_params(start, end))

    def row_params(self, start: int, end: int) -> tuple[Tensor, Tensor]:
        scale = torch.empty(end - start, dtype=torch.float32)
        zero = torch.empty(end - start, dtype=torch.int32)
        for sub, pos, lo in self._ranges(start, end):  # each group keeps its own nodes' (scale, zero-point)
            scale.index_copy_(0, pos, sub.scale[lo:lo + pos.numel()])
            zero.index_copy_(0, pos, sub.zero[lo:lo + pos.numel()])
        return scale, zero

    def dequant(self, start: int, end: int) -> Tensor:
        out = torch.empty((end - start, self.channels), dtype=torch.float32)
        for sub, pos, lo in self._ranges(start, end):
            out.index_copy_(0, pos, sub.dequant(lo, lo + pos.numel()))
        return out

    def _split(self, plan: CSRPlan) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per group: (indptr [N + 1], group-local source rows, the edges' positions in the plan's order) of the
        plan's edges whose source is in the group, by target as the plan. Computed once per plan and grouping."""
        cache = plan.__dict__.setdefault("_group_splits", {})
        if self.key not in cache:
            src = plan.indices.long()
            grp = self.group_of.index_select(0, src)
            tgt = torch.repeat_interleave(torch.arange(plan.n), plan.deg)
            parts = []
            for i in range(len(self.groups)):
                pos = (grp == i).nonzero().view(-1)
                ptr = torch.zeros(plan.n + 1, dtype=torch.int64)
                ptr[1:] = torch.bincount(tgt.index_select(0, pos), minlength=plan.n).cumsum(0)
                parts.append((ptr.to(plan.indptr.dtype), self.local.index_select(0, src.index_select(0, pos))
                              .to(plan.indices.dtype), pos))
            cache[self.key] = parts
        return cache[self.key]

    def aggregate(self, plan: CSRPlan, start: int, end: int, mode: str = "sum", backend: str = "auto",
                  coef: Coefficients | None = None) -> Tensor:
        """:meth:`QRows.aggregate` of a per-node table: Σ over the groups of each group's embedding bag."""
        values = plan.values if coef is None else coef.codes
        inv_deg = None
        if mode == "mean":
            inv_deg = 1.0 / plan.degree(start, end).clamp(min=1).to(torch.float32)
        out = torch.zeros((end - start, self.channels), dtype=torch.float32)
        for (ptr, idx, pos), sub in zip(self._split(plan), self.groups, strict=True):
            a, b = int(ptr[start]), int(ptr[end])
            if a == b:
                continue
            p, i = ptr[start:end + 1] - a, idx[a:b]
            w = sub.scale.index_select(0, i.long())
            if values is not None:
                w = w * values.index_select(0, pos[a:b])
            if inv_deg is not None:
                w = w * inv_deg.repeat_interleave((p[1:] - p[:-1]).long())
            out += rowwise_aggregate(sub.rows, sub.bits, self.channels, p, i, w, "sum", backend, checked=True)
        return out.mul_(coef.scale) if coef is not None else out

    def exact(self, plan: CSRPlan, coef: Coefficients | None = None) -> bool:
        return False  # per-node scales: float sums, as QRows of a per-node grid

    def nbytes(self) -> int:
        return sum(sub.nbytes() for sub in self.groups) + self.group_of.numel() + \
            self.local.numel() * self.local.element_size()


def _containers(widths: Tensor) -> Tensor:
    """The row container (2, 4 or 8 bits, :func:`container_bits`) of each width."""
    w = widths.to(torch.int64)
    return torch.where(w <= 2, 2, torch.where(w <= 4, 4, 8))


def _grouping(q) -> tuple[list[int], list[int], Tensor, Tensor]:
    """(containers used, narrowest first; nodes in each; each node's group [N] int8; its row in its group [N])
    of a per-node A2Q quantizer's widths. Widths are fixed for the quantizer's life, so this is computed once
    and kept on it (tables are rebuilt every forward)."""
    cached = q.__dict__.get("_qgnn_grouping")
    if cached is None:
        cont = _containers(q.widths)
        n = cont.numel()
        group_of = torch.empty(n, dtype=torch.int8)
        local = torch.empty(n, dtype=torch.int32 if n < 2**31 else torch.int64)
        containers, counts = [], []
        for g, bits in enumerate(torch.unique(cont).tolist()):
            members = (cont == bits).nonzero().view(-1)
            group_of[members] = g
            local[members] = torch.arange(members.numel(), dtype=local.dtype)
            containers.append(int(bits))
            counts.append(members.numel())
        cached = q.__dict__["_qgnn_grouping"] = (containers, counts, group_of, local)
    return cached


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

    def map_rows(self, start: int, end: int, fn) -> Tensor:
        return fn(self.codes(start, end), self.scale, self.zero)

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
        if src.numel() and (int(src.min()) < 0 or int(src.max()) >= (num_src or n) or int(dst.min()) < 0
                            or int(dst.max()) >= n):
            raise ConfigError(f"edge_index refers to nodes outside 0..{n - 1}")
        ptr, src_sorted, values, _ = by_target(src, dst, values, n)
        small = src.numel() < 2**31 - 1 and (num_src or n) < 2**31 - 1
        itype = torch.int32 if small else torch.int64  # fbgemm takes offsets and indices of one dtype
        self.indptr = ptr.to(itype)
        self.indices = src_sorted.to(itype)
        self.values = None if values is None else values.to(torch.float32)
        self.deg = ptr[1:] - ptr[:-1]

    def chunk(self, start: int, end: int, values: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(indptr rebased to 0, indices, coefficients) of targets ``start .. end``; ``values``: other
        coefficients in this plan's order (a layer's quantized ones), else the plan's own."""
        v = self.values if values is None else values
        if start == 0 and end == self.n:  # the whole graph (a small graph's one chunk): the arrays as they are
            return self.indptr, self.indices, v
        a, b = int(self.indptr[start]), int(self.indptr[end])
        ptr = self.indptr[start:end + 1] - a
        return ptr, self.indices[a:b], None if v is None else v[a:b]

    def degree(self, start: int, end: int) -> Tensor:
        return self.deg[start:end]

    def weight_sum(self, start: int, end: int, values: Tensor | None = None) -> Tensor:
        """``Σ_j e_ij`` for targets ``start .. end`` (``values``: coefficients in this plan's order, default the
        plan's own), summed over the chunk's edges only."""
        ptr, _, v = self.chunk(start, end, values)
        tgt = torch.repeat_interleave(torch.arange(end - start), (ptr[1:] - ptr[:-1]).long())
        return torch.zeros(end - start).index_add_(0, tgt, v.to(torch.float32))

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
