"""Mixed-precision search support; for now the cost model (BitOPs, model bytes, average bits).

BitOPs, defined once for all of qgnn: Σ over multiply-accumulates of b_activation × b_weight, with
aggregation MACs counted per edge and feature (see :mod:`qgnn.search.cost` and docs/cost.md).

* :func:`cost_report` runs one eval-mode forward with hooks and returns a :class:`CostReport`
  (``to_dict()`` is the ``cost`` entry of a results JSON); :func:`format_cost_table` prints it.
* :func:`model_bytes` gives (bytes, FP32 bytes) without data; :func:`slot_bits` reads a layer's slot width.
"""

import importlib
import importlib.util

_EXPORTS = {name: "qgnn.search.cost" for name in (
    "ACTIVATION_SLOTS", "FP32_BITS", "WEIGHT_SLOTS", "CostReport", "Op", "cost_report", "format_cost_table",
    "model_bytes", "slot_bits")}

__all__ = [
    "ACTIVATION_SLOTS",
    "FP32_BITS",
    "WEIGHT_SLOTS",
    "CostReport",
    "Op",
    "cost_report",
    "format_cost_table",
    "model_bytes",
    "slot_bits",
]


def __getattr__(name: str):
    # PEP 562: the names above load on first use, so that importing a light sibling module (the CLI's
    # parser, qgnn.search.cli) does not import torch / PyG through this package.
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule, as eager imports gave
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
