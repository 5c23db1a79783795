"""Cost model of a (quantized) GNN: BitOPs, model bytes and average bits, measured on one forward.

The one definition used everywhere in qgnn (code, results JSON, docs/cost.md):

    BitOPs = Σ over multiply-accumulates (MACs) of b_a × b_w = Σ_ops MACs(op) × b_a(op) × b_w(op)

where b_a is the bit-width of the activation operand and b_w that of the other operand (a weight, an
edge coefficient or an attention vector); an operand that is not quantized counts 32 bits. FP32 BitOPs
are the same MACs with every width set to 32, so ``bitops_reduction = bitops_fp32 / bitops`` is
``1024 / (b_a · b_w)`` for a uniform model. The MACs per layer (N nodes the layer runs on, E edges it
aggregates over *including the self loops it adds*; ``[slot]`` is the bit-width of that quantizer slot,
32 when the slot is absent or disabled):

======================  ====================================  ================  ============================
layer / op              MACs                                  b_a               b_w
======================  ====================================  ================  ============================
Linear                  rows × in × out                       [input]           [weight]
GCN   transform (X·W)   N × in × out                          [input]           [weight]
GCN   aggregate         (E + N − loops) × out                 [xw]              [edge]; 1 if unweighted
GAT   transform         N × in × heads·out                    [input]           [weight]
GAT   attention logits  (N_src + N_dst) × heads·out           [xw]              [att]
GAT   aggregate         (E + N − loops) × heads·out           [xw]              [attention]
GIN   aggregate         E × in                                [message|input]   1 (0/1 adjacency)
GIN   self term         N × in  ((1 + eps)·x_i)               [input]           1 if eps ≡ 0, else 32
SAGE  aggregate         E × in                                [message|input]   1 (0/1 adjacency)
SAGE  mean rescale      N × in  (× 1/deg, mean only)          32                32
SAGE  transform lin_l  N × in × out                          [aggr]            [weight]
SAGE  root lin_r       N × in × out                          [input]           [weight_root]
LGConv aggregate        E × F                                 [input]           [edge]; 1 if unweighted
======================  ====================================  ================  ============================

The 1 of an unweighted (0/1) adjacency is 1 in the FP32 count too: summing neighbours is additions, and
quantizing the features does not change how many there are. Bias additions, activations, normalisation,
softmax, dropout and pooling readouts are not MACs of a weighted operand and are not counted. MACs of
the GIN MLP and of every other ``nn.Linear`` are counted by their own Linear layers.

How this relates to published counts (details in docs/cost.md): MACs × b_w × b_a is the "BitOps" of
mixed-precision CNN search (e.g. EdMIPS, Cai & Vasconcelos, CVPR 2020), here extended to aggregation
per edge. MixQ-GNN (Moustafa et al., ICDE 2025, arXiv 2505.09361) multiplies an operation count by the
*mean* of a module's bit-widths (linear in bits), so its FP32 / quantized ratio is 32 / b̄ where ours is
1024 / (b_a b_w). Degree-Quant (Tailor et al., ICLR 2021) reports INT8 / INT4 accuracy and measured
speed-ups, not BitOPs. A2Q (Zhu et al., ICLR 2023) reports average bits and a compression ratio about
32 / average bits of stored values, which our ``avg_bits_*`` follow.

Bytes and average bits (see :func:`model_bytes` for the exact rules): quantized weights are packed at
their slot bits, each enabled quantizer adds its scale table (and zero-point table when asymmetric) at 4
bytes per entry, everything else (biases, BatchNorm affine parameters and running statistics) is 4
bytes per element.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, LGConv, SAGEConv
from torch_geometric.nn import Linear as PygLinear
from torch_geometric.nn.aggr import MeanAggregation
from torch_geometric.nn.conv import MessagePassing

import qgnn.nn  # noqa: F401  (registers the layer kinds whose facts this module supplies)
from qgnn.nn.registry import facts_for, set_fact

__all__ = [
    "FP32_BITS",
    "WEIGHT_SLOTS",
    "ACTIVATION_SLOTS",
    "CostReport",
    "Op",
    "cost_report",
    "format_cost_table",
    "model_bytes",
    "slot_bits",
]

FP32_BITS = 32
WEIGHT_SLOTS = ("weight", "weight_root", "att")
ACTIVATION_SLOTS = ("input", "xw", "edge", "message", "aggr", "output", "attention")

# Parameters each weight slot quantizes, per float layer type (attribute paths; missing ones are skipped).
_WEIGHT_TARGETS: list[tuple[type, dict[str, tuple[str, ...]]]] = [
    (GCNConv, {"weight": ("lin.weight",)}),
    (GATConv, {"weight": ("lin.weight", "lin_src.weight", "lin_dst.weight"),
               "att": ("att_src", "att_dst", "att_edge")}),
    (SAGEConv, {"weight": ("lin_l.weight",), "weight_root": ("lin_r.weight",)}),
    (nn.Linear, {"weight": ("weight",)}),
    (PygLinear, {"weight": ("weight",)}),
]


# --------------------------------------------------------------------------------------------------- slots
def _quant_dict(module: nn.Module) -> nn.ModuleDict | None:
    quant = getattr(module, "quant", None)
    return quant if isinstance(quant, nn.ModuleDict) else None


def _quantizer(module: nn.Module, slot: str) -> nn.Module | None:
    """The enabled quantizer in ``slot`` of ``module``, else None (the slot is 32-bit float)."""
    quant = _quant_dict(module)
    if quant is None or slot not in quant:
        return None
    q = quant[slot]
    return q if getattr(q, "enabled", True) else None


def _as_bits(bw) -> float | int:
    # Per-element widths (A2Q-style tables, relaxed expected widths) count at their mean.
    if isinstance(bw, Tensor):
        v = float(bw.detach().float().mean()) if bw.numel() else float(FP32_BITS)
    else:
        v = float(bw)
    return int(v) if v.is_integer() else v


def slot_bits(module: nn.Module, *slots: str, default: float | int = FP32_BITS) -> float | int:
    """Bit-width of the first enabled quantizer among ``slots`` of ``module``; ``default`` (32) if none.

    Reads ``module.quant[slot].bit_width`` (an int, or a tensor of per-element widths counted at its mean).
    """
    for s in slots:
        q = _quantizer(module, s)
        if q is not None:
            return _as_bits(q.bit_width)
    return default


# --------------------------------------------------------------------------------------------------- ops
@dataclass
class Op:
    """One kind of multiply-accumulate of a layer: ``macs`` MACs of a ``b_a``-bit by a ``b_w``-bit operand.

    ``b_a_fp32`` / ``b_w_fp32`` are the widths of the same op in the FP32 reference (32, except the 1 of an
    unweighted adjacency). ``a_slot`` / ``w_slot`` name the slots the widths come from (None: fixed).
    """

    op: str
    macs: int
    b_a: float | int
    b_w: float | int
    b_a_fp32: float | int = FP32_BITS
    b_w_fp32: float | int = FP32_BITS
    a_slot: str | None = None
    w_slot: str | None = None

    @property
    def bitops(self) -> float | int:
        return _num(self.macs * self.b_a * self.b_w)

    @property
    def bitops_fp32(self) -> float | int:
        return _num(self.macs * self.b_a_fp32 * self.b_w_fp32)

    def key(self) -> tuple:
        return (self.op, self.b_a, self.b_w, self.b_a_fp32, self.b_w_fp32, self.a_slot, self.w_slot)

    def absorb(self, other: Op) -> bool:
        """Add ``other``'s MACs to this op when it is the same op (True), else leave both (False).

        The same op at other widths (A2Q's per-node widths: each call's b_a is the mean over its rows) is
        absorbed when only one operand's width differs: that width becomes the MAC-weighted mean, so
        MACs × b_a × b_w stays the sum of the two ops' BitOPs. Both widths differing: two ops."""
        if other.key() == self.key():
            self.macs += other.macs
            return True
        if (self.op, self.b_a_fp32, self.b_w_fp32, self.a_slot, self.w_slot) != (
                other.op, other.b_a_fp32, other.b_w_fp32, other.a_slot, other.w_slot):
            return False
        total = self.macs + other.macs
        if self.b_w == other.b_w:
            if total:
                self.b_a = _num((self.macs * self.b_a + other.macs * other.b_a) / total)
        elif self.b_a == other.b_a:
            if total:
                self.b_w = _num((self.macs * self.b_w + other.macs * other.b_w) / total)
        else:
            return False
        self.macs = total
        return True

    def to_dict(self) -> dict:
        return {"op": self.op, "macs": self.macs, "b_a": self.b_a, "b_w": self.b_w, "bitops": self.bitops,
                "bitops_fp32": self.bitops_fp32}


