"""Quantized slots and matmuls of the export file as ONNX ops (for :mod:`qgnn.export.onnx_export`).

Each op computes what the integer runtime (``qgnn.export.runtime``) computes, in the same float order where
floats are involved, so the ONNX model and the runtime agree up to the summation order of float sums:

* **Activation codes** (uniform / LSQ / Degree-Quant grids): ``QuantizeLinear`` to int8 (signed grids) or
  uint8 (unsigned), which computes ``saturate(round_half_even(x / s) + z)`` (onnxruntime divides, it does
  not multiply by 1 / s: the codes are the runtime's ``clamp(round(x / s) + z, qmin, qmax)``), then
  ``Clip`` to ``[qmin, qmax]`` for grids narrower than 8 bits; scales per tensor, per channel (axis 1) or per
  node (axis 0, fixed node count). Binary grids: ``+1`` where ``x / s >= 0`` else ``−1``. A2Q grids:
  ``clamp(round(x / s), qmin(B), qmax(B))`` with ``Div`` / ``Round`` / ``Min`` / ``Max`` (a step and a width
  per entry; nearest-neighbour groups picked per row as ``qgnn.quant.a2q.nearest_group`` does).
* **Fake-quant values** ``x̂ = (q − z) · s``: ``DequantizeLinear`` (A2Q: ``Cast`` · ``Mul``).
* **Integer linear** (per-tensor or per-row input scale, quantized weight): ``MatMulInteger`` on the codes
  with their zero-points (weights the runtime's int8 view [K, O], shifted by −128 when their grid is unsigned
  8-bit, then stored as uint8, + 128, for onnxruntime's exact uint8 x uint8 kernel) -> exact int32
  ``Σ_k (q_x − z_x)(q_w − z_w)``, then ``Cast`` and one ``Mul`` by ``s_x · s_w`` and ``Add`` of the bias.
  Per-row input zero-points (onnxruntime takes a scalar ``a_zero_point`` only) are subtracted as
  ``z_x · Σ_k (q_w − z_w)`` in int32.
* **Float linear** (a float input, per-channel input scales, a float weight): ``MatMul`` by the dequantized
  weight, as the runtime's fake-quant fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qgnn.errors import ConfigError

from .onnx_graph import Builder
from .packing import packed_nbytes, unpack_bits

__all__ = ["Act", "Codes", "Weight", "parse_act", "parse_weight", "quantize", "dequant", "requant", "centred",
           "linear", "quant_linear", "int_accumulator", "onnx_type"]


def _table(d: dict, key: str, tensors: dict, dtype, entries: int) -> np.ndarray:
    v = d.get(key)
    if v is None:  # zero_point null: all zero
        return np.zeros(entries, dtype)
    t = tensors[v] if isinstance(v, str) else torch.tensor(v)
    return t.detach().cpu().numpy().astype(dtype).reshape(-1)


def _a2q_bounds(widths: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(qmin, qmax) per entry as float32, as the runtime's ``_a2q_grid``."""
    w = widths.astype(np.float32)
    if signed:
        half = np.exp2(w - 1).astype(np.float32)
        return -half, (half - 1).astype(np.float32)
    return np.zeros_like(w), (np.exp2(w) - 1).astype(np.float32)


@dataclass
class Act:
    """One activation slot of the file: grid and tables as numpy arrays."""

    where: str
    kind: str
    bits: int
    qmin: int
    qmax: int
    signed: bool
    binary: bool
    granularity: str  # tensor | channel | node | nn
    scale: np.ndarray  # float32 [entries]
    zero: np.ndarray  # int32 [entries]
    widths: np.ndarray | None = None  # A2Q: int [entries]

    @property
    def code_dtype(self):
        return np.int8 if self.qmin >= -128 and self.qmax <= 127 else np.uint8


