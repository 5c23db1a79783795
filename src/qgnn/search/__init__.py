"""Mixed-precision search support; for now the cost model (BitOPs, model bytes, average bits).

BitOPs, defined once for all of qgnn: Σ over multiply-accumulates of b_activation × b_weight, with
aggregation MACs counted per edge and feature (see :mod:`qgnn.search.cost` and docs/cost.md).

* :func:`cost_report` runs one eval-mode forward with hooks and returns a :class:`CostReport`
  (``to_dict()`` is the ``cost`` entry of a results JSON); :func:`format_cost_table` prints it.
* :func:`model_bytes` gives (bytes, FP32 bytes) without data; :func:`slot_bits` reads a layer's slot width.
"""

from qgnn._lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)
