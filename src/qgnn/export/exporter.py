"""Export a fake-quant model (``qgnn train --method qat|lsq|dq|a2q --save``) to the packed integer format.

:func:`export_model` walks a model built by :func:`qgnn.models.build_model` and quantized by
:func:`qgnn.quantize_` and returns ``(tensors, descriptor)``; :func:`export_checkpoint` reads a training
checkpoint (``load_model``) and writes the file. What is stored, per layer (``docs/format.md``):

* quantized weights: their codes ``q − qmin`` packed at their own bits (:mod:`qgnn.export.packing`), the
  scale / zero-point per tensor or per output channel;
* activation slots: the grid (bits, signedness) and the scale / zero-point tables (per tensor inline in the
  JSON, per channel or per node as tensors);
* float parameters (biases, BatchNorm, unquantized weights) as float32;
* prompted models (``qgnn train --prompt ...``): each prompted layer's ``base_layer`` as above, and the
  prompts in a ``prompts`` section, their parameters at 8 bits or float32 (:mod:`qgnn.export.prompt_export`).

The quantizers' tables are read as they are in eval mode (``Quantizer.scale`` / ``zero_point``, the same
values ``quant_int`` uses; A2Q: its step and integer width tables), so the file holds the model the
fake-quant forward evaluates. Quantizers whose
output is not ``dequantize(quant_int(x))`` (``integer_exact = False``: MixQ's relaxed mixtures) and layer
options the runtime does not implement are refused with a ConfigError naming them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError
from qgnn.quant import Quantizer, quantize

from .format import write_file
from .packing import pack_bits
from .prompt_export import export_prompts, unwrap

__all__ = ["export_model", "export_checkpoint", "export_checkpoint_model", "SUPPORTED_QUANTIZERS"]

SUPPORTED_QUANTIZERS = ("uniform", "lsq", "a2q")


class _Writer:
    def __init__(self):
        self.tensors: dict[str, Tensor] = {}
        self.bits: dict[str, int] = {}
        self.mean_bits: dict[str, float] = {}  # A2Q: element-weighted mean width of each table

    def floats(self, name: str, t: Tensor | None) -> str | None:
        if t is None:
            return None
        self.tensors[name] = t.detach().to(torch.float32).contiguous().cpu().clone()
        return name

    def _tables(self, q: Quantizer, name: str, entries: int) -> dict:
        scale = q.scale.detach().to(torch.float32).reshape(-1).cpu()
        zp = q.zero_point.detach().reshape(-1).cpu()
        if scale.numel() != entries or zp.numel() != entries:
            raise ConfigError(f"{name}: quantizer tables have {scale.numel()} entries, expected {entries} "
                              "(was the model calibrated? run one eval forward first)")
        if not torch.equal(zp, zp.round()):
            raise ConfigError(f"{name}: non-integer zero-point")
        out = {}
        for key, t, dtype in (("scale", scale, torch.float32), ("zero_point", zp, torch.int32)):
            if key == "zero_point" and not bool(t.any()):
                out[key] = None  # all zero (symmetric): not stored
            elif entries == 1:
                out[key] = [int(t[0]) if dtype == torch.int32 else float(t[0])]
            else:
                self.tensors[f"{name}.{key}"] = t.to(dtype).contiguous()
                out[key] = f"{name}.{key}"
        return out

    def a2q(self, q, name: str, channels: int | None, weight: Tensor | None = None) -> dict:
        """A2Q (Zhu et al., ICLR 2023): a step and an integer width per entry, zero-point 0; ``bits`` is the
        widest width, ``widths`` the table (inline for one entry, else a uint8 tensor)."""
        g = q.layout.granularity
        widths = q.width_table.detach().reshape(-1).cpu()
        top = int(widths.max())
        d = {"kind": "a2q", "bits": top, "signed": bool(q.signed), "binary": False}
        d["qmin"], d["qmax"] = (-(1 << (top - 1)), (1 << (top - 1)) - 1) if q.signed else (0, (1 << top) - 1)
        d["granularity"] = g
        if weight is not None:
            if g == "channel" and q.layout.ch_axis % weight.dim() != 0:
                raise ConfigError(f"{name}: per-channel A2Q weights must be per output channel (axis 0)")
            if g not in ("tensor", "channel"):
                raise ConfigError(f"{name}: A2Q weights are per tensor or per output channel, got {g}")
            entries = 1 if g == "tensor" else weight.shape[0]
        else:
            entries = self._act_entries(q, name, g, channels, d)
        d.update(self._tables(q, name, entries))
        if widths.numel() != entries:
            raise ConfigError(f"{name}: A2Q width table has {widths.numel()} entries, expected {entries}")
        if entries == 1:
            d["widths"] = [top]
        else:
            self.tensors[f"{name}.widths"] = widths.to(torch.uint8).contiguous()
            d["widths"] = f"{name}.widths"
        self.bits[name] = top
        self.mean_bits[name] = round(float(widths.float().mean()), 4)
        return d

    def grid(self, q: Quantizer, name: str) -> dict:
        if q.kind not in SUPPORTED_QUANTIZERS or not q.integer_exact:
            raise ConfigError(f"{name}: quantizer {type(q).__name__} cannot be exported (supported: "
                              f"{', '.join(SUPPORTED_QUANTIZERS)}; MixQ search models: train the found "
                              "assignment first)")
        self.bits[name] = q.bits
        return {"bits": q.bits, "signed": q.signed, "binary": q.binary, "qmin": q.qmin, "qmax": q.qmax}

    def act(self, q: Quantizer | None, name: str, channels: int | None) -> dict | None:
        if q is None or not q.enabled:
            return None
        if q.kind == "a2q":
            return self.a2q(q, name, channels)
        d = self.grid(q, name)
        g = q.granularity
        d["granularity"] = g
        d.update(self._tables(q, name, self._act_entries(q, name, g, channels, d)))
        return d

    @staticmethod
    def _act_entries(q, name: str, g: str, channels: int | None, d: dict) -> int:
        """How many (scale, zero-point) entries an activation quantizer of granularity ``g`` holds; the
        per-node and nearest-neighbour sizes go into the descriptor ``d`` (the runtime needs them)."""
        if g == "channel":
            if q.layout.ch_axis not in (-1, 1):
                raise ConfigError(f"{name}: per-channel activations must use the last axis")
            return channels
        if g == "node":
            d["num_nodes"] = q.layout.num_nodes
            return q.layout.num_nodes
        if g == "nn":
            d["groups"] = q.layout.groups
            return q.layout.groups
        return 1

    def weight(self, q: Quantizer | None, w: Tensor, name: str) -> tuple[dict | None, str | None]:
        """(quantized descriptor, None) or (None, float tensor name)."""
        if q is None or not q.enabled:
            return None, self.floats(name, w)
        if q.kind == "a2q":
            return self._a2q_weight(q, w, name), None
        d = self.grid(q, name)
        if q.granularity == "channel" and q.layout.ch_axis % w.dim() != 0:
            raise ConfigError(f"{name}: per-channel weights must be per output channel (axis 0)")
        if q.granularity not in ("tensor", "channel"):
            raise ConfigError(f"{name}: weights are quantized per tensor or per channel, got {q.granularity}")
        d["granularity"] = q.granularity
        d["shape"] = list(w.shape)
        entries = 1 if q.granularity == "tensor" else w.shape[0]
        tables = self._tables(q, name, entries)
        w = w.detach()
        with torch.no_grad():
            codes, _, _ = q.quant_int(w)
            # quant_int's codes are what the fake-quant forward uses; re-derive from the tables as a check
            s = q.scale.view([-1] + [1] * (w.dim() - 1)) if entries > 1 else q.scale.reshape(())
            z = q.zero_point.view([-1] + [1] * (w.dim() - 1)) if entries > 1 else q.zero_point.reshape(())
            again = quantize(w, s, None if (q.symmetric or q.binary) else z, q.qmin, q.qmax, binary=q.binary)
        if not torch.equal(codes.to(torch.int16), again.to(torch.int16)):
            raise ConfigError(f"{name}: the quantizer's tables do not reproduce its codes")
        stored = codes.to(torch.int16) - q.qmin if not q.binary else (codes.to(torch.int16) + 1) // 2
        self.tensors[f"{name}.codes"] = pack_bits(stored.to(torch.uint8), q.bits)
        d["codes"] = f"{name}.codes"
        d.update(tables)
        return d, None


    def _a2q_weight(self, q, w: Tensor, name: str) -> dict:
        """Each output row packed at its own width (rows start on byte boundaries), u = q − qmin(B_row)."""
        d = self.a2q(q, name, None, weight=w)
        d["shape"] = list(w.shape)
        w = w.detach()
        codes, _, _ = q.quant_int(w)
        codes = codes.to(torch.int16).reshape(w.shape[0], -1)
        widths = q.width_table.detach().reshape(-1).cpu()
        parts = []
        for r in range(codes.shape[0]):
            b = int(widths[r] if widths.numel() > 1 else widths[0])
            qmin = -(1 << (b - 1)) if q.signed else 0
            row = codes[r] if widths.numel() > 1 else codes.reshape(-1)
            parts.append(pack_bits((row - qmin).to(torch.uint8), b))
            if widths.numel() == 1:
                break
        self.tensors[f"{name}.codes"] = torch.cat(parts)
        d["codes"] = f"{name}.codes"
        d["nbytes"] = int(self.tensors[d["codes"]].numel())
        return d


def _quantizers(m) -> dict:
    from qgnn.nn import QuantModule

    if not isinstance(m, QuantModule):
        raise ConfigError(f"{type(m).__name__} is not quantized: export needs a model trained with "
                          "--method qat, lsq, dq or a2q (an FP32 model has nothing to pack)")
    return m.quantizers()


def _slots(w: _Writer, q: dict, name: str, widths: dict[str, int | None]) -> dict:
    return {s: d for s in widths if (d := w.act(q.get(s), f"{name}.{s}", widths[s])) is not None}


def _weight_slot(w: _Writer, layer: dict, q: dict, slot: str, tensor: Tensor, name: str) -> None:
    d, fname = w.weight(q.get(slot), tensor, f"{name}.{slot}")
    if d is not None:
        layer["slots"][slot] = d
    else:
        layer[f"{slot}_float"] = fname


def _no_unsupported(q: dict, name: str, allowed: set[str]) -> None:
    bad = sorted(set(q) - allowed)
    if bad:
        raise ConfigError(f"{name}: quantizer slot(s) {', '.join(bad)} are not supported by the integer runtime")


def _linear(w: _Writer, m, name: str) -> dict:
    q = _quantizers(m)
    _no_unsupported(q, name, {"input", "weight", "output"})
    layer = {"type": "linear", "in": m.in_features, "out": m.out_features,
             "slots": _slots(w, q, name, {"input": m.in_features, "output": m.out_features})}
    _weight_slot(w, layer, q, "weight", m.weight, name)
    layer["bias"] = w.floats(f"{name}.bias", m.bias)
    return layer


def _batchnorm(w: _Writer, m: nn.BatchNorm1d, name: str) -> dict:
    if m.running_mean is None or not m.track_running_stats:
        raise ConfigError(f"{name}: BatchNorm without running statistics cannot run at inference")
    return {"type": "batchnorm", "channels": m.num_features, "eps": float(m.eps),
            "weight": w.floats(f"{name}.weight", m.weight if m.affine else None),
            "bias": w.floats(f"{name}.bias", m.bias if m.affine else None),
            "running_mean": w.floats(f"{name}.running_mean", m.running_mean),
            "running_var": w.floats(f"{name}.running_var", m.running_var)}


def _seq_item(w: _Writer, m, name: str) -> dict:
    from qgnn.nn import QuantLinear

    if isinstance(m, QuantLinear):
        return _linear(w, m, name)
    if type(m) is nn.ReLU:
        return {"type": "relu"}
    if isinstance(m, nn.BatchNorm1d):
        return _batchnorm(w, m, name)
    raise ConfigError(f"{name}: {type(m).__name__} inside a GIN MLP is not supported by the integer runtime")


def _conv(w: _Writer, m, name: str) -> dict:
    """The export spec of a quantized message-passing layer: its kind's ``export`` fact (qgnn.nn.registry)."""
    from qgnn.nn.registry import facts_for

    facts = facts_for(m)
    if facts is None or facts.export is None:
        raise ConfigError(f"{name}: {type(m).__name__} is not supported by the integer runtime")
    _quantizers(m)  # a float layer of a known kind: "not quantized", the user's actual mistake
    return facts.export(w, m, name)


