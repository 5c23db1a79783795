"""`quantize_(model, config)`: convert a float PyG model in place (torchao's verb, brevitas' layers).

Every module whose type has a quantized counterpart (`qgnn.nn.QUANT_LAYER_FOR`:
GCNConv, GINConv, SAGEConv, GATConv, Linear) is replaced by that counterpart,
built from the float module with the same parameters, its slots filled by the
method's quantizers at the bits the config gives that module. Works on any
model built from these PyG layers, not only qgnn's.
"""

from __future__ import annotations

import warnings

from torch import nn

from qgnn.methods.base import get_method
from qgnn.methods.config import DEFAULT_SLOTS, MethodConfig, QuantConfig


def _quant_class(module: nn.Module):
    from qgnn.nn import QuantModule
    from qgnn.nn.registry import quant_class_for

    if isinstance(module, QuantModule):
        return None  # already quantized
    return quant_class_for(module)


def quantize_(model: nn.Module, config: QuantConfig | MethodConfig | dict) -> nn.Module:
    """Quantize ``model`` in place according to ``config``; returns the model.

    ``config``: a :class:`QuantConfig`, its dict form, or a method config alone (torchao's
    ``quantize_(model, Int8...Config())``): ``quantize_(model, DQConfig())`` is
    ``QuantConfig(options=DQConfig())``, 8 bits on the default slots. The handler is the one registered for
    the options' type (``qgnn.methods.base.register_method``). Override keys of ``config.overrides`` that
    match no module raise a ConfigError, so a mixed-precision assignment cannot silently miss its target.
    """
    import re

    from qgnn.errors import ConfigError

    if isinstance(config, MethodConfig):
        config = QuantConfig(options=config)
    elif isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    elif not isinstance(config, QuantConfig):
        raise ConfigError(f"quantize_ takes a QuantConfig, a method config (e.g. DQConfig()) or a dict, got "
                          f"{type(config).__name__}")
    method = get_method(config.options)(config)
    targets = [(name, m) for name, m in model.named_modules() if _quant_class(m) is not None]
    names = [n for n, _ in model.named_modules()]
    unmatched = [k for k in config.overrides if not any(k == n or re.fullmatch(k, n) for n in names)]
    if unmatched:
        raise ConfigError(f"overrides name modules the model lacks: {', '.join(unmatched)}")
    if not targets:
        warnings.warn(f"quantize_: {type(model).__name__} has no layer qgnn can quantize "
                      "(GCNConv, GINConv, SAGEConv, GATConv, Linear); the model is unchanged", stacklevel=2)
        return model
    converted = 0
    for name, module in targets:
        settings = config.for_module(name)
        if settings is None:
            continue
        cls = _quant_class(module)
        slots = [s for s in settings["slots"] if s in cls.SLOTS]
        if tuple(settings["slots"]) == DEFAULT_SLOTS:  # the default: every MAC operand, layer-specific ones too
            slots += [s for s in cls.DEFAULT_EXTRA_SLOTS if s not in slots]
        quantizers = {s: method.quantizer(s, QuantConfig.bits_of(settings, s), module, name) for s in slots}
        new = cls.from_float(module, quantizers)
        _replace(model, name, new)
        converted += 1
    method.prepare(model)
    model.qgnn_config = config  # what produced this model: saved with checkpoints
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise ValueError("quantize_ cannot replace the root module itself; wrap it in a container")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_method(model: nn.Module, train_cfg) -> nn.Module:
    """The training runner's entry: build a QuantConfig from a TrainConfig and quantize."""
    qcfg = QuantConfig(method=train_cfg.method, bits=train_cfg.bits or 8, **(train_cfg.quant or {}))
    return quantize_(model, qcfg)