def parse_act(d: dict | None, tensors: dict, where: str) -> Act | None:
    if d is None:
        return None
    sc = d["scale"]
    entries = tensors[sc].numel() if isinstance(sc, str) else len(sc)
    a = Act(where, d.get("kind", "uniform"), d["bits"], d["qmin"], d["qmax"], bool(d["signed"]), bool(d["binary"]),
            d["granularity"], _table(d, "scale", tensors, np.float32, entries),
            _table(d, "zero_point", tensors, np.int32, entries))
    if a.kind == "a2q":
        a.widths = _table(d, "widths", tensors, np.int64, entries)
        if a.widths.size == 1 and entries > 1:
            a.widths = np.full(entries, a.widths[0], np.int64)
    return a


@dataclass
class Codes:
    """Integer codes of a tensor: ``x̂ = (codes − zero) · scale``; ``scale`` / ``zero`` broadcast against the
    codes (static numpy arrays: () per tensor, [C] per channel, [N, 1] per node; or a value name for A2Q's
    per-row groups)."""

    name: str
    dtype: type  # np.int8 | np.uint8
    granularity: str  # tensor | channel | node (nn groups are per row: "node")
    scale: np.ndarray | str
    zero: np.ndarray  # int32, () or [C] or [N, 1]; all zero for A2Q and binary grids
    act: Act

    @property
    def row_factorable(self) -> bool:
        """One scale per tensor or per row: it can be taken out of a sum over the channels."""
        return self.granularity in ("tensor", "node")

    @property
    def column_factorable(self) -> bool:
        """One scale per tensor or per channel: it can be taken out of a sum over the nodes."""
        return self.granularity in ("tensor", "channel")


def _shape_for(a: Act, arr: np.ndarray) -> np.ndarray:
    """Per-tensor -> (), per channel -> [C], per node -> [N, 1]: broadcastable against [rows, C]."""
    if a.granularity == "tensor":
        return arr.reshape(())
    if a.granularity == "channel":
        return arr.reshape(-1)
    return arr.reshape(-1, 1)


def quantize(b: Builder, x: str, a: Act) -> Codes:
    """Codes of the float tensor ``x`` under slot ``a`` (see the module docstring)."""
    if a.kind == "a2q":
        return _a2q_quantize(b, x, a)
    if a.granularity == "nn":
        raise ConfigError(f"{a.where}: nearest-neighbour groups are only defined for A2Q grids")
    dt = a.code_dtype
    scale, zero = _shape_for(a, a.scale), _shape_for(a, a.zero)
    gran = a.granularity
    if a.binary:  # sign(x / s), sign(0) = +1
        v = b.op("Div", x, b.const(scale))
        codes = b.op("Where", b.op("GreaterOrEqual", v, b.const(np.array(0.0, np.float32))),
                     b.const(np.array(1, np.int8)), b.const(np.array(-1, np.int8)), hint="codes")
        return Codes(codes, np.int8, gran, scale, np.zeros_like(zero), a)
    axis = {"tensor": {}, "channel": {"axis": -1}, "node": {"axis": 0}}[gran]
    codes = b.op("QuantizeLinear", x, b.const(a.scale.reshape(()) if gran == "tensor" else a.scale),
                 b.const((a.zero.reshape(()) if gran == "tensor" else a.zero).astype(dt)), hint="codes", **axis)
    info = np.iinfo(dt)
    if (a.qmin, a.qmax) != (info.min, info.max):
        codes = b.op("Clip", codes, b.const(np.array(a.qmin, dt)), b.const(np.array(a.qmax, dt)), hint="codes")
    return Codes(codes, dt, gran, scale, zero, a)