def _gcn_spec(w: _Writer, m, name: str) -> dict:
    q = _quantizers(m)
    _no_unsupported(q, name, {"input", "weight", "xw", "edge", "aggr", "output"})
    k, o = m.in_channels, m.out_channels
    layer = {"type": "gcn", "in": k, "out": o, "flow": m.flow,
             "options": {"normalize": bool(m.normalize), "improved": bool(m.improved),
                         "add_self_loops": bool(m.add_self_loops)},
             "slots": _slots(w, q, name, {"input": k, "xw": o, "edge": None, "aggr": o, "output": o})}
    _weight_slot(w, layer, q, "weight", m.lin.weight, name)
    layer["bias"] = w.floats(f"{name}.bias", m.bias)
    return layer


def _gin_spec(w: _Writer, m, name: str) -> dict:
    q = _quantizers(m)
    _no_unsupported(q, name, {"input", "aggr", "output"})
    seq = list(m.nn) if isinstance(m.nn, nn.Sequential) else [m.nn]
    items = [_seq_item(w, sub, f"{name}.nn.{i}") for i, sub in enumerate(seq)]
    lins = [it for it in items if it["type"] == "linear"]
    if not lins:
        raise ConfigError(f"{name}: GIN MLP without a linear layer")
    k, o = lins[0]["in"], lins[-1]["out"]
    return {"type": "gin", "in": k, "out": o, "flow": m.flow, "eps": float(m.eps.detach()),
            "options": {"aggr": str(m.aggr)}, "nn": items,
            "slots": _slots(w, q, name, {"input": k, "aggr": k, "output": o})}


