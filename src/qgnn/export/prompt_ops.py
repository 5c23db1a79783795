"""The prompts of a prompted export file at inference: GPF / GPF-plus on the input features, LoRAP on the
aggregates (the ``prompts`` section, :mod:`qgnn.export.prompt_format`).

:func:`load_runtime_prompts` decodes the prompt tables (8-bit codes ``q · s``, or float32) and returns a
:class:`RuntimePrompts`, which the packed executor (:mod:`qgnn.export.packed`) calls at the places
:mod:`qgnn.prompts.inject` documents: ``node(x)`` on the float features before the first layer's input
quantizer, ``aggregate(i, s)`` on the float aggregate rows of conv ``i`` (GCN after its ``aggr`` quantizer,
GIN on the neighbour sum before the self term, SAGE before lin_l, GAT with the heads concatenated).

The arithmetic is the training modules' (:mod:`qgnn.prompts.modules`), op for op in float32, so that with
the same parameters the outputs are the same:

* GPF (Fang et al., NeurIPS 2023): ``x + p``;
* GPF-plus: ``x + softmax(x W_aᵀ) P``;
* LoRAP (Liu, Li & Rossi, arXiv 2601.15079): ``s + softmax(s W_aᵀ) U V`` by
  :func:`qgnn.kernels.lorap_inject` (the plain-torch reference, the kernel CPU training uses); with
  ``normalize`` the mixing weights come from ``ŝ = s / rms(s)``: ``s + (inject(ŝ) − ŝ)``.

Prompts are float: they sit outside every quantizer slot of the fake-quant model too. Only their stored
parameters may be 8-bit (``qgnn.export.prompt_export`` says which and why).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from qgnn.errors import CheckpointError, ConfigError

from .packing import unpack_bits

__all__ = ["RuntimePrompts", "decode_param", "load_runtime_prompts"]


def _decode_scale(p: dict, tensors: dict[str, Tensor], rows: int, where: str) -> Tensor:
    v = p["scale"]
    s = tensors[v].to(torch.float32) if isinstance(v, str) else torch.tensor(v, dtype=torch.float32)
    if s.numel() not in (1, rows) or not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise CheckpointError(f"{where}: scales must be finite and positive, one per tensor or per row")
    return s


def decode_param(p: dict, tensors: dict[str, Tensor], where: str) -> Tensor:
    """A prompt parameter as float32: the float tensor, or 8-bit codes decoded as ``q · s`` (per tensor or
    per row, symmetric). CheckpointError for a missing, mis-shaped, non-finite or mis-packed table."""
    shape = tuple(p["shape"])
    numel = math.prod(shape)
    if "float" in p:
        t = tensors.get(p["float"])
        if t is None or t.dtype != torch.float32 or tuple(t.shape) != shape:
            raise CheckpointError(f"{where}: needs a float32 tensor {list(shape)} named {p['float']!r}")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: holds NaN or infinite values")
        return t
    buf = tensors.get(p["codes"])
    if buf is None:
        raise CheckpointError(f"{where}: missing codes tensor {p['codes']!r}")
    try:
        q = unpack_bits(buf, p["bits"], numel).to(torch.int16) + int(p["qmin"])
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None
    rows = shape[0] if len(shape) > 1 else 1
    s = _decode_scale(p, tensors, rows, where)
    q = q.to(torch.float32).view(rows, -1)
    return (q * (s.view(-1, 1) if s.numel() > 1 else s.reshape(()))).view(shape)


def _gpf(params: dict) -> Callable[[Tensor], Tensor]:
    p = params["p"]
    return lambda x: x + p


def _gpf_plus(params: dict) -> Callable[[Tensor], Tensor]:
    w_a, basis = params["w_a"], params["basis"]
    return lambda x: x + torch.softmax(x @ w_a.t(), dim=-1) @ basis


def _lorap(params: dict, normalize: bool) -> Callable[[Tensor], Tensor]:
    from qgnn.kernels import lorap_inject

    w_a, u, v = params["w_a"], params["u"], params["v"]

    def apply(s: Tensor) -> Tensor:
        if not normalize:
            return lorap_inject(s, w_a, u, v, backend="reference")
        # LoRAP.forward's normalised form: the clamp before the root, as in training
        unit = s / s.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-24).sqrt()
        return s + (lorap_inject(unit, w_a, u, v, backend="reference") - unit)

    return apply


def _build(entry: dict, tensors: dict[str, Tensor], where: str):
    params = {name: decode_param(p, tensors, f"{where}.{name}") for name, p in entry["params"].items()}
    kind = entry["kind"]
    if kind == "gpf":
        return _gpf(params)
    if kind == "gpf-plus":
        return _gpf_plus(params)
    return _lorap(params, bool(entry.get("normalize", False)))


class RuntimePrompts:
    """The decoded prompts of one file: ``has_node`` / ``node(x)`` and ``has_aggregate(i)`` /
    ``aggregate(i, s)``, float32 rows [M, d] in, the prompted rows [M, d] out (a new tensor)."""

    def __init__(self, node, node_dim: int | None, aggregate: dict[int, tuple], node_after_quant: bool = False):
        self._node, self._node_dim, self._aggregate = node, node_dim, aggregate
        self.node_after_quant = node_after_quant

    @property
    def has_node(self) -> bool:
        return self._node is not None

    def node(self, x: Tensor) -> Tensor:
        if self._node is None:
            return x
        return self._node(self._rows(x, self._node_dim, "the node prompt"))

    def has_aggregate(self, i: int) -> bool:
        return i in self._aggregate

    def aggregate(self, i: int, s: Tensor) -> Tensor:
        if i not in self._aggregate:
            return s
        fn, dim = self._aggregate[i]
        return fn(self._rows(s, dim, f"the aggregation prompt of convs.{i}"))

    @staticmethod
    def _rows(x: Tensor, dim: int, who: str) -> Tensor:
        if x.dim() != 2 or x.size(1) != dim:
            raise ConfigError(f"{who} takes rows of {dim} features, got a tensor of shape {tuple(x.shape)}")
        return x.to(torch.float32)


def load_runtime_prompts(tensors: dict[str, Tensor], desc: dict) -> RuntimePrompts:
    """The :class:`RuntimePrompts` of ``desc["prompts"]``; CheckpointError (one line) when the section or its
    tables are malformed: unknown kinds, widths that do not match the model, tables of the wrong shape,
    NaN / infinite values, non-positive scales."""
    from .prompt_format import prompt_tensor_specs

    section = desc.get("prompts")
    try:
        prompt_tensor_specs(desc, {})
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"invalid prompts section: {e}") from None
    node_entry = section.get("node")
    node = node_dim = None
    after = False
    if node_entry is not None:
        # after_quant: the prompt acts on layer 0's quantized input, which then reads float rows
        # (qgnn.export.tables.FloatRows), as in the fake-quant model
        after = bool(node_entry.get("after_quant", False))
        node, node_dim = _build(node_entry, tensors, "prompts.node"), node_entry["dim"]
    aggregate = {int(i): (_build(e, tensors, f"prompts.aggregate.{i}"), e["dim"])
                 for i, e in (section.get("aggregate") or {}).items()}
    return RuntimePrompts(node, node_dim, aggregate, after)
