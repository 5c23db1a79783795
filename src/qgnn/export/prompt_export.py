"""Export the prompts of a prompted model (``qgnn train --prompt ...``, :mod:`qgnn.prompts`).

:func:`unwrap` hands the exporter each :class:`~qgnn.prompts.PromptedLayer`'s ``base_layer`` (exported as
an unprompted layer, under the same names), and :func:`export_prompts` writes the ``prompts`` section
(:mod:`qgnn.export.prompt_format`): the node prompt of the first layer and the LoRAP prompt of each layer,
with kind, width, options and parameters. Disabled prompts (``prompts_enabled = False``) are left out: the
fake-quant model computes its host then, and so does the file.

Parameters are stored at 8 bits (symmetric, one scale per row) where that keeps the runtime's predictions
equal to the fake-quant model's: the softmax logits' W_a; the additive tables (p, P, U, V) stay float32
(:data:`QUANTIZED_PARAMS` says why).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError

from .packing import pack_bits

__all__ = ["PROMPT_BITS", "QUANTIZED_PARAMS", "export_prompts", "quantize_param", "unwrap"]

PROMPT_BITS = 8
# (prompt kind, parameter) stored at PROMPT_BITS; the others stay float32. Measured on trained Cora models
# (docs/format.md, "Prompts"): with every table at 8 bits the runtime's predictions differ from the fake-quant
# model's on 46 of 2708 nodes for GCN QAT8 + GPF (98.3 %) and 8 for GAT DQ4 + GPF-LoRAP (99.70 %); with W_a
# alone at 8 bits on none (nor on GCN DQ4 + GPF-plus, GIN + LoRAP, SAGE + GPF-LoRAP, MUTAG GIN). The additive
# tables (GPF's p, GPF-plus's P, LoRAP's U and V) put their rounding error (up to s / 2 per element) straight
# into the features that the next quantizer rounds (the 4-bit input quantizer after a node prompt, the
# output / next input one after LoRAP), so every value within that distance of a rounding boundary moves a
# full step. W_a only sets the mixing weights softmax(s W_aᵀ): a logit error δ changes a weight by about
# α(1 − α)δ, a second-order change of the prompt (largest logit difference 7e-5 there). W_a is also the
# largest table of a LoRAP prompt (k·d against k·r + r·d) and half of a GPF-plus prompt.
QUANTIZED_PARAMS = frozenset({("gpf-plus", "w_a"), ("lorap", "w_a")})


def unwrap(layer: nn.Module) -> nn.Module:
    """The layer to export: a prompted layer's ``base_layer``, any other layer itself."""
    from qgnn.prompts import PromptedLayer

    return layer.base_layer if isinstance(layer, PromptedLayer) else layer


def quantize_param(w, t: Tensor, name: str, bits: int = PROMPT_BITS) -> dict:
    """Store ``t`` as symmetric ``bits``-bit codes ``q = round(t / s)`` in [−(2^(b−1) − 1), 2^(b−1) − 1],
    ``s = max |row| / (2^(b−1) − 1)`` per row (per tensor for a vector; an all-zero row gets s = 1, so a
    zero-initialised prompt decodes to exact zeros); packed like a weight (``u = q − qmin``)."""
    t = t.detach().to(torch.float32).cpu()
    rows = t.reshape(t.shape[0], -1) if t.dim() == 2 else t.reshape(1, -1)
    qmax = (1 << (bits - 1)) - 1
    amax = rows.abs().amax(dim=1)
    scale = torch.where(amax > 1e-30, amax / qmax, torch.ones_like(amax))
    q = torch.round(rows / scale.view(-1, 1)).clamp_(-qmax, qmax)
    qmin = -(1 << (bits - 1))
    w.tensors[f"{name}.codes"] = pack_bits((q - qmin).to(torch.uint8), bits)
    d = {"bits": bits, "signed": True, "binary": False, "qmin": qmin, "qmax": qmax,
         "granularity": "channel" if t.dim() == 2 else "tensor", "shape": list(t.shape),
         "codes": f"{name}.codes", "zero_point": None}
    if t.dim() == 2:
        w.tensors[f"{name}.scale"] = scale.contiguous()
        d["scale"] = f"{name}.scale"
    else:
        d["scale"] = [float(scale[0])]
    return d


def _params(w, module: nn.Module, kind: str, name: str, quantized) -> dict:
    from .prompt_format import PARAM_SHAPES

    out = {}
    for pname in PARAM_SHAPES[kind]:
        t = getattr(module, pname)
        where = f"{name}.{pname}"
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(f"{where}: the prompt parameter holds NaN or infinite values")
        if (kind, pname) in quantized:
            out[pname] = quantize_param(w, t, where)
        else:
            out[pname] = {"shape": list(t.shape), "float": w.floats(where, t)}
    return out


def _node(w, layer, quantized) -> dict:
    m = layer.node_prompt
    after = layer._node_prompt_after_quant()  # the runtime reads layer 0's prompted codes in float then
    entry = {"kind": m.kind, "dim": m.dim, "after_quant": after}
    if m.kind == "gpf-plus":
        entry["k"] = m.k
    entry["params"] = _params(w, m, m.kind, "prompts.node", quantized)
    return entry


def _aggregate(w, m, i: int, quantized) -> dict:
    if m.kind != "lorap":
        raise ConfigError(f"convs.{i}: aggregation prompt {m.kind!r} cannot be exported (lorap)")
    return {"kind": "lorap", "dim": m.dim, "k": m.k, "rank": m.rank, "normalize": bool(m.normalize),
            "params": _params(w, m, "lorap", f"prompts.aggregate.{i}", quantized)}


def export_prompts(w, model: nn.Module, quantized=None) -> dict | None:
    """The ``prompts`` section of ``model`` (None when it has no enabled prompt); tensors go into the
    writer ``w``; ``quantized``: the (kind, parameter) pairs stored at 8 bits (default
    :data:`QUANTIZED_PARAMS`). ConfigError for prompts the runtime cannot place: a node prompt on a layer
    other than ``convs.0`` or after the input quantizer, prompts outside ``model.convs``."""
    from qgnn.prompts import PromptedLayer, prompted_layers

    quantized = QUANTIZED_PARAMS if quantized is None else quantized

    convs = list(model.convs)
    allowed = {id(c) for c in convs}
    for name, layer in prompted_layers(model).items():
        if id(layer) not in allowed:
            raise ConfigError(f"{name}: prompts outside model.convs cannot be exported")
    node, aggregate = None, {}
    for i, layer in enumerate(convs):
        if not isinstance(layer, PromptedLayer) or not layer.prompts_enabled:
            continue
        if layer.node_prompt is not None:
            if i != 0:
                raise ConfigError(f"convs.{i}: a node prompt on a layer other than the first cannot be exported "
                                  "(the runtime prompts the input features)")
            node = _node(w, layer, quantized)
        if layer.aggr_prompt is not None:
            aggregate[str(i)] = _aggregate(w, layer.aggr_prompt, i, quantized)
    if node is None and not aggregate:
        return None
    cfg = getattr(model, "qgnn_prompt_config", None)
    return {"kind": cfg.kind if cfg is not None else None, "node": node, "aggregate": aggregate}
