"""What each quantized layer kind declares, in one place: a layer owns its facts.

A quantized layer registers itself under its kind (the ``type`` of its export spec, e.g. ``"gcn"``) with
:func:`register_layer`; the parts of qgnn that need to know something about a layer ask this registry
instead of keeping ``isinstance`` chains:

==================  =====================================================  ==================================
fact                asked by                                               signature
==================  =====================================================  ==================================
``quant_cls``       ``qgnn.quantize_`` (float layer -> quantized layer)    the class itself
``cost``            ``qgnn.search.cost`` (BitOPs, bytes)                   ``(module, bound, args, out)`` ->
                                                                           ``(ops, activations, dims)``
``export``          ``qgnn.export.exporter`` (the file's layer spec)       ``(writer, module, name)`` -> dict
``aggregation_dim`` ``qgnn.prompts`` (LoRAP's width)                       ``(module)`` -> int
==================  =====================================================  ==================================

The runtime's ops register per kind on their side (``qgnn.export.runtime.runtime_op``,
``qgnn.export.packed.packed_op``, ``qgnn.export.fp32_reference.fp32_op``, ``qgnn.export.onnx_layers``). A new
layer is one ``qgnn/nn`` file (the layer and its facts), one runtime op file, and tests:
``qgnn/nn/graphconv.py`` and ``qgnn/export/ops/graphconv.py`` are the worked example.

Facts of the built-in layers are registered by the module that computes them (``qgnn.search.cost`` registers
the GCN counter, ...), so this module imports nothing heavy; a consumer imports its own module first, which
fills its facts, then looks them up with :func:`facts_for`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LayerFacts", "LAYERS", "register_layer", "set_fact", "facts_for", "quant_class_for"]


@dataclass
class LayerFacts:
    kind: str
    quant_cls: type
    float_cls: type
    cost: Callable | None = None
    export: Callable | None = None
    aggregation_dim: Callable | None = None


LAYERS: dict[str, LayerFacts] = {}


def register_layer(kind: str, **facts: Callable):
    """Class decorator: register a quantized layer class (with ``FLOAT_CLASS``) under ``kind`` with its
    facts (``cost``, ``export``, ``aggregation_dim``; any may be set later with :func:`set_fact`)."""

    def deco(cls):
        cls.KIND = kind
        entry = LAYERS.get(kind)
        if entry is None:
            entry = LAYERS[kind] = LayerFacts(kind, cls, cls.FLOAT_CLASS)
        else:  # facts registered before the class (a consumer imported first): keep them
            entry.quant_cls, entry.float_cls = cls, cls.FLOAT_CLASS
        for name, fn in facts.items():
            set_fact(kind, name, fn)
        return cls

    return deco


def set_fact(kind: str, name: str, fn: Callable) -> None:
    """Set fact ``name`` of layer ``kind`` (a consumer registering its code for a built-in layer)."""
    if name not in ("cost", "export", "aggregation_dim"):
        raise ValueError(f"unknown layer fact {name!r}")
    entry = LAYERS.get(kind)
    if entry is None:
        raise KeyError(f"no layer kind {kind!r} registered")
    setattr(entry, name, fn)


def facts_for(module) -> LayerFacts | None:
    """The facts of ``module``'s kind: its float class or a subclass (quantized layers subclass their float
    layer); the most specific registered class wins."""
    best = None
    for entry in LAYERS.values():
        if isinstance(module, entry.float_cls):
            if best is None or issubclass(entry.float_cls, best.float_cls):
                best = entry
    return best


def quant_class_for(module) -> type | None:
    """The quantized class ``qgnn.quantize_`` converts ``module`` to: its exact float type's (None if not
    registered, e.g. a subclass with other behaviour, or an already quantized layer)."""
    for entry in LAYERS.values():
        if type(module) is entry.float_cls:
            return entry.quant_cls
    return None