def _sage_spec(w: _Writer, m, name: str) -> dict:
    q = _quantizers(m)
    _no_unsupported(q, name, {"input", "weight", "weight_root", "aggr", "output"})
    if m._projects():
        raise ConfigError(f"{name}: SAGEConv(project=True) is not supported by the integer runtime")
    if not isinstance(m.aggr, str) or m.aggr not in ("mean", "sum", "add"):
        raise ConfigError(f"{name}: SAGE aggregation {m.aggr!r} is not supported (mean, sum)")
    k, o = m.in_channels, m.out_channels
    layer = {"type": "sage", "in": k, "out": o, "flow": m.flow, "root_weight": bool(m.root_weight),
             "options": {"aggr": m.aggr, "normalize": bool(m.normalize)},
             "slots": _slots(w, q, name, {"input": k, "aggr": k, "output": o})}
    _weight_slot(w, layer, q, "weight", m.lin_l.weight, name)
    if m.root_weight:
        _weight_slot(w, layer, q, "weight_root", m.lin_r.weight, name)
    layer["bias"] = w.floats(f"{name}.bias", m.lin_l.bias)
    return layer


def _gat_spec(w: _Writer, m, name: str) -> dict:
    q = _quantizers(m)
    _no_unsupported(q, name, {"input", "weight", "att", "xw", "attention", "aggr", "output"})
    if m.lin_edge is not None or m.res is not None or m.lin is None:
        raise ConfigError(f"{name}: GAT with edge features, residual or separate projections is not supported")
    k, o, heads = m.in_channels, m.out_channels, m.heads
    width = o * heads
    layer = {"type": "gat", "in": k, "out": o, "heads": heads, "flow": m.flow,
             "options": {"concat": bool(m.concat), "negative_slope": float(m.negative_slope),
                         "add_self_loops": bool(m.add_self_loops), "fill_value": m.fill_value
                         if isinstance(m.fill_value, (str, int, float)) else "mean"},
             "slots": _slots(w, q, name, {"input": k, "xw": width, "attention": None, "aggr": width,
                                          "output": width if m.concat else o})}
    _weight_slot(w, layer, q, "weight", m.lin.weight, name)
    att = torch.cat([m.att_src, m.att_dst], dim=0)  # [2, H, C], as QuantGATConv quantizes them
    _weight_slot(w, layer, q, "att", att, name)
    layer["bias"] = w.floats(f"{name}.bias", m.bias)
    return layer


