"""Plain quantization-aware training (Jacob et al., CVPR 2018) with the straight-through estimator.

x̂ = s · (clamp(round(x / s) + z, q_min, q_max) − z), gradients passed straight
through round and clamp (Bengio et al. 2013). Activation ranges follow an
exponential moving average of batch min / max (momentum 0.9 by default); weight
ranges are the current weights' min / max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qgnn.methods.base import Method, register_method
from qgnn.methods.config import MethodConfig
from qgnn.quant import UniformQuantizer


@dataclass
class QATConfig(MethodConfig):
    """Options of plain QAT (``--method qat``)."""

    name = "qat"

    momentum: float = 0.9
    """EMA momentum of the activation ranges: range ← m · range + (1 − m) · batch min / max (0: the current
    batch only). Weights always use their current min / max."""
    estimator: Literal["ste", "clipped_ste"] = "ste"
    """Gradient of round / clamp: "ste" passes it everywhere, "clipped_ste" zeroes it outside the range."""

    def validate(self) -> None:
        self.require("momentum", 0 <= self.momentum <= 1, "in [0, 1]")


@register_method(QATConfig)
class QAT(Method):
    def quantizer(self, slot, bits, layer, name):
        o = self.options
        if self.is_weight(slot):
            return UniformQuantizer(bits, observer="ema", observer_kwargs={"momentum": 0.0},
                                    estimator=o.estimator, **self.weight_kwargs(slot))
        return UniformQuantizer(bits, symmetric=False, observer="ema", observer_kwargs={"momentum": o.momentum},
                                estimator=o.estimator)
