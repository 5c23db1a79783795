"""One ONNX emitter per layer type of the export file (``qgnn.export.format``), registered by type name.

Each emitter writes the computation of the integer runtime's layer (``qgnn.export.runtime``: same slots,
same integer / float paths, same float op order) with :mod:`qgnn.export.onnx_quant` and the graph ops of
:class:`~qgnn.export.onnx_graph.Builder`:

* **gcn**: ``xw = Q_in(x) Ŵᵀ`` (MatMulInteger), ``acc_i = Σ_j (q_e,ij − z_e)(q_h,j − z_h)`` over the
  normalised graph (int32 Gather + ScatterND add), ``s_e s_h · acc``, then aggr / bias / output slots.
* **gin**: ``acc_i = Σ_j (q_x,j − z_x)`` (int32), ``s_x · acc (/ deg) + (1 + ε) x̂_i``, then the MLP.
* **sage**: with a per-tensor input grid, a quantized ``W_l`` and no aggr slot the runtime sums the int32
  accumulators of ``q_x W_lᵀ`` over the neighbours (linearity); summed here in int64 (K · 255 · 128 per edge
  can pass 2^31 on a hub). Otherwise the quantized input is summed and multiplied after.
* **gat**: attention logits ``Σ_c (q_h − z_h)(q_a − z_a)`` per head in int32, LeakyReLU + segment softmax in
  float, aggregation ``Σ_j (q_α,ij − z_α)(q_h,j − z_h)`` per head in int32.
* **linear**, **batchnorm** (eval: ``x · α + β`` with α, β as torch's inference kernel computes them),
  **relu**.

A layer reads ``ctx``: the builder, the file's tensors, the input names (``edge_index``, ``n``) and the record
of which path each op took.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from qgnn.errors import ConfigError

from .onnx_graph import Builder
from .onnx_quant import (
    centred,
    dequant,
    int_accumulator,
    linear,
    onnx_type,
    parse_act,
    parse_weight,
    quant_linear,
    quantize,
    requant,
)

__all__ = ["Ctx", "LAYERS", "register_layer", "emit"]


@dataclass
class Ctx:
    b: Builder
    tensors: dict
    edge_index: str
    n: str  # int64 [1]: the node count
    paths: dict = field(default_factory=dict)

    def floats(self, name: str | None) -> np.ndarray | None:
        return None if name is None else self.tensors[name].detach().cpu().numpy().astype(np.float32)


LAYERS: dict[str, Callable] = {}


def register_layer(kind: str):
    """Register the ONNX emitter of layer type ``kind``: ``fn(ctx, layer, x, where) -> output name``."""
    def deco(fn):
        LAYERS[kind] = fn
        return fn
    return deco


def emit(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    fn = LAYERS.get(layer.get("type"))
    if fn is None:
        raise ConfigError(f"{where}: layer type {layer.get('type')!r} is not supported by the ONNX export "
                          f"(supported: {', '.join(sorted(LAYERS))})")
    scope, ctx.b.scope = ctx.b.scope, where
    try:
        return fn(ctx, layer, x, where)
    finally:
        ctx.b.scope = scope


def _acts(ctx: Ctx, layer: dict, where: str) -> dict:
    return {k: parse_act(v, ctx.tensors, f"{where}.{k}") for k, v in layer.get("slots", {}).items()
            if k not in ("weight", "weight_root", "att")}


def _f32(b: Builder, x: str) -> str:
    return b.op("Cast", x, to=onnx_type(np.float32))


def _mean_divide(ctx: Ctx, out: str, dst: str) -> str:
    """``out / deg.clamp(min=1)`` per row (GraphPlan.deg: incoming edges)."""
    b = ctx.b
    deg = b.op("Max", b.in_degree(dst, ctx.n), b.const(np.array(1.0, np.float32)))
    return b.op("Div", out, b.unsqueeze(deg, -1), hint="mean")


def _finish(ctx: Ctx, q: dict, out: str, bias) -> str:
    b = ctx.b
    out = requant(b, out, q.get("aggr"))
    if bias is not None:
        out = b.op("Add", out, b.const(bias, hint="bias"))
    return requant(b, out, q.get("output"))


# --------------------------------------------------------------------------------------------------
# node-wise layers
# --------------------------------------------------------------------------------------------------


@register_layer("linear")
def _linear(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    q = _acts(ctx, layer, where)
    w = parse_weight(layer, "weight", ctx.tensors, where)
    y = quant_linear(ctx.b, x, q.get("input"), w, ctx.floats(layer.get("bias")), ctx.paths, where)
    return requant(ctx.b, y, q.get("output"))


@register_layer("batchnorm")
def _batchnorm(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    """Eval BatchNorm as torch's CPU inference kernel: α = w / sqrt(var + eps), β = b − mean · α, x · α + β."""
    mean, var = (ctx.tensors[layer[k]].detach().float() for k in ("running_mean", "running_var"))
    if bool((var < 0).any()):
        raise ConfigError(f"{where}: running_var must be non-negative")
    w = ctx.tensors[layer["weight"]].float() if layer.get("weight") else torch.ones_like(mean)
    bias = ctx.tensors[layer["bias"]].float() if layer.get("bias") else torch.zeros_like(mean)
    alpha = (1 / torch.sqrt(var + torch.tensor(float(layer["eps"]), dtype=torch.float32))) * w
    beta = bias - mean * alpha
    b = ctx.b
    return b.op("Add", b.op("Mul", x, b.const(alpha.numpy(), hint="bn_alpha")), b.const(beta.numpy(), hint="bn_beta"),
                hint="batchnorm")