def _num(v: float | int) -> float | int:
    """Python int when integral (exact JSON), float otherwise (fractional mean widths)."""
    if isinstance(v, int):
        return v
    return int(v) if float(v).is_integer() else float(v)


@dataclass
class _Layer:
    name: str
    type: str
    calls: int = 0
    ops: list[Op] = field(default_factory=list)
    # slot -> [numel, Σ numel · bits, bits of the first call]: per-call widths can differ (A2Q per node)
    acts: dict[str, list] = field(default_factory=dict)
    shape: dict = field(default_factory=dict)

    def add(self, ops: list[Op], acts: list[tuple[str, int, float]], shape: dict) -> None:
        # A module called several times (shared weights, one head per layer, a forward over several
        # batches) accumulates its MACs and activations.
        self.calls += 1
        for op in ops:
            if not any(o.absorb(op) for o in self.ops):
                self.ops.append(op)
        for slot, numel, bits in acts:
            entry = self.acts.setdefault(slot, [0, 0, bits])
            entry[0] += numel
            entry[1] += numel * bits
        self.shape = shape

    def act_bits(self, slot: str) -> float | int:
        """The slot's mean width over every element this layer saw (the first call's when it saw none)."""
        numel, bit_sum, first = self.acts[slot]
        return _num(bit_sum / numel) if numel else first

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "calls": self.calls,
            "shape": dict(self.shape),
            "macs": sum(o.macs for o in self.ops),
            "bitops": _num(sum(o.bitops for o in self.ops)),
            "bitops_fp32": _num(sum(o.bitops_fp32 for o in self.ops)),
            "ops": [o.to_dict() for o in self.ops],
            "activations": {s: {"numel": n, "bits": self.act_bits(s)} for s, (n, _, _) in self.acts.items()},
        }