def _nearest_group(b: Builder, x: str, a: Act, qmax: np.ndarray) -> str:
    """Group index [N] per row, op for op as ``qgnn.quant.a2q.nearest_group``: with the ranges r = s · qmax
    sorted (by torch's own sort, so that equal ranges of different groups come in the runtime's order) and
    f the row's max |x| (unsigned: max x⁺), ``hi = searchsorted(r, f)`` (count of r < f) clamped to G − 1,
    ``lo = max(hi − 1, 0)``, then lo where ``|f − r_lo| <= |r_hi − f|`` else hi."""
    ranges = torch.from_numpy(a.scale) * torch.from_numpy(qmax)
    r_sorted, order = ranges.sort()
    r_sorted = r_sorted.numpy()
    f = b.op("Abs", x) if a.signed else b.op("Relu", x)
    f = b.op("ReduceMax", f, b.const(np.array([1], np.int64)), keepdims=0, hint="row_max")
    below = b.op("Cast", b.op("Less", b.const(r_sorted.reshape(1, -1)), b.unsqueeze(f, 1)), to=onnx_type(np.int64))
    hi = b.op("ReduceSum", below, b.const(np.array([1], np.int64)), keepdims=0, hint="searchsorted")
    hi = b.op("Min", hi, b.const(np.array(len(r_sorted) - 1, np.int64)))
    lo = b.op("Max", b.op("Sub", hi, b.const(np.array(1, np.int64))), b.const(np.array(0, np.int64)))
    r = b.const(r_sorted)
    d_lo = b.op("Abs", b.op("Sub", f, b.op("Gather", r, lo, axis=0)))
    d_hi = b.op("Abs", b.op("Sub", b.op("Gather", r, hi, axis=0), f))
    pick = b.op("Where", b.op("LessOrEqual", d_lo, d_hi), lo, hi)
    return b.op("Gather", b.const(order.numpy().astype(np.int64)), pick, axis=0, hint="group")


def _a2q_quantize(b: Builder, x: str, a: Act) -> Codes:
    qmin, qmax = _a2q_bounds(a.widths, a.signed)
    if a.granularity == "nn":
        group = _nearest_group(b, x, a, qmax)

        def per_row(t):
            return b.unsqueeze(b.op("Gather", b.const(t), group, axis=0), -1)

        s, lo, hi = per_row(a.scale), per_row(qmin), per_row(qmax)
        scale, gran = s, "node"
    else:
        gran = a.granularity
        scale = _shape_for(a, a.scale)
        s, lo, hi = b.const(scale), b.const(_shape_for(a, qmin)), b.const(_shape_for(a, qmax))
    q = b.op("Max", b.op("Min", b.op("Round", b.op("Div", x, s)), hi), lo, hint="a2q_codes")
    dt = a.code_dtype
    zero = np.zeros((), np.int32) if gran == "tensor" or isinstance(scale, str) else np.zeros_like(scale, np.int32)
    return Codes(b.op("Cast", q, to=onnx_type(dt), hint="codes"), dt, gran, scale, zero, a)


def onnx_type(dt) -> int:
    from onnx import TensorProto

    return {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8, np.int32: TensorProto.INT32,
            np.int64: TensorProto.INT64, np.float32: TensorProto.FLOAT}[dt]


def _scale_value(b: Builder, c: Codes) -> str:
    return c.scale if isinstance(c.scale, str) else b.const(c.scale.astype(np.float32))


def dequant(b: Builder, c: Codes) -> str:
    """``x̂ = (q − z) · s`` as float32."""
    a = c.act
    if a.kind == "uniform" and not a.binary and a.granularity in ("tensor", "channel", "node"):
        axis = {"tensor": {}, "channel": {"axis": -1}, "node": {"axis": 0}}[a.granularity]
        flat = a.granularity != "tensor"
        return b.op("DequantizeLinear", c.name, b.const(a.scale if flat else a.scale.reshape(())),
                    b.const((a.zero if flat else a.zero.reshape(())).astype(c.dtype)), hint="dq", **axis)
    return b.op("Mul", b.op("Cast", c.name, to=onnx_type(np.float32)), _scale_value(b, c), hint="dq")


def requant(b: Builder, x: str, a: Act | None) -> str:
    """A quantized slot on a float tensor: its fake-quant value (the runtime's ``_requant``)."""
    return x if a is None else dequant(b, quantize(b, x, a))


