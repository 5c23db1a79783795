"""Quantizers for low-bit GNNs: fake-quant primitives, range observers and quantizer modules.

* :mod:`.primitives`: ``fake_quant``, ``quantize`` / ``dequantize``, ``calc_qparams``, ``qrange`` and the
  straight-through pieces (``round_ste``, ``clamp_ste``, ``sign_ste``, ``grad_scale``).
* :mod:`.granularity`: :class:`Layout`, how per-tensor / per-channel / per-node parameters map onto x.
* :mod:`.observers`: min-max, EMA and sampled-percentile range trackers.
* :mod:`.quantizers`: :class:`Quantizer` (``forward(x, index=None)``, ``bit_width``, ``scale``,
  ``zero_point``, ``enabled``, ``quant_int``), :class:`UniformQuantizer`, :class:`LSQQuantizer`.
* :mod:`.relaxed`: :class:`RelaxedQuantizer`, a softmax mixture of candidate widths (MixQ-GNN search).
* :mod:`.registry`: ``make_quantizer(kind, bits, **kw)`` and ``register_quantizer``.
"""

from .granularity import GRANULARITIES, Layout, parse_granularity
from .observers import (
    OBSERVERS,
    EMAObserver,
    MinMaxObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from .primitives import (
    ESTIMATORS,
    MAX_BITS,
    MIN_BITS,
    SCALE_EPS,
    binary_fake_quant,
    calc_qparams,
    clamp_clipped,
    clamp_ste,
    code_dtype,
    dequantize,
    fake_quant,
    grad_scale,
    is_binary,
    qrange,
    quantize,
    round_ste,
    sign_ste,
    validate_bits,
)
from .quantizers import LSQQuantizer, Quantizer, UniformQuantizer
from .registry import QUANTIZERS, available_quantizers, make_quantizer, register_quantizer
from .relaxed import RelaxedQuantizer, parse_candidates

__all__ = [
    "ESTIMATORS",
    "GRANULARITIES",
    "MAX_BITS",
    "MIN_BITS",
    "OBSERVERS",
    "QUANTIZERS",
    "SCALE_EPS",
    "EMAObserver",
    "LSQQuantizer",
    "Layout",
    "MinMaxObserver",
    "Observer",
    "PercentileObserver",
    "Quantizer",
    "RelaxedQuantizer",
    "UniformQuantizer",
    "available_quantizers",
    "binary_fake_quant",
    "calc_qparams",
    "clamp_clipped",
    "clamp_ste",
    "code_dtype",
    "dequantize",
    "fake_quant",
    "grad_scale",
    "is_binary",
    "make_observer",
    "make_quantizer",
    "parse_granularity",
    "parse_candidates",
    "qrange",
    "quantize",
    "register_quantizer",
    "round_ste",
    "sign_ste",
    "validate_bits",
]