def _register_specs() -> None:
    """The built-in kinds' export specs, registered as their facts (qgnn.nn.registry)."""
    import qgnn.nn  # noqa: F401  (registers the layer kinds)
    from qgnn.nn.registry import set_fact

    for kind, fn in (("gcn", _gcn_spec), ("gin", _gin_spec), ("sage", _sage_spec), ("gat", _gat_spec)):
        set_fact(kind, "export", fn)


_register_specs()


def export_model(model: nn.Module, config: dict | None = None, num_features: int | None = None,
                 num_classes: int | None = None) -> tuple[dict[str, Tensor], dict]:
    """``(tensors, descriptor)`` of a quantized qgnn model (node stack or graph readout model)."""
    from qgnn.models.graph import _GraphModel
    from qgnn.models.lightgcn import LightGCN
    from qgnn.models.node import GAT, _Stack

    if isinstance(model, LightGCN):  # recommendation: the quantized embedding table (qgnn.export.rec_export)
        from .rec_export import export_rec_model

        return export_rec_model(model, config)
    model = model.eval()
    w = _Writer()
    convs = [_conv(w, unwrap(m), f"convs.{i}") for i, m in enumerate(model.convs)]  # prompted: its base_layer
    if isinstance(model, _Stack):
        arch = {"arch": "node_stack", "activation": "elu" if isinstance(model, GAT) else "relu", "convs": convs}
        task = "node"
    elif isinstance(model, _GraphModel):
        rn = model.readout_norms
        arch = {"arch": "graph_readout", "pooling": model.pooling, "convs": convs,
                "norms": [_batchnorm(w, m, f"norms.{i}") for i, m in enumerate(model.norms)],
                "heads": [_linear(w, m, f"heads.{i}") for i, m in enumerate(model.heads)],
                "readout_norms": None if not isinstance(rn, nn.ModuleList)
                else [_batchnorm(w, m, f"readout_norms.{i}") for i, m in enumerate(rn)]}
        task = "graph"
    else:
        raise ConfigError(f"{type(model).__name__} is not a qgnn model (qgnn.models.build_model) and cannot be "
                          "exported")
    last = convs[-1]
    out_width = last["out"] * last["heads"] if last["type"] == "gat" and last["options"]["concat"] else last["out"]
    desc = {"task": task, "num_features": num_features or convs[0]["in"],
            "num_classes": num_classes or (out_width if task == "node" else arch["heads"][0]["out"]),
            "model": arch, "bits": w.bits, "config": config or {}}
    if w.mean_bits:
        desc["mean_bits"] = w.mean_bits
    prompts = export_prompts(w, model)
    if prompts is not None:
        desc["prompts"] = prompts
    return w.tensors, desc


def export_checkpoint_model(checkpoint: str | os.PathLike) -> tuple[dict, dict]:
    """``(tensors, descriptor)`` of a training checkpoint (``qgnn train --save``), the descriptor's ``source``
    naming the checkpoint, its selected run (a graph task's fold: the test graphs ``qgnn eval`` scores) and
    its mean metrics."""
    from qgnn.train import load_model

    model, meta = load_model(checkpoint)
    tensors, desc = export_model(model, meta.get("config"), meta.get("num_features"), meta.get("num_classes"))
    metrics = meta.get("metrics") or {}
    sel = meta.get("selected_run") or {}
    desc["source"] = {"checkpoint": Path(checkpoint).name,
                      "selected_run": {k: sel.get(k) for k in ("seed", "fold", "best_epoch") if k in sel},
                      "metrics": {k: v["mean"] for k, v in metrics.items() if isinstance(v, dict) and "mean" in v}}
    return tensors, desc


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, dict]:
    """Read a training checkpoint (``qgnn train --save``), export it, write ``out``; returns (path, descriptor)."""
    tensors, desc = export_checkpoint_model(checkpoint)
    return write_file(out, tensors, desc), desc