def centred(b: Builder, c: Codes, dtype=np.int32) -> str:
    """``q − z`` as int32 (or int64)."""
    q = b.op("Cast", c.name, to=onnx_type(dtype), hint="centred")
    if not c.zero.any():
        return q
    return b.op("Sub", q, b.const(c.zero.astype(dtype)), hint="centred")


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------


@dataclass
class Weight:
    """A weight matrix [O, K] (GAT's att: [2, H, C]): true integer codes with per-tensor / per-output-row
    tables, or a float matrix."""

    shape: tuple
    dequant: np.ndarray  # float32, the fake-quant weight (or the float weight)
    codes: np.ndarray | None = None  # int16 true codes
    scale: np.ndarray | None = None  # float32 [entries]
    zero: np.ndarray | None = None  # int32 [entries]
    qmax: int = 0

    @property
    def quantized(self) -> bool:
        return self.codes is not None

    def row_scale(self) -> np.ndarray:
        """Scale per output row [O] (per tensor: broadcast)."""
        return np.broadcast_to(self.scale, (self.shape[0],)).astype(np.float32) if self.scale.size == 1 \
            else self.scale

    def rows(self, t: np.ndarray) -> np.ndarray:
        """A per-tensor / per-row table broadcastable against the codes."""
        return t.reshape(()) if t.size == 1 else t.reshape([-1] + [1] * (len(self.shape) - 1))


