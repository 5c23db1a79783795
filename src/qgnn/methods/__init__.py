"""Quantization methods, one file each, registered for `qgnn.quantize_` and `qgnn train --method`.

qat: uniform QAT with STE and EMA ranges; lsq: learned step size (LSQ / LSQ+);
dq: Degree-Quant (percentile ranges and protective masking by in-degree);
a2q: A2Q (learned step and bit-width per node, local gradient, memory penalty);
mixq: MixQ-GNN's search (relaxed bit-widths with a BitOPs penalty; `qgnn.search.mixq`).
"""

from qgnn.methods import a2q, degree_quant, lsq, mixq, qat  # noqa: F401  (registration)
from qgnn.methods.base import Method, get_method, method_names, register_method
from qgnn.methods.config import ALL_SLOTS, DEFAULT_SLOTS, QuantConfig
from qgnn.methods.convert import apply_method, quantize_

__all__ = ["Method", "QuantConfig", "ALL_SLOTS", "DEFAULT_SLOTS", "apply_method", "get_method", "method_names",
           "quantize_", "register_method"]