# --------------------------------------------------------------------------------------------------- graph
def _plain(t: Tensor) -> Tensor:
    return t.as_subclass(Tensor) if type(t) is not Tensor else t


def _edges(edge_index) -> tuple[int, int]:
    """(number of edges, number of self loops among them) of an edge_index / sparse adjacency."""
    if edge_index is None:
        return 0, 0
    if isinstance(edge_index, Tensor):
        if edge_index.layout != torch.strided:  # torch.sparse adjacency
            idx = edge_index.to_sparse_coo().coalesce().indices()
        else:
            idx = _plain(edge_index)
        if idx.dim() != 2 or idx.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(idx.shape)}")
        n = idx.size(1)
        return n, (int((idx[0] == idx[1]).sum()) if n else 0)
    if hasattr(edge_index, "coo") and hasattr(edge_index, "nnz"):  # torch_sparse.SparseTensor
        row, col, _ = edge_index.coo()
        return row.numel(), int((row == col).sum()) if row.numel() else 0
    raise TypeError(f"cannot count the edges of a {type(edge_index).__name__}")


def _with_self_loops(edge_index, num_nodes: int) -> int:
    # PyG's add_remaining_self_loops / remove+add_self_loops keep every non-loop edge and one loop per node.
    e, loops = _edges(edge_index)
    return e - loops + num_nodes