@register_layer("relu")
def _relu(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    return ctx.b.op("Relu", x)


# --------------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------------


def _flow(layer: dict, where: str) -> str:
    flow = layer.get("flow", "source_to_target")
    if flow not in ("source_to_target", "target_to_source"):
        raise ConfigError(f"{where}: unknown flow {flow!r}")
    return flow


def _reduce(layer: dict, where: str) -> str:
    r = {"add": "sum", "sum": "sum", "mean": "mean"}.get(layer["options"]["aggr"])
    if r is None:
        raise ConfigError(f"{where}: aggregation {layer['options']['aggr']!r} is not supported by the ONNX "
                          "export (sum, mean)")
    return r


@register_layer("gcn")
def _gcn(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    b, q, o = ctx.b, _acts(ctx, layer, where), layer["options"]
    flow = _flow(layer, where)
    w_edge = None
    ei = ctx.edge_index
    if o["normalize"]:
        ei, w_edge = b.gcn_norm(ctx.edge_index, ctx.n, bool(o["add_self_loops"]), flow)  # "improved": see gcn_norm
    src, dst = b.endpoints(ei, flow)
    weight = parse_weight(layer, "weight", ctx.tensors, where)
    xw = quant_linear(b, x, q.get("input"), weight, None, ctx.paths, f"{where}.xw")
    h = quantize(b, xw, q["xw"]) if q.get("xw") is not None else None
    e = quantize(b, w_edge, q["edge"]) if q.get("edge") is not None and w_edge is not None else None
    if h is not None and h.column_factorable and (w_edge is None or e is not None) \
            and (e is None or isinstance(e.scale, np.ndarray) and e.scale.ndim == 0):
        ec = centred(b, e) if e is not None else None
        acc = b.aggregate(centred(b, h), src, dst, ctx.n, np.int32, ec)
        s = h.scale if e is None else (np.float32(e.scale) * h.scale).astype(np.float32)
        out = b.op("Mul", _f32(b, acc), b.const(np.asarray(s, np.float32)), hint="aggregate")
        ctx.paths[f"{where}.aggregate"] = "integer"
    else:
        hf = dequant(b, h) if h is not None else xw
        ef = dequant(b, e) if e is not None else w_edge
        out = b.aggregate(hf, src, dst, ctx.n, np.float32, ef)
        ctx.paths[f"{where}.aggregate"] = "float"
    return _finish(ctx, q, out, ctx.floats(layer.get("bias")))


@register_layer("gin")
def _gin(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    b, q = ctx.b, _acts(ctx, layer, where)
    reduce = _reduce(layer, where)
    src, dst = b.endpoints(ctx.edge_index, _flow(layer, where))
    xq = quantize(b, x, q["input"]) if q.get("input") is not None else None
    one_eps = b.const(np.array(1 + float(layer["eps"]), np.float32))
    if xq is not None and xq.column_factorable:
        acc = b.aggregate(centred(b, xq), src, dst, ctx.n, np.int32)
        out = b.op("Mul", _f32(b, acc), b.const(np.asarray(xq.scale, np.float32)), hint="aggregate")
        ctx.paths[f"{where}.aggregate"] = "integer"
        xf = dequant(b, xq)
    else:
        xf = dequant(b, xq) if xq is not None else x
        out = b.aggregate(xf, src, dst, ctx.n, np.float32)
        ctx.paths[f"{where}.aggregate"] = "float"
    if reduce == "mean":
        out = _mean_divide(ctx, out, dst)
    out = b.op("Add", out, b.op("Mul", one_eps, xf), hint="gin_self")
    out = requant(b, out, q.get("aggr"))
    for i, sub in enumerate(layer["nn"]):
        out = emit(ctx, sub, out, f"{where}.nn.{i}")
    return requant(b, out, q.get("output"))


@register_layer("sage")
def _sage(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    b, q, o = ctx.b, _acts(ctx, layer, where), layer["options"]
    reduce = _reduce(layer, where)
    src, dst = b.endpoints(ctx.edge_index, _flow(layer, where))
    xq = quantize(b, x, q["input"]) if q.get("input") is not None else None
    weight = parse_weight(layer, "weight", ctx.tensors, where)
    bias = ctx.floats(layer.get("bias"))
    aggr_q = q.get("aggr")
    if xq is not None and xq.granularity == "tensor" and weight.quantized and aggr_q is None:
        # lin_l(mean_j x̂_j) = s_x s_w · mean_j acc_j: the int32 accumulators of q_x W_lᵀ summed in int64
        acc = b.op("Cast", int_accumulator(b, xq, weight), to=onnx_type(np.int64))
        ctx.paths[f"{where}.lin_l"] = "MatMulInteger"
        out = b.aggregate(acc, src, dst, ctx.n, np.int64)
        s = (np.float32(xq.scale) * weight.row_scale()).astype(np.float32)
        out = b.op("Mul", _f32(b, out), b.const(s), hint="aggregate")
        if reduce == "mean":
            out = _mean_divide(ctx, out, dst)
        if bias is not None:
            out = b.op("Add", out, b.const(bias, hint="bias"))
        ctx.paths[f"{where}.aggregate"] = "integer"
    else:
        if xq is not None and xq.column_factorable:
            out = b.aggregate(centred(b, xq), src, dst, ctx.n, np.int32)
            out = b.op("Mul", _f32(b, out), b.const(np.asarray(xq.scale, np.float32)), hint="aggregate")
            ctx.paths[f"{where}.aggregate"] = "integer"
        else:
            out = b.aggregate(dequant(b, xq) if xq is not None else x, src, dst, ctx.n, np.float32)
            ctx.paths[f"{where}.aggregate"] = "float"
        if reduce == "mean":
            out = _mean_divide(ctx, out, dst)
        out = linear(b, quantize(b, out, aggr_q) if aggr_q is not None else out, weight, bias, ctx.paths,
                     f"{where}.lin_l")
    if layer.get("root_weight"):
        root = parse_weight(layer, "weight_root", ctx.tensors, where)
        out = b.op("Add", out, linear(b, xq if xq is not None else x, root, None, ctx.paths, f"{where}.lin_r"))
    if o.get("normalize"):  # F.normalize(p=2): x / max(||x||, 1e-12)
        norm = b.op("ReduceL2", out, b.const(np.array([-1], np.int64)), keepdims=1)
        out = b.op("Div", out, b.op("Max", norm, b.const(np.array(1e-12, np.float32))), hint="normalize")
    return requant(b, out, q.get("output"))


@register_layer("gat")
def _gat(ctx: Ctx, layer: dict, x: str, where: str) -> str:
    b, q, o = ctx.b, _acts(ctx, layer, where), layer["options"]
    heads, ch = int(layer["heads"]), int(layer["out"])
    ei = b.with_self_loops(ctx.edge_index, ctx.n) if o["add_self_loops"] else ctx.edge_index
    src, dst = b.endpoints(ei, _flow(layer, where))
    weight = parse_weight(layer, "weight", ctx.tensors, where)
    att = parse_weight(layer, "att", ctx.tensors, where)  # [2, H, C]: att_src, att_dst
    xw = quant_linear(b, x, q.get("input"), weight, None, ctx.paths, f"{where}.xw")
    h = quantize(b, xw, q["xw"]) if q.get("xw") is not None else None
    hw_shape = b.const(np.array([-1, heads, ch], np.int64))
    integer_h = h is not None and h.granularity == "tensor"
    if integer_h and att.quantized:
        # e_j = ĥ_j · â = s_h s_a Σ_c (q_h − z_h)(q_a − z_a), per head, in int32
        hc = b.op("Reshape", centred(b, h), hw_shape)
        ac = att.codes.astype(np.int32) - att.rows(att.zero).astype(np.int32)
        sa = att.row_scale()
        logits = []
        for k in (0, 1):
            dot = b.op("ReduceSum", b.op("Mul", hc, b.const(ac[k])), b.const(np.array([-1], np.int64)),
                       keepdims=0, hint="att_dot")
            logits.append(b.op("Mul", _f32(b, dot), b.const((np.float32(h.scale) * sa[k]).astype(np.float32))))
        ctx.paths[f"{where}.attention_logits"] = "integer"
    else:
        hf = b.op("Reshape", dequant(b, h) if h is not None else xw, hw_shape)
        logits = [b.op("ReduceSum", b.op("Mul", hf, b.const(att.dequant[k])), b.const(np.array([-1], np.int64)),
                       keepdims=0) for k in (0, 1)]
        ctx.paths[f"{where}.attention_logits"] = "float"
    alpha = b.op("Add", b.op("Gather", logits[0], src, axis=0), b.op("Gather", logits[1], dst, axis=0))
    alpha = b.op("LeakyRelu", alpha, alpha=float(o["negative_slope"]))
    alpha = b.segment_softmax(alpha, dst, ctx.n)  # float: the method needs it
    qa = q.get("attention")
    at = quantize(b, alpha, qa) if qa is not None else None
    if integer_h and at is not None and at.granularity == "tensor":
        hc = b.op("Reshape", centred(b, h), hw_shape)
        acc = b.aggregate(hc, src, dst, ctx.n, np.int32, centred(b, at))
        s = (np.float32(at.scale) * np.float32(h.scale)).astype(np.float32)
        out = b.op("Mul", _f32(b, acc), b.const(s), hint="aggregate")
        ctx.paths[f"{where}.aggregate"] = "integer"
    else:
        hf = b.op("Reshape", dequant(b, h) if h is not None else xw, hw_shape)
        out = b.aggregate(hf, src, dst, ctx.n, np.float32, dequant(b, at) if at is not None else alpha)
        ctx.paths[f"{where}.aggregate"] = "float"
    out = b.op("Reshape", out, b.const(np.array([-1, heads * ch], np.int64)))
    out = requant(b, out, q.get("aggr"))
    if not o["concat"]:
        out = b.op("ReduceMean", b.op("Reshape", out, hw_shape), b.const(np.array([1], np.int64)), keepdims=0)
    bias = ctx.floats(layer.get("bias"))
    if bias is not None:
        out = b.op("Add", out, b.const(bias, hint="bias"))
    return requant(b, out, q.get("output"))


