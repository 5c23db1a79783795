"""The quantizer-slot mixin shared by every ``Quant<PyGName>`` layer.

A quantized layer *is* its float layer (brevitas' design): ``QuantGCNConv`` subclasses ``GCNConv``, keeps
the same parameters under the same names, and adds one :class:`~torch.nn.ModuleDict` ``quant`` that maps a
*slot* (a place in the layer's data flow) to a :class:`~qgnn.quant.Quantizer`. A slot missing from
``quant`` stays float, so a layer with no quantizer computes exactly what its float layer computes.

Slot vocabulary (each layer supports the subset listed in its ``SLOTS``):

========================  ===========  ================================================================
slot                      rows         what is quantized
========================  ===========  ================================================================
``input``                 nodes        node features entering the layer
``weight``                (weight)     the weight matrix (SAGE: ``lin_l``, neighbours; GAT: ``lin``)
``weight_root``           (weight)     SAGE's root weight ``lin_r``
``att``                   (weight)     GAT's attention vectors ``att_src`` / ``att_dst`` (/ ``att_edge``)
``xw``                    nodes        the transformed features X·W
``edge``                  edges        edge weights (GCN: the normalised adjacency values)
``message``               edges        per-edge messages before aggregation
``aggr``                  nodes        aggregated features
``output``                nodes        the layer output
``attention``             edges        GAT attention coefficients after the softmax
========================  ===========  ================================================================

Node-row slots call the quantizer with ``index=None`` (row i is node i; under a protective mask, with the
ids of the rows passed), so a per-node quantizer (``granularity="node"``) keeps one parameter per node;
per-node quantizers are refused on edge and weight slots, whose rows are not nodes. Edge-row slots call it
with ``index=None`` (per tensor or per channel).

Protective masking (Degree-Quant, Tailor, Fernandez-Marques & Lane, ICLR 2021): when ``node_protect`` is
set and the layer is training, the layer calls ``node_protect(edge_index, num_nodes)`` once per forward to
get a bool mask over nodes (True = protected). A protected node's rows of every node-row slot, and the rows
of every edge-row slot whose *target* node is protected (messages into a protected node), bypass
quantization and stay float: a protected node's aggregate is then exact, which is what the mask is for
(high in-degree nodes have the widest aggregates). The Degree-Quant reference code keys message masks on
``edge_index[0]`` (the source under PyG's default flow); qgnn keys them on the target. Weights are never
masked. In eval mode nothing is masked and the hook is not called.

Integer aggregation (GCN, GIN, SAGE): with ``integer_aggregation = True`` (default False; set it for a whole
model with :func:`set_integer_aggregation`) and the layer in eval mode, the neighbourhood sum runs on the
integer codes of the slot that feeds it (``Quantizer.quant_int``), through
:func:`qgnn.kernels.integer_aggregate`, and is rescaled once (MixQ-GNN, Theorem 1). See each layer's
``_integer_source`` for the slot it reads and ``docs/integer.md`` for the exactness argument. The flag is
ignored (the fake-quant path runs) in training mode, for an aggregation other than sum / mean, and when the
feeding slot is float, disabled, per node / per row, or held by a quantizer with ``integer_exact = False``
(e.g. a relaxed mixture, whose output is not ``dequantize(quant_int(x))``):
:meth:`QuantModule.integer_aggregation_mode` says which path the next forward takes. The flag is a runtime
choice, not state: it is not saved in the state dict and ``to_float`` drops it. It is an inference path:
integer codes carry no gradient, so nothing upstream of the aggregation (inputs, weights, prompts) gets a
gradient through it; keep the flag off to backpropagate through an eval-mode model.

Observers and masked rows: a quantizer sees only the rows it actually quantizes (the non-protected ones),
as in the Degree-Quant reference code, which feeds ``x[~mask]`` to the low-precision quantizer and
``x[mask]`` to an identity. Its range (or LSQ step) is then fitted to the values it must represent, and
the rare protected high-degree nodes, whose aggregates are the outliers the mask exists for, do not
stretch the grid of everyone else. Per-node quantizers receive the node ids of the kept rows as ``index``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from qgnn.errors import ConfigError
from qgnn.kernels import integer_aggregate
from qgnn.quant import Quantizer, dequantize

from .graph import is_prefix_of

__all__ = [
    "ALL_SLOTS",
    "EDGE_SLOTS",
    "NODE_SLOTS",
    "WEIGHT_SLOTS",
    "QuantModule",
    "NodeProtect",
    "set_integer_aggregation",
]

ALL_SLOTS = ("input", "weight", "weight_root", "att", "xw", "edge", "message", "aggr", "output", "attention")
NODE_SLOTS = frozenset({"input", "xw", "aggr", "output"})
EDGE_SLOTS = frozenset({"edge", "message", "attention"})
WEIGHT_SLOTS = frozenset({"weight", "weight_root", "att"})

NodeProtect = Callable[[Tensor, int], Tensor]

# Attributes the quantized layer adds on top of its float layer; to_float() leaves them behind.
_QUANT_ATTRS = frozenset({"node_protect", "_last_stats", "integer_aggregation", "_cached_graph",
                          "_qgnn_node_ids"})

# PyG aggregation name -> integer_aggregate's reduce; other aggregations keep the fake-quant path
_INTEGER_REDUCE = {"add": "sum", "sum": "sum", "mean": "mean"}


def _clone_module(src: nn.Module, cls: type[nn.Module], drop_attrs=frozenset(), drop_modules=frozenset()):
    """A new ``cls`` instance holding the same parameters, buffers, sub-modules and options as ``src``.

    Why not call ``cls(...)``: PyG constructors differ per layer (GAT forces ``node_dim``, SAGE builds
    ``lin_l`` from the aggregation's output width, aggregations take ``aggr_kwargs`` that are not stored),
    so re-deriving constructor arguments loses options; copying the instance state keeps every one of
    them (cached, normalize, heads, eps, aggregation module, caches) by construction. The Parameter objects
    are shared, not copied, so an optimizer or a float state dict sees the same tensors.

    Hooks registered on ``src`` (nn.Module's and PyG's propagate / message hooks) are not carried over:
    their handles point at ``src``'s registries.
    """
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    fresh = set(new.__dict__)
    for key, value in src.__dict__.items():
        if key in drop_attrs:
            continue
        if key in ("_parameters", "_buffers", "_modules"):
            new.__dict__[key] = type(value)((k, v) for k, v in value.items() if k not in drop_modules)
        elif key == "_non_persistent_buffers_set":
            new.__dict__[key] = set(value)
        elif key == "training":
            new.training = value
        elif "hook" in key:
            if key not in fresh:  # PyG's own hook registries: empty ones of the same type
                new.__dict__[key] = type(value)() if isinstance(value, dict) else None
        else:
            new.__dict__[key] = value
    return new


class QuantModule:
    """Mixin for quantized layers: quantizer slots, ``from_float`` / ``to_float``, protective masking.

    Class attributes: ``SLOTS`` (the slots the layer supports, in data-flow order), ``DEFAULT_EXTRA_SLOTS``
    (quantized by the default slot list too) and ``FLOAT_CLASS`` (the float layer it converts from and to).

    Instance attributes:

    * ``quant`` (``nn.ModuleDict``): slot -> quantizer, only the quantized slots.
    * ``node_protect`` (graph layers only): ``None`` or ``f(edge_index, num_nodes) -> BoolTensor[N]``,
      see the module docstring.
    * ``_last_stats``: plain Python ints recorded by the last forward for cost models: ``num_nodes``
      (rows for QuantLinear), ``num_edges`` (edges actually aggregated, self-loops included),
      ``in_channels``, ``out_channels``, ``heads``, ``message_channels`` (features per message).
    """

    SLOTS: tuple[str, ...] = ()
    # Slots the default configuration quantizes beyond qgnn.methods.config.DEFAULT_SLOTS: operands of a MAC
    # that only this layer kind has (SAGE: the aggregate, which lin_l multiplies).
    DEFAULT_EXTRA_SLOTS: tuple[str, ...] = ()
    FLOAT_CLASS: type[nn.Module]
    GRAPH_LAYER = True  # QuantLinear: False (its rows need not be nodes; no edge_index to build a mask)
    SUPPORTS_INTEGER_AGGREGATION = False  # GCN, GIN, SAGE: True (see the module docstring)
    # class-level default; setting it on a layer creates the instance attribute (dropped by to_float)
    integer_aggregation = False

    quant: nn.ModuleDict
    _last_stats: dict[str, int]

    # ------------------------------------------------------------------ construction
    def _init_quant(self, quantizers: Mapping[str, Quantizer] | None = None, skip_inactive: bool = False) -> None:
        self.quant = nn.ModuleDict()
        if self.GRAPH_LAYER:
            self.node_protect: NodeProtect | None = None
        self._last_stats = {}
        active = self.active_slots()
        for slot, q in (quantizers or {}).items():
            if skip_inactive and slot in self.SLOTS and slot not in active:
                continue
            self.set_quantizer(slot, q)

    @classmethod
    def from_float(cls, module: nn.Module, quantizers: Mapping[str, Quantizer] | None = None):
        """The quantized layer for the float ``module``: same Parameter objects (shared, so every key of
        ``module.state_dict()`` stays a key of the new layer's), same options, plus ``quantizers``
        (slot -> Quantizer) under ``quant.<slot>``.

        Slots in ``SLOTS`` that this instance does not use (SAGE's ``weight_root`` with
        ``root_weight=False``) are skipped, so one config can name every slot; unknown slots raise.
        """
        if type(module) is not cls.FLOAT_CLASS:
            raise ConfigError(
                f"{cls.__name__}.from_float expects a {cls.FLOAT_CLASS.__name__}, got {type(module).__name__}"
            )
        cls._check_float(module)
        new = _clone_module(module, cls)
        new._init_quant(quantizers, skip_inactive=True)
        return new

    @classmethod
    def _check_float(cls, module: nn.Module) -> None:
        """Refuse float configurations the quantized forward does not implement (ConfigError)."""
        for name, p in module.named_parameters():
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise ConfigError(
                    f"{type(module).__name__}: parameter {name} is lazily initialised (in_channels=-1) and "
                    "not materialised yet; run one forward pass before quantizing"
                )

    def to_float(self) -> nn.Module:
        """The plain float layer with the same parameters (shared) and options, without quantizers.

        Child modules are shared as they are: a GIN layer's ``nn`` keeps whatever it holds.
        """
        return _clone_module(self, self.FLOAT_CLASS, drop_attrs=_QUANT_ATTRS, drop_modules={"quant"})

    # ------------------------------------------------------------------ slots
    def active_slots(self) -> tuple[str, ...]:
        """The slots this instance uses (``SLOTS`` minus options that remove a tensor)."""
        return self.SLOTS

    def _check_slot(self, slot: str) -> None:
        if slot not in self.SLOTS:
            raise ConfigError(
                f"{type(self).__name__} has no quantizer slot {slot!r}; valid slots: {', '.join(self.SLOTS)}"
            )

    def set_quantizer(self, slot: str, quantizer: Quantizer | None) -> None:
        """Put ``quantizer`` in ``slot`` (None removes it: the slot goes back to float)."""
        self._check_slot(slot)
        if slot not in self.active_slots():
            raise ConfigError(
                f"slot {slot!r} is unused by this {type(self).__name__} (see its options); "
                f"slots in use: {', '.join(self.active_slots())}"
            )
        if quantizer is None:
            if slot in self.quant:
                del self.quant[slot]
            return
        if not isinstance(quantizer, Quantizer):
            raise ConfigError(f"slot {slot!r} needs a qgnn.quant.Quantizer, got {type(quantizer).__name__}")
        if quantizer.granularity == "node" and slot not in NODE_SLOTS:
            raise ConfigError(
                f"a per-node quantizer needs one row per node; slot {slot!r} does not have that. "
                f"Node-row slots: {', '.join(s for s in self.SLOTS if s in NODE_SLOTS)}"
            )
        self.quant[slot] = quantizer

    def quantizers(self) -> dict[str, Quantizer]:
        """slot -> quantizer for the quantized slots, in data-flow order."""
        return {s: self.quant[s] for s in self.SLOTS if s in self.quant}

    def slot_bits(self, slot: str) -> int | None:
        """Bits of ``slot``'s codes; None when the slot is float (no quantizer, or disabled).

        A quantizer with per-element widths (a tensor ``bit_width``) reports its widest code, the width
        storage needs; read ``quant[slot].bit_width`` for the full table.
        """
        self._check_slot(slot)
        q = self.quant[slot] if slot in self.quant else None
        if q is None or not q.enabled:
            return None
        bw = q.bit_width
        return int(math.ceil(float(bw.max()))) if isinstance(bw, Tensor) else int(bw)

    # ------------------------------------------------------------------ integer aggregation
    def integer_aggregation_mode(self, edge_weighted: bool = False) -> str | None:
        """Which codes the next forward sums in integers: ``"message"``, ``"xw"`` (GCN) or ``"input"``
        (GIN / SAGE), or None when it takes the fake-quant path (flag off, training mode, an aggregation
        other than sum / mean, or no suitable quantized slot). ``edge_weighted``: whether the call passes
        edge weights (only matters for a GCN with ``normalize=False``)."""
        if not (self.SUPPORTS_INTEGER_AGGREGATION and self.integer_aggregation) or self.training:
            return None
        if any(self.__dict__.get("_slot_hooks", {}).values()):
            return None  # the integer paths skip _q, where slot hooks run: fake-quant while there are any
        if self._integer_reduce() is None:
            return None
        return self._integer_source(edge_weighted)

    def _integer_source(self, edge_weighted: bool) -> str | None:
        # A quantized message slot is the last rounding before the sum: only its codes are exact.
        if self._slot_on("message"):
            return "message" if self._integer_ready("message") else None
        return self._integer_node_source(edge_weighted)

    def _integer_node_source(self, edge_weighted: bool) -> str | None:
        """The node-row slot whose codes the sum reads when messages are not quantized (per layer)."""
        return None

    def _integer_reduce(self) -> str | None:
        aggr = getattr(self, "aggr", None)
        return _INTEGER_REDUCE.get(aggr) if isinstance(aggr, str) else None

    def _slot_on(self, slot: str) -> bool:
        q = self.quant._modules.get(slot)
        return q is not None and q.enabled

    def _integer_ready(self, slot: str) -> bool:
        """``slot`` is quantized by a quantizer whose output is ``dequantize(quant_int(x))`` with one scale
        per tensor, or per channel on the last axis (edge slots: per tensor only), so Theorem 1 applies."""
        if not self._slot_on(slot):
            return False
        q = self.quant._modules[slot]
        if not q.integer_exact:  # e.g. a relaxed mixture of grids
            return False
        if q.granularity == "tensor":
            return True
        return q.granularity == "channel" and slot not in ("edge", "attention") and q.layout.ch_axis in (-1, 1)

    def _integer_gather(self, codes, scale, zero_point, src, dst, n, like, q_e=None, s_e=None, z_e=None) -> Tensor:
        """``AGG_{(j,i)} e_ji · x_j`` from the codes of x (rows = source nodes) and optional edge codes, as
        ``like``'s dtype; no edge or no row gives zeros without calling the kernel (an empty tensor's
        quant_int has no scale)."""
        c = codes.size(1)
        if src.numel() == 0 or codes.size(0) == 0:
            return like.new_zeros((n, c))
        out = integer_aggregate(
            codes, scale, zero_point, torch.stack([src, dst]), n, q_e, s_e, z_e, reduce=self._integer_reduce()
        )
        return out.to(like.dtype)

    def _integer_messages(self, slot: str, msg: Tensor, dst: Tensor, n: int) -> Tensor:
        """Aggregate per-edge rows ``msg`` ([E, C]) through the integer codes of ``slot``'s quantizer."""
        if msg.size(0) == 0:
            return msg.new_zeros((n, msg.size(1)))
        codes, scale, zero_point = self.quant[slot].quant_int(msg)
        rows = torch.arange(msg.size(0), device=msg.device)
        return self._integer_gather(codes, scale, zero_point, rows, dst, n, msg)

    def _integer_input(self, slot: str, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(codes, scale, zero_point, x̂) of ``slot`` for node rows ``x``; x̂ = dequantize(codes) is what the
        quantizer's forward returns (bit for bit, by the quant_int contract)."""
        codes, scale, zero_point = self.quant[slot].quant_int(x)
        if codes.numel() == 0:
            return codes, scale, zero_point, x
        return codes, scale, zero_point, dequantize(codes, scale, zero_point).to(x.dtype)

    def _quant_nodes(self, slot: str, x_src: Tensor, x_dst: Tensor | None, keep: Tensor | None,
                     integer: bool = False):
        """Quantize node rows of ``slot`` for a one-set (``x_dst`` None) or bipartite input, in one quantizer
        call (so an observer updates once per forward); returns (x̂_src, x̂_dst or None, codes) with codes
        ``(q, scale, zero_point)`` of x_src when ``integer`` (the integer path), else None.

        Bipartite rows: the targets are the first ``N_dst`` nodes of the sources (PyG's sampled blocks), so
        under a :func:`~qgnn.nn.context.node_ids` context the target rows take the first ``N_dst`` ids."""
        if integer:
            codes = self.quant[slot].quant_int(x_src)
            xh = x_src if codes[0].numel() == 0 else dequantize(*codes).to(x_src.dtype)
            xd = None if x_dst is None else self._integer_input(slot, x_dst)[3]
            return xh, xd, codes
        if x_dst is None:
            return self._q(slot, x_src, keep), None, None
        if is_prefix_of(x_dst, x_src):  # a trimmed block: the targets are rows of the sources, quantized once
            out = self._q(slot, x_src, keep)
            return out, out[: x_dst.size(0)], None
        ids = self.__dict__.get("_qgnn_node_ids")
        both = torch.cat([x_src, x_dst])
        cat_ids = None if ids is None else torch.cat([ids, ids[: x_dst.size(0)]])
        out = self._q(slot, both, None, ids=cat_ids)
        return out[: x_src.size(0)], out[x_src.size(0):], None

    def _aggregate_rows(self, m_src: Tensor, g, ekeep: Tensor | None, weight: Tensor | None = None) -> Tensor:
        """``AGG_{j -> i} Q_msg(w_ji · m_j)`` over the edges of the view ``g`` (``weight`` None: 1).

        A sparse input with sum / mean aggregation and no message quantizer takes the sparse-dense product
        (no ``[E, C]`` tensor, :meth:`GraphView.aggregate`); otherwise the per-edge messages are formed (PyG's
        gather / scatter), in edge chunks when no gradient is recorded so inference memory stays
        O(N·C + E·chunk)."""
        reduce = self._integer_reduce()
        if g.sparse and reduce is not None and not self._slot_on("message") and not self._message_hooked():
            return g.aggregate(m_src, weight, reduce)
        chunk = self._edge_chunk(m_src.size(-1))
        if torch.is_grad_enabled() or g.num_edges <= chunk or ekeep is not None or reduce != "sum":
            msg = m_src.index_select(0, g.src)
            if weight is not None:
                msg = weight.view(-1, *([1] * (msg.dim() - 1))) * msg
            return self.aggregate(self._q("message", msg, ekeep), g.dst, dim_size=g.n_dst)
        out = m_src.new_zeros((g.n_dst, *m_src.shape[1:]))
        for lo in range(0, g.num_edges, chunk):
            src, dst = g.src[lo:lo + chunk], g.dst[lo:lo + chunk]
            msg = m_src.index_select(0, src)
            if weight is not None:
                msg = weight[lo:lo + chunk].view(-1, *([1] * (msg.dim() - 1))) * msg
            out.index_add_(0, dst, self._q("message", msg))
        return out

    @staticmethod
    def _edge_chunk(channels: int) -> int:
        # about 64 MB of float32 messages per chunk
        return max(1, (1 << 24) // max(int(channels), 1))

    def _message_hooked(self) -> bool:
        return bool(self.__dict__.get("_slot_hooks", {}).get("message"))

    def _neighbour_sum(self, xh_src, codes, g, ekeep, mode, project=None) -> tuple[Tensor, int]:
        """GIN / SAGE: (AGG_j m_j, message width) with m_j = project(x̂_j) (identity when None), on the
        integer path ``mode`` ("input": from ``codes`` of x_src; "message") or the fake-quant one (None)."""
        if mode == "input":
            q_x, s_x, z_x = codes
            return self._integer_gather(q_x, s_x, z_x, g.src, g.dst, g.n_dst, xh_src), xh_src.size(-1)
        m = project(xh_src) if project is not None else xh_src
        if mode == "message":
            return self._integer_messages("message", m.index_select(0, g.src), g.dst, g.n_dst), m.size(-1)
        return self._aggregate_rows(m, g, ekeep), m.size(-1)

    def _record_stats(self, n, edges, in_channels, out_channels, heads=1, message_channels=None) -> None:
        self._last_stats = {"num_nodes": n, "num_edges": edges, "in_channels": in_channels,
                            "out_channels": out_channels, "heads": heads,
                            "message_channels": in_channels if message_channels is None else message_channels}

    # ------------------------------------------------------------------ forward helpers
    def register_slot_hook(self, slot: str, hook: Callable[[nn.Module, Tensor], Tensor | None]) -> RemovableHandle:
        """Call ``hook(layer, x)`` on what slot ``slot`` hands on (its quantized rows and any protected float
        rows together; the float tensor when the slot has no quantizer); a non-None result replaces it.

        This is where a prompt can act on a layer's quantized input (``qgnn.prompts``, ``node_after_quant``).
        While a hook is registered the layer takes the fake-quant path in eval mode too: the integer
        aggregation paths read codes directly and would skip it.
        """
        self._check_slot(slot)
        hooks = self.__dict__.setdefault("_slot_hooks", {})  # plain attribute: not state, not a submodule
        per_slot = hooks.setdefault(slot, OrderedDict())
        handle = RemovableHandle(per_slot)
        per_slot[handle.id] = hook
        return handle

    def _q_target(self, slot: str, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """:meth:`_q` on target rows (``aggr``, ``output``): under a :func:`~qgnn.nn.context.node_ids`
        context the targets of a bipartite input are the first rows of the sources (PyG's sampled blocks), so
        they take the first ``len(x)`` ids."""
        ids = self.__dict__.get("_qgnn_node_ids")
        if keep is not None and keep.numel() and int(keep[-1]) >= x.size(0):  # sources' keep ids (sorted)
            keep = keep[: int(torch.searchsorted(keep, x.size(0)))]
        return self._q(slot, x, keep, ids=False if ids is None else ids[: x.size(0)])

    def _q(self, slot: str, x: Tensor, keep: Tensor | None = None, ids: Tensor | None | bool = False) -> Tensor:
        """Apply ``slot``'s quantizer (identity when absent) to the rows ``keep`` of ``x`` (all rows when
        None); the other rows, the protected ones, stay float. Then the slot's hooks, if any
        (:meth:`register_slot_hook`). ``ids``: the global node id of each row (default: the
        :func:`~qgnn.nn.context.node_ids` context's; None: row i is node i).

        Only the kept rows reach the quantizer, with their node ids as ``index`` for node slots, so a
        per-node table is indexed by node and an observer sees exactly what it quantizes.
        """
        q = self.quant._modules.get(slot)
        if q is not None:
            # rows -> global node ids under a mini-batch (qgnn.nn.context.node_ids); None: row i is node i
            # (only per-node tables are indexed by node; other granularities ignore ids)
            if ids is False:  # not given: the context's ids
                ids = self.__dict__.get("_qgnn_node_ids")
            ids = ids if slot in NODE_SLOTS and q.granularity == "node" else None
            if ids is not None and ids.numel() != x.size(0):
                _ids_mismatch(self, slot, ids, x)
            if keep is None:
                x = q(x, ids)
            elif q.granularity in ("tensor", "channel") and hasattr(q, "forward_rows"):  # same result, fewer copies
                x = q.forward_rows(x, keep)
            else:
                index = (keep if ids is None else ids.index_select(0, keep)) if slot in NODE_SLOTS else None
                x = x.index_copy(0, keep, q(x.index_select(0, keep), index))
        hooks = self.__dict__.get("_slot_hooks")
        if hooks and hooks.get(slot):
            for hook in list(hooks[slot].values()):
                out = hook(self, x)
                x = x if out is None else out
        return x

    def _post_aggregate(self, out: Tensor, index: Tensor, num_nodes: int) -> Tensor:
        """Run PyG's aggregate-forward hooks (``MessagePassing.register_aggregate_forward_hook``) on the
        aggregate ``out``, as ``propagate`` does in the float layer: ``hook(module, ({"index", "ptr",
        "dim_size"},), out)``, a non-None result replacing ``out``.

        The quantized layers bypass ``propagate``, so they call this at the float layer's hook point, after
        the ``aggr`` quantizer where it applies to that tensor directly: GCN (before the bias), SAGE (before
        ``lin_l``) and GAT (``[N, heads, C]``, before concatenating / averaging heads, residual and bias).
        GIN: on the neighbour sum Σ_j x̂_j, before ``(1 + eps) x̂_i`` is added and ``aggr`` quantizes the sum.
        Prompts (``qgnn.prompts``, LoRAP) use this point, so one hook serves float and quantized layers.
        """
        hooks = getattr(self, "_aggregate_forward_hooks", None)
        if not hooks:
            return out
        inputs = ({"index": index, "ptr": None, "dim_size": num_nodes},)
        for hook in list(hooks.values()):
            res = hook(self, inputs, out)
            out = res if res is not None else out
        return out

    def _qw(self, slot: str, w: Tensor) -> Tensor:
        q = self.quant._modules.get(slot)
        return w if q is None else q(w)

    def _protect_mask(self, g, bipartite: bool = False, prefix: bool = False) -> Tensor | None:
        """Call ``node_protect`` once (training only) with the input graph (a :class:`GraphView`) and check
        what it returns. The mask is over one node set: a bipartite input under a mask is refused, unless its
        targets are the first ``N_dst`` of its sources (``prefix``: a trimmed sampled block), when the mask is
        over the sources and the targets take its first ``N_dst`` entries."""
        hook = self.node_protect
        if hook is None or not self.training:
            return None
        if (bipartite or g.n_src != g.n_dst) and not (prefix and g.n_dst <= g.n_src):
            raise ConfigError(f"{type(self).__name__}: protective masking (Degree-Quant) needs one node set; "
                              "pass the sampled subgraph as (x, edge_index) rather than bipartite blocks")
        num_nodes = g.n_src
        # the graph as the layer was given it (edge_index[0] -> edge_index[1] under the layer's flow)
        mask = hook(torch.stack([g.src, g.dst] if self.flow == "source_to_target" else [g.dst, g.src]), num_nodes)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (num_nodes,):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ConfigError(f"node_protect must return a bool tensor of shape ({num_nodes},), got {got}")
        return mask

    @staticmethod
    def _node_keep(mask: Tensor | None) -> Tensor | None:
        """Ids of the unprotected nodes (None: all), computed once per forward and shared by the slots."""
        return None if mask is None else (~mask).nonzero().view(-1)

    def _edge_keep(self, mask: Tensor | None, dst: Tensor) -> Tensor | None:
        """Rows of the edges whose target is unprotected (None: all): messages into a protected node stay
        float, so its aggregate is exact."""
        if mask is None or not any(s in self.quant for s in EDGE_SLOTS):
            return None
        return (~mask.index_select(0, dst)).nonzero().view(-1)


    def _read_inputs(self, x, edge_index, size):
        """GIN / SAGE: (x_src, x_dst, bipartite, graph view, mask keep ids, edge keep ids) of a forward's inputs.
        A torch_sparse ``SparseTensor``'s values are dropped, as PyG's GIN / SAGE drop them, and an all-ones
        adjacency is unweighted (so the integer path, which sums codes, still applies)."""
        from .graph import read_graph, split_pair

        x_src, x_dst, pair = split_pair(x, type(self).__name__)
        g = read_graph(self, x_src, x_dst, edge_index, size, pair)
        if g.sparse and (not isinstance(edge_index, Tensor) or
                         (g.weight is not None and bool((g.weight == 1).all()))):
            g.weight = None
        mask = self._protect_mask(g, pair, prefix=is_prefix_of(x_dst, x_src))
        return x_src, x_dst, pair, g, self._node_keep(mask), self._edge_keep(mask, g.dst)

    def _endpoints(self, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """(source j, target i) per edge of a ``[2, E]`` edge_index, following the layer's ``flow`` as PyG."""
        if self.flow == "source_to_target":
            return edge_index[0], edge_index[1]
        return edge_index[1], edge_index[0]


def _ids_mismatch(layer, slot, ids, x):
    raise ConfigError(f"{type(layer).__name__}: slot {slot!r} has {x.size(0)} rows but the node_ids context "
                      f"names {ids.numel()} nodes; a per-node quantizer needs one id per row")


def set_integer_aggregation(model: nn.Module, enabled: bool = True) -> list[str]:
    """Set ``integer_aggregation`` on every layer of ``model`` that supports it (QuantGCNConv, QuantGINConv,
    QuantSAGEConv); returns their module names. Takes effect in eval mode only (see :mod:`qgnn.nn.base`)."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, QuantModule) and m.SUPPORTS_INTEGER_AGGREGATION:
            m.integer_aggregation = bool(enabled)
            names.append(name)
    return names