# --------------------------------------------------------------------------------------------------- capture
def _bind(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    try:
        return dict(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return dict(kwargs)


def _arg(bound: dict, args: tuple, name: str, pos: int):
    if name in bound:
        return bound[name]
    return args[pos] if len(args) > pos else None


def _pair(x) -> tuple[Tensor | None, Tensor | None, bool]:
    """(x_src, x_dst, bipartite) of a layer input that is a tensor or a (src, dst) pair."""
    if isinstance(x, (tuple, list)):
        return x[0], x[1], True
    return x, x, False


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _count_linear(m: nn.Module, bound: dict, args: tuple, out) -> tuple[list[Op], list, dict]:
    x = _arg(bound, args, "input", 0)
    if x is None:
        x = _arg(bound, args, "x", 0)
    fin, fout = x.size(-1), m.weight.shape[0]
    rows = x.numel() // fin if fin else 0
    ba, bw = slot_bits(m, "input"), slot_bits(m, "weight")
    ops = [Op("transform", rows * fin * fout, ba, bw, a_slot="input", w_slot="weight")]
    return ops, [("input", rows * fin, ba)], {"rows": rows, "in": fin, "out": fout}


def _count_gcn(m: GCNConv, bound: dict, args: tuple, out) -> tuple[list[Op], list, dict]:
    x, ei = _arg(bound, args, "x", 0), _arg(bound, args, "edge_index", 1)
    ew = _arg(bound, args, "edge_weight", 2)
    n, fin, fout = x.size(0), x.size(-1), m.out_channels
    e_total = None
    if m.normalize and getattr(m, "cached", False):
        # A cached layer aggregates over the graph it normalised first, whatever edge_index it is given.
        cache = getattr(m, "_cached_edge_index", None)
        if cache is not None:
            e_total = _edges(cache[0])[0]
        elif getattr(m, "_cached_adj_t", None) is not None:
            e_total = _edges(m._cached_adj_t)[0]
    if e_total is None:
        loops = m.normalize and getattr(m, "add_self_loops", True)
        e_total = _with_self_loops(ei, n) if loops else _edges(ei)[0]
    ba, bw = slot_bits(m, "input"), slot_bits(m, "weight")
    b_xw = slot_bits(m, "xw")
    weighted = m.normalize or ew is not None
    b_e = slot_bits(m, "edge") if weighted else 1
    ops = [
        Op("transform", n * fin * fout, ba, bw, a_slot="input", w_slot="weight"),
        Op("aggregate", e_total * fout, b_xw, b_e, b_w_fp32=FP32_BITS if weighted else 1, a_slot="xw",
           w_slot="edge" if weighted else None),
    ]
    acts = [("input", n * fin, ba), ("xw", n * fout, b_xw)]
    if weighted:
        acts.append(("edge", e_total, b_e))
    return ops, acts, {"nodes": n, "edges": e_total, "in": fin, "out": fout}


def _count_gat(m: GATConv, bound: dict, args: tuple, out) -> tuple[list[Op], list, dict]:
    x, ei = _arg(bound, args, "x", 0), _arg(bound, args, "edge_index", 1)
    edge_attr, size = _arg(bound, args, "edge_attr", 2), _arg(bound, args, "size", 3)
    x_src, x_dst, bipartite = _pair(x)
    h, c = m.heads, m.out_channels
    hc = h * c
    ba, bw = slot_bits(m, "input"), slot_bits(m, "weight")
    b_xw, b_att, b_alpha = slot_bits(m, "xw"), slot_bits(m, "att"), slot_bits(m, "attention")
    # Rows transformed: a single tensor goes through lin once, or through lin_src and lin_dst when the
    # layer was built bipartite; a pair goes through one transform each.
    inputs = [x_src] if not bipartite else [t for t in (x_src, x_dst) if t is not None]
    n_transforms = 2 if (not bipartite and m.lin is None) else 1
    t_macs = sum(t.size(0) * t.size(-1) for t in inputs) * hc * n_transforms
    n_src = x_src.size(0)
    n_dst = x_dst.size(0) if x_dst is not None else None
    logit_rows = n_src + (n_dst if n_dst is not None else 0)
    ops = [Op("transform", t_macs, ba, bw, a_slot="input", w_slot="weight")]
    res = getattr(m, "res", None)
    if res is not None and x_dst is not None and hasattr(res, "weight"):
        ops.append(Op("residual", x_dst.size(0) * x_dst.size(-1) * res.weight.shape[0], ba, FP32_BITS,
                      a_slot="input"))
    ops.append(Op("attention_logits", logit_rows * hc, b_xw, b_att, a_slot="xw", w_slot="att"))
    if m.add_self_loops:
        num_nodes = n_src if n_dst is None else min(n_src, n_dst)
        if size is not None:
            num_nodes = min(size)
        e_total = _with_self_loops(ei, num_nodes)
    else:
        e_total = _edges(ei)[0]
    if getattr(m, "lin_edge", None) is not None and edge_attr is not None:
        # Edge features stay float: their transform and logits are 32-bit operands.
        ops.append(Op("edge_transform", e_total * edge_attr.size(-1) * hc, FP32_BITS, FP32_BITS))
        ops.append(Op("edge_logits", e_total * hc, FP32_BITS, b_att, w_slot="att"))
    ops.append(Op("aggregate", e_total * hc, b_xw, b_alpha, a_slot="xw", w_slot="attention"))
    n_in = sum(t.numel() for t in inputs)
    acts = [("input", n_in, ba), ("xw", logit_rows * hc, b_xw), ("attention", e_total * h, b_alpha)]
    shape = {"nodes": n_src if n_dst is None else max(n_src, n_dst), "edges": e_total,
             "in": x_src.size(-1), "out": hc}
    return ops, acts, shape


def _sum_edges(m: nn.Module, bound: dict, args: tuple) -> tuple[Tensor, Tensor | None, int]:
    x, ei = _arg(bound, args, "x", 0), _arg(bound, args, "edge_index", 1)
    x_src, x_dst, _ = _pair(x)
    return x_src, x_dst, _edges(ei)[0]


def _count_gin(m: GINConv, bound: dict, args: tuple, out) -> tuple[list[Op], list, dict]:
    x_src, x_dst, e = _sum_edges(m, bound, args)
    f = x_src.size(-1)
    ba = slot_bits(m, "input")
    b_msg = slot_bits(m, "message", "input")
    ops = [Op("aggregate", e * f, b_msg, 1, b_w_fp32=1, a_slot="message" if _quantizer(m, "message") else "input")]
    acts = [("input", x_src.numel() + (x_dst.numel() if x_dst is not None and x_dst is not x_src else 0), ba)]
    if _quantizer(m, "message") is not None:
        acts.append(("message", e * f, b_msg))
    if x_dst is not None:
        # (1 + eps)·x_i: a multiply by a float only when eps can be non-zero; otherwise a plain add (1 bit).
        eps = m.eps
        fixed_zero = not isinstance(eps, nn.Parameter) and float(eps) == 0.0
        b_self = 1 if fixed_zero else FP32_BITS
        ops.append(Op("self", x_dst.size(0) * f, ba, b_self, b_w_fp32=b_self, a_slot="input"))
    n = x_dst.size(0) if x_dst is not None else x_src.size(0)
    return ops, acts, {"nodes": n, "edges": e, "in": f, "out": _first(out).size(-1)}


def _count_sage(m: SAGEConv, bound: dict, args: tuple, out) -> tuple[list[Op], list, dict]:
    x_src, x_dst, e = _sum_edges(m, bound, args)
    ba = slot_bits(m, "input")
    n_out = _first(out).size(0)
    ops: list[Op] = []
    f = x_src.size(-1)
    if m.project and hasattr(m, "lin"):
        # Projection (lin + ReLU) before aggregation; its weight is not a quantizer slot target.
        ops.append(Op("project", x_src.size(0) * f * m.lin.weight.shape[0], ba, FP32_BITS, a_slot="input"))
        f = m.lin.weight.shape[0]
    b_msg = slot_bits(m, "message", "input")
    ops.append(Op("aggregate", e * f, b_msg, 1, b_w_fp32=1,
                  a_slot="message" if _quantizer(m, "message") else "input"))
    if isinstance(m.aggr_module, MeanAggregation):
        # mean = sum × 1/deg: one wide-accumulator × float multiply per node and feature, the same in FP32.
        ops.append(Op("mean_rescale", n_out * f, FP32_BITS, FP32_BITS))
    b_aggr = slot_bits(m, "aggr")
    ops.append(Op("transform", n_out * f * m.out_channels, b_aggr, slot_bits(m, "weight"), a_slot="aggr",
                  w_slot="weight"))
    acts = [("input", x_src.numel() + (x_dst.numel() if x_dst is not None and x_dst is not x_src else 0), ba),
            ("aggr", n_out * f, b_aggr)]
    if _quantizer(m, "message") is not None:
        acts.append(("message", e * f, b_msg))
    if m.root_weight and x_dst is not None:
        ops.append(Op("root", x_dst.size(0) * x_dst.size(-1) * m.out_channels, ba, slot_bits(m, "weight_root"),
                      a_slot="input", w_slot="weight_root"))
    return ops, acts, {"nodes": n_out, "edges": e, "in": x_src.size(-1), "out": m.out_channels}


def _count_lgconv(m: LGConv, bound: dict, args: tuple, out) -> tuple[list[Op], list, dict]:
    x, ei = _arg(bound, args, "x", 0), _arg(bound, args, "edge_index", 1)
    ew = _arg(bound, args, "edge_weight", 2)
    e, f = _edges(ei)[0], x.size(-1)
    ba = slot_bits(m, "input")
    weighted = m.normalize or ew is not None
    b_e = slot_bits(m, "edge") if weighted else 1
    ops = [Op("aggregate", e * f, ba, b_e, b_w_fp32=FP32_BITS if weighted else 1, a_slot="input",
              w_slot="edge" if weighted else None)]
    acts = [("input", x.numel(), ba)] + ([("edge", e, b_e)] if weighted else [])
    return ops, acts, {"nodes": x.size(0), "edges": e, "in": f, "out": f}


# The built-in layer kinds' counters, registered as their facts (qgnn.nn.registry: a layer owns its facts; a
# new layer registers its own counter in its qgnn/nn file). Layers without a quantized twin: by float class.
for _kind, _fn in (("gcn", _count_gcn), ("gat", _count_gat), ("sage", _count_sage), ("gin", _count_gin),
                   ("linear", _count_linear)):
    set_fact(_kind, "cost", _fn)
_OTHER_COUNTERS: list[tuple[type, Callable]] = [(LGConv, _count_lgconv), (PygLinear, _count_linear)]

# Parametric modules that do no MAC we count (elementwise affine maps, look-ups): no warning for them.
_NO_MAC_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.PReLU,
)


def _counter_for(module: nn.Module) -> Callable | None:
    facts = facts_for(module)
    if facts is not None and facts.cost is not None:
        return facts.cost
    for cls, fn in _OTHER_COUNTERS:
        if isinstance(module, cls):
            return fn
    return None


def _is_quantizer(module: nn.Module) -> bool:
    from qgnn.quant import Quantizer

    return isinstance(module, Quantizer)


def _known_no_mac(module: nn.Module) -> bool:
    return isinstance(module, _NO_MAC_TYPES) or type(module).__module__.startswith("torch_geometric.nn.norm")


def _collect(model: nn.Module) -> tuple[list[tuple[str, nn.Module, Callable]], list[str]]:
    """Supported layers to hook (name, module, counter) and the names of unsupported types that do work."""
    targets: list[tuple[str, nn.Module, Callable]] = []
    unsupported: set[str] = set()

    def visit(mod: nn.Module, name: str) -> None:
        counter = _counter_for(mod)
        if counter is not None:
            targets.append((name, mod, counter))
            if isinstance(mod, GINConv):  # its MLP's Linear layers are layers of their own
                for child_name, child in mod.named_children():
                    visit(child, f"{name}.{child_name}" if name else child_name)
            return  # the other supported layers own every parameter below them
        if _is_quantizer(mod) or _known_no_mac(mod):
            return
        if isinstance(mod, MessagePassing):
            unsupported.add(type(mod).__name__)  # its aggregation would go uncounted
            return
        if next(mod.parameters(recurse=False), None) is not None:
            unsupported.add(type(mod).__name__)
        for child_name, child in mod.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")
    return targets, sorted(unsupported)


# --------------------------------------------------------------------------------------------------- bytes
def _get_path(module: nn.Module, path: str):
    obj = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _weight_targets(module: nn.Module, slot: str) -> list[nn.Parameter]:
    """Parameters that the weight slot ``slot`` of ``module`` quantizes."""
    for cls, table in _WEIGHT_TARGETS:
        if isinstance(module, cls):
            paths = table.get(slot, ())
            break
    else:
        paths = ("weight",) if slot == "weight" else ()
    out = []
    for path in paths:
        p = _get_path(module, path)
        if isinstance(p, nn.Parameter) and not nn.parameter.is_lazy(p):
            out.append(p)
    return out


def _table_size(q: nn.Module, targets: list[Tensor]) -> int:
    """Entries of a quantizer's scale table: 1 per tensor, C per channel, num_nodes per node."""
    layout = getattr(q, "layout", None)
    size = getattr(layout, "size", None)
    if size is not None:
        return int(size)
    try:
        size = int(q.scale.numel())
    except Exception:  # uncalibrated lazily sized table: size it from the tensor it will quantize
        size = 0
    if size == 0 and targets and layout is not None:
        size = int(targets[0].shape[layout.ch_axis])
    return max(size, 1)


@dataclass
class _Bytes:
    model_bytes: int = 0
    model_bytes_fp32: int = 0
    qparam_bytes: int = 0
    weight_bit_sum: float = 0.0
    weight_numel: int = 0


def _bytes(model: nn.Module) -> _Bytes:
    quantizer_params: set[int] = set()
    for m in model.modules():
        if _is_quantizer(m):
            quantizer_params.update(id(p) for p in m.parameters())
        quant = _quant_dict(m)
        if quant is not None:
            quantizer_params.update(id(p) for p in quant.parameters())
    packed: dict[int, float | int] = {}
    tables: dict[int, tuple[nn.Module, list]] = {}
    for m in model.modules():
        quant = _quant_dict(m)
        if quant is None:
            continue
        for slot, q in quant.items():
            if not getattr(q, "enabled", True):
                continue  # a disabled quantizer is the identity: nothing of it is stored
            targets = _weight_targets(m, slot) if slot in WEIGHT_SLOTS else []
            for p in targets:
                packed[id(p)] = _as_bits(q.bit_width)
            tables.setdefault(id(q), (q, targets))
    b = _Bytes()
    for _, p in model.named_parameters():
        if id(p) in quantizer_params or nn.parameter.is_lazy(p):
            continue
        n = p.numel()
        bits = packed.get(id(p), FP32_BITS)
        b.model_bytes += math.ceil(n * bits / 8) if id(p) in packed else 4 * n
        b.model_bytes_fp32 += 4 * n
        b.weight_bit_sum += n * bits
        b.weight_numel += n
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            for t in (m.running_mean, m.running_var):  # needed at inference; num_batches_tracked is not
                if t is not None:
                    b.model_bytes += 4 * t.numel()
                    b.model_bytes_fp32 += 4 * t.numel()
                    b.weight_bit_sum += FP32_BITS * t.numel()
                    b.weight_numel += t.numel()
    for q, targets in tables.values():
        p = _table_size(q, targets)
        b.qparam_bytes += 4 * p * (1 if getattr(q, "symmetric", True) else 2)
    b.model_bytes += b.qparam_bytes
    return b


def model_bytes(model: nn.Module) -> tuple[int, int]:
    """(model_bytes, model_bytes_fp32) of ``model``, needing no data.

    * a parameter quantized by an enabled ``weight`` / ``weight_root`` / ``att`` slot: ``ceil(numel × bits
      / 8)`` (packed codes);
    * every enabled quantizer (weight or activation slot): 4 bytes per scale entry, plus 4 per zero-point
      entry when asymmetric (entries: 1 per tensor, C per channel, num_nodes per node); a quantizer's own
      parameters (LSQ steps, learned zero points) *are* these tables and are not counted again;
    * every other parameter, and BatchNorm running mean / variance: 4 bytes per element.

    ``model_bytes_fp32`` is 4 bytes per element of the same parameters and BatchNorm statistics (no
    quantizer tables). Observer buffers (running min / max) and ``num_batches_tracked`` are training
    state and are not counted.
    """
    b = _bytes(model)
    return b.model_bytes, b.model_bytes_fp32


# --------------------------------------------------------------------------------------------------- report
@dataclass
class CostReport:
    """Cost of one forward of a model on one graph or batch (see the module docstring for definitions).

    ``layers``: one dict per supported layer (name, type, calls, shape, macs, bitops, bitops_fp32, ops,
    activations). ``bitops`` / ``bitops_fp32``: totals. ``avg_bits_weights``: element-weighted mean of the
    stored bits of parameters and BatchNorm statistics; ``avg_bits_activations``: element-weighted mean of
    the bits of the activation operands of the counted MACs; ``avg_bits``: both pooled.
    """

    layers: list[dict]
    bitops: float | int
    bitops_fp32: float | int
    macs: int
    avg_bits: float
    avg_bits_weights: float
    avg_bits_activations: float
    model_bytes: int
    model_bytes_fp32: int
    qparam_bytes: int = 0
    bitops_linear: float = 0.0
    bitops_linear_fp32: float = 0.0
    unsupported: list[str] = field(default_factory=list)
    num_nodes: int | None = None
    num_edges: int | None = None

    @property
    def bitops_reduction(self) -> float:
        """FP32 BitOPs / quantized BitOPs (1.0 when nothing was counted)."""
        if not self.bitops:
            return 1.0 if not self.bitops_fp32 else math.inf
        return self.bitops_fp32 / self.bitops

    @property
    def bitops_reduction_linear(self) -> float:
        """MixQ-GNN's measure, linear in bits: Σ MACs · (b_a + b_w) / 2 in FP32 over the same here.

        Not qgnn's BitOPs: it is reported only to compare with MixQ-GNN's published reductions
        (a uniform b-bit model gives 32 / b here and 1024 / b² in ``bitops_reduction``)."""
        if not self.bitops_linear:
            return 1.0
        return self.bitops_linear_fp32 / self.bitops_linear

    @property
    def compression(self) -> float:
        """FP32 bytes / bytes."""
        return self.model_bytes_fp32 / self.model_bytes if self.model_bytes else 1.0

    def to_dict(self) -> dict:
        """The ``cost`` entry of a results JSON."""
        return {
            "bitops": self.bitops,
            "bitops_fp32": self.bitops_fp32,
            "avg_bits": self.avg_bits,
            "model_bytes": self.model_bytes,
            "model_bytes_fp32": self.model_bytes_fp32,
            "bitops_reduction": self.bitops_reduction,
            "bitops_reduction_linear": self.bitops_reduction_linear,
            "compression": self.compression,
            "avg_bits_weights": self.avg_bits_weights,
            "avg_bits_activations": self.avg_bits_activations,
            "per_layer": [dict(layer) for layer in self.layers],
        }


def _default_forward(model: nn.Module, data) -> object:
    if not hasattr(data, "x") and isinstance(data, Iterable):  # batches (a DataLoader): one forward each
        for batch in data:
            _default_forward(model, batch)
        return None
    batch = getattr(data, "batch", None)
    if batch is not None:
        return model(data.x, data.edge_index, batch)
    return model(data.x, data.edge_index)


def _mean(bit_sum: float, numel: int) -> float:
    return float(bit_sum / numel) if numel else float(FP32_BITS)


def cost_report(model: nn.Module, data_or_batch, forward: Callable | None = None) -> CostReport:
    """Measure ``model`` on one eval-mode, no-grad forward over ``data_or_batch`` and return its cost.

    Forward hooks on every supported layer (``GCNConv``, ``GATConv``, ``SAGEConv``, ``GINConv``,
    ``LGConv``, ``nn.Linear``, PyG ``Linear`` and their quantized subclasses) record the node counts,
    edge counts (plus the self loops GCN / GAT add; a cached GCN reports its cached graph) and widths of
    that call. ``forward(model, data)`` runs the model (default ``model(x, edge_index)``, with ``batch``
    as a third argument when the data has one; ``data_or_batch`` may also be an iterable of batches, a
    DataLoader, run one batch at a time). Counts add up over every call of a module, so a forward over a
    dataset's batches reports what one batch of all its graphs would, at the memory of one batch (a width
    that differs between calls, A2Q's per-node widths, is their MAC- or element-weighted mean). Modules
    of other types that hold parameters, and other message-passing layers, are skipped with one warning
    naming their types. Each module's train / eval
    flag is restored afterwards. Note that an uncalibrated quantizer calibrates on this forward, as it
    would on any first eval forward.
    """
    forward = forward or _default_forward
    targets, unsupported = _collect(model)
    if unsupported:
        warnings.warn(
            f"cost_report: no cost model for {', '.join(unsupported)}; their MACs are not counted "
            "(their parameters still count in model bytes)",
            UserWarning,
            stacklevel=2,
        )
    layers: dict[int, _Layer] = {}
    handles = []

    def make_hook(layer: _Layer, counter: Callable):
        def hook(module, args, kwargs, output):
            ops, acts, shape = counter(module, _bind(module, args, kwargs), args, output)
            layer.add(ops, acts, shape)

        return hook

    for name, module, counter in targets:
        if id(module) in layers:  # the same module reachable under two names: count its calls once
            continue
        layer = _Layer(name or type(module).__name__, type(module).__name__)
        layers[id(module)] = layer
        handles.append(module.register_forward_hook(make_hook(layer, counter), with_kwargs=True))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            forward(model, data_or_batch)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:  # per module: a frozen observer inside a training model stays frozen
            m.training = mode

    ordered = list(layers.values())
    bitops = _num(sum(o.bitops for layer in ordered for o in layer.ops))
    bitops_fp32 = _num(sum(o.bitops_fp32 for layer in ordered for o in layer.ops))
    macs = sum(o.macs for layer in ordered for o in layer.ops)
    linear = sum(o.macs * (o.b_a + o.b_w) / 2 for layer in ordered for o in layer.ops)
    linear_fp32 = sum(o.macs * (o.b_a_fp32 + o.b_w_fp32) / 2 for layer in ordered for o in layer.ops)
    act_bits = sum(bit_sum for layer in ordered for _, bit_sum, _ in layer.acts.values())
    act_numel = sum(n for layer in ordered for n, _, _ in layer.acts.values())
    by = _bytes(model)
    ei = getattr(data_or_batch, "edge_index", None)
    x = getattr(data_or_batch, "x", None)
    return CostReport(
        layers=[layer.to_dict() for layer in ordered],
        bitops=bitops,
        bitops_fp32=bitops_fp32,
        macs=macs,
        avg_bits=_mean(by.weight_bit_sum + act_bits, by.weight_numel + act_numel),
        avg_bits_weights=_mean(by.weight_bit_sum, by.weight_numel),
        avg_bits_activations=_mean(act_bits, act_numel),
        model_bytes=by.model_bytes,
        model_bytes_fp32=by.model_bytes_fp32,
        qparam_bytes=by.qparam_bytes,
        bitops_linear=float(linear),
        bitops_linear_fp32=float(linear_fp32),
        unsupported=unsupported,
        num_nodes=int(x.size(0)) if isinstance(x, Tensor) else None,
        num_edges=_safe_edges(ei),
    )


def _safe_edges(ei) -> int | None:
    try:
        return _edges(ei)[0] if ei is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------- table
def _si(v: float | int) -> str:
    v = float(v)
    if abs(v) < 1e4:
        return f"{v:.0f}" if v.is_integer() else f"{v:.1f}"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def _bits_str(b: float | int) -> str:
    return str(b) if isinstance(b, int) or float(b).is_integer() else f"{b:.2f}"


def _bytes_str(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _ratio(a: float, b: float) -> str:
    from qgnn.train.results import format_ratio  # the one ratio format of the CLI

    return format_ratio(a / b) if b else "-"


def format_cost_table(report: CostReport) -> str:
    """A plain-text table: one row per layer op (MACs, b_a, b_w, BitOPs, FP32 BitOPs, reduction), totals."""
    from qgnn.train.results import format_ratio

    head = ("layer", "type", "op", "MACs", "b_a", "b_w", "BitOPs", "FP32 BitOPs", "FP32/q")
    rows: list[tuple[str, ...]] = []
    for layer in report.layers:
        ops = layer["ops"] or [{"op": "(not called)", "macs": 0, "b_a": "-", "b_w": "-", "bitops": 0,
                                "bitops_fp32": 0}]
        for i, op in enumerate(ops):
            rows.append((
                layer["name"] if i == 0 else "",
                layer["type"] if i == 0 else "",
                op["op"],
                _si(op["macs"]),
                op["b_a"] if isinstance(op["b_a"], str) else _bits_str(op["b_a"]),
                op["b_w"] if isinstance(op["b_w"], str) else _bits_str(op["b_w"]),
                _si(op["bitops"]),
                _si(op["bitops_fp32"]),
                _ratio(op["bitops_fp32"], op["bitops"]),
            ))
    total = ("total", "", "", _si(report.macs), "", "", _si(report.bitops), _si(report.bitops_fp32),
             _ratio(report.bitops_fp32, report.bitops))
    widths = [max(len(str(r[i])) for r in [head, total, *rows]) for i in range(len(head))]
    right = {3, 4, 5, 6, 7, 8}

    def fmt(r: Iterable[str]) -> str:
        cells = [f"{c:>{w}}" if i in right else f"{c:<{w}}" for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "| " + " | ".join(cells) + " |"

    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, fmt(head), line, *(fmt(r) for r in rows), line, fmt(total), line]
    out.append(f"model bytes: {_bytes_str(report.model_bytes)} (FP32 {_bytes_str(report.model_bytes_fp32)}, "
               f"compression {format_ratio(report.compression)}; quantizer tables {_bytes_str(report.qparam_bytes)})")
    out.append(f"average bits: {report.avg_bits:.2f} (weights {report.avg_bits_weights:.2f}, "
               f"activations {report.avg_bits_activations:.2f})")
    if report.unsupported:
        out.append(f"not counted (no cost model): {', '.join(report.unsupported)}")
    return "\n".join(out)