def _unpack(d: dict, tensors: dict, shape: tuple, where: str) -> np.ndarray:
    numel = int(np.prod(shape))
    buf = tensors[d["codes"]]
    try:
        if d.get("kind") == "a2q":
            sc = d["scale"]
            entries = tensors[sc].numel() if isinstance(sc, str) else len(sc)
            widths = _table(d, "widths", tensors, np.int64, entries)
            rows = [(numel, 0)] if widths.size == 1 else [(numel // shape[0], r) for r in range(shape[0])]
            qmin, _ = _a2q_bounds(widths, bool(d["signed"]))
            out, pos = [], 0
            for k, r in rows:
                nb = packed_nbytes(k, int(widths[r]))
                out.append(unpack_bits(buf[pos:pos + nb], int(widths[r]), k).numpy().astype(np.int16)
                           + int(qmin[r]))
                pos += nb
            return np.concatenate(out).reshape(shape)
        stored = unpack_bits(buf, d["bits"], numel).numpy().astype(np.int16)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    codes = stored * 2 - 1 if d["binary"] else stored + d["qmin"]
    return codes.reshape(shape)


def parse_weight(layer: dict, key: str, tensors: dict, where: str) -> Weight:
    d = layer.get("slots", {}).get(key)
    if d is None:
        w = tensors[layer[f"{key}_float"]].detach().cpu().numpy().astype(np.float32)
        return Weight(tuple(w.shape), w)
    shape = tuple(d["shape"])
    entries = 1 if d["granularity"] == "tensor" else shape[0]
    codes = _unpack(d, tensors, shape, f"{where}.{key}")
    scale = _table(d, "scale", tensors, np.float32, entries)
    zero = _table(d, "zero_point", tensors, np.int32, entries)
    w = Weight(shape, np.zeros(0, np.float32), codes, scale, zero, d["qmax"])
    # the runtime's dequantize: (codes − z) · s in float32 (binary grids: z = 0)
    w.dequant = ((codes.astype(np.float32) - w.rows(zero).astype(np.float32)) * w.rows(scale)).astype(np.float32)
    return w


# --------------------------------------------------------------------------------------------------
# linear layers
# --------------------------------------------------------------------------------------------------


def int_accumulator(b: Builder, c: Codes, w: Weight) -> str:
    """Exact int32 ``Σ_k (q_x − z_x)(q_w − z_w)`` [N, O] by ``MatMulInteger``."""
    offset = 128 if w.qmax > 127 else 0  # an unsigned 8-bit weight grid as int8: only q − z matters
    q8 = (w.codes.reshape(w.shape[0], -1) - offset).astype(np.int8)
    z8 = np.broadcast_to(w.zero - offset, (w.shape[0],)).astype(np.int8) if w.zero.size > 1 \
        else (w.zero.reshape(()) - offset).astype(np.int8)
    # stored as uint8 (codes and zero-point + 128; q − z unchanged): onnxruntime's uint8 x int8 kernel sums
    # pairs of products in int16 with saturation (vpmaddubsw) on CPUs without AVX512-VNNI, wrong for full-range
    # codes; uint8 x uint8 and int8 x uint8 are exact on every CPU (tests/export/test_export_onnx.py)
    qu, zu = (q8.astype(np.int16) + 128).astype(np.uint8), (z8.astype(np.int16) + 128).astype(np.uint8)
    per_tensor_zx = c.zero.size == 1
    a_zero = b.const(c.zero.reshape(()).astype(c.dtype)) if per_tensor_zx else ""
    acc = b.op("MatMulInteger", c.name, b.const(np.ascontiguousarray(qu.T), hint="w_codes"), a_zero,
               b.const(zu, hint="w_zero"), hint="acc")
    if not per_tensor_zx and c.zero.any():  # Σ_k (q_x − z_x)(q_w − z_w) = Σ_k q_x (q_w − z_w) − z_x Σ_k (q_w − z_w)
        wsum = (q8.astype(np.int32) - z8.astype(np.int32).reshape(-1, 1)).sum(1).astype(np.int32)
        acc = b.op("Sub", acc, b.op("Mul", b.const(c.zero.astype(np.int32)), b.const(wsum.reshape(1, -1))))
    return acc


def acc_scale(b: Builder, c: Codes, w: Weight) -> str:
    """``s_x · s_w`` broadcastable against [N, O], computed in float32 as the runtime does. Per-row input
    scales give the outer product s_x s_wᵀ as a K = 1 ``MatMul`` (one product per entry: the same floats as a
    ``Mul``): a ``Mul`` feeding the ``Mul`` after ``MatMulInteger`` + ``Cast`` matches onnxruntime's
    MatMulIntegerToFloat fusion, which takes the input scale for a per-tensor one (wrong results with
    per-node scales, onnxruntime 1.32)."""
    ws = w.row_scale().astype(np.float32)
    if not isinstance(c.scale, str) and c.scale.ndim == 0:
        return b.const((np.float32(c.scale) * ws).astype(np.float32), hint="acc_scale")
    col = c.scale if isinstance(c.scale, str) else b.const(c.scale.reshape(-1, 1).astype(np.float32))
    return b.op("MatMul", col, b.const(ws.reshape(1, -1)), hint="acc_scale")


def linear(b: Builder, x, w: Weight, bias: np.ndarray | None, paths: dict, name: str) -> str:
    """``x̂ Ŵᵀ + b``: integer when ``x`` is :class:`Codes` with one scale per row and W is quantized."""
    if isinstance(x, Codes) and w.quantized and x.row_factorable:
        acc = b.op("Cast", int_accumulator(b, x, w), to=onnx_type(np.float32))
        y = b.op("Mul", acc, acc_scale(b, x, w), hint="linear")
        paths[name] = "MatMulInteger"
    else:
        xf = dequant(b, x) if isinstance(x, Codes) else x
        y = b.op("MatMul", xf, b.const(np.ascontiguousarray(w.dequant.reshape(w.shape[0], -1).T), hint="w"),
                 hint="linear")
        paths[name] = "float MatMul"
    return y if bias is None else b.op("Add", y, b.const(bias, hint="bias"))


def quant_linear(b: Builder, x: str, a: Act | None, w: Weight, bias, paths: dict, name: str) -> str:
    """``Q(x) Ŵᵀ + b`` for a float ``x`` (no input slot: the float linear)."""
    return linear(b, quantize(b, x, a) if a is not None else x, w, bias, paths, name)
