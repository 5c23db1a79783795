"""Quantization methods, one file each: a typed options dataclass and its handler, registered for
`qgnn.quantize_` and `qgnn train --method`.

qat: uniform QAT with STE and EMA ranges (QATConfig); lsq: learned step size, LSQ / LSQ+ (LSQConfig);
dq: Degree-Quant, percentile ranges and protective masking by in-degree (DQConfig);
a2q: A2Q, learned step and bit-width per node, local gradient, memory penalty (A2QConfig);
mixq: MixQ-GNN's search, relaxed bit-widths with a BitOPs penalty (MixQConfig; `qgnn.search.mixq`).
Recommendation (LightGCN) methods take their options through GNAQConfig, BiGeaRConfig and the table
baselines' configs (``rec_method_config``).

    quantize_(model, QuantConfig(method="dq", bits=4, options={"p_max": 0.3}))   # dict form
    quantize_(model, QuantConfig(bits=4, options=DQConfig(p_max=0.3)))          # typed form, same config
    quantize_(model, DQConfig())                                                 # 8 bits, default slots
"""

from qgnn.methods import a2q, degree_quant, lsq, mixq, qat  # noqa: F401  (registration)
from qgnn.methods.a2q import A2QConfig
from qgnn.methods.base import Method, get_method, method_config, method_configs, method_names, register_method
from qgnn.methods.config import (
    ALL_SLOTS,
    DEFAULT_SLOTS,
    MethodConfig,
    ModuleOverride,
    QuantConfig,
    RecMethodConfig,
    rec_method_config,
)
from qgnn.methods.convert import apply_method, quantize_
from qgnn.methods.degree_quant import DQConfig
from qgnn.methods.lsq import LSQConfig
from qgnn.methods.mixq import MixQConfig
from qgnn.methods.qat import QATConfig

__all__ = ["A2QConfig", "ALL_SLOTS", "DEFAULT_SLOTS", "DQConfig", "LSQConfig", "Method", "MethodConfig",
           "MixQConfig", "ModuleOverride", "QATConfig", "QuantConfig", "RecMethodConfig", "apply_method",
           "get_method", "method_config", "method_configs", "method_names", "quantize_", "rec_method_config",
           "register_method"]
