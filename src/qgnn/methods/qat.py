"""Plain quantization-aware training (Jacob et al., CVPR 2018) with the straight-through estimator.

x̂ = s · (clamp(round(x / s) + z, q_min, q_max) − z), gradients passed straight
through round and clamp (Bengio et al. 2013). Activation ranges follow an
exponential moving average of batch min / max (momentum 0.9 by default); weight
ranges are the current weights' min / max.
"""

from __future__ import annotations

from qgnn.methods.base import Method, register_method
from qgnn.quant import UniformQuantizer


@register_method("qat")
class QAT(Method):
    @classmethod
    def default_options(cls, config):
        return {**super().default_options(config), "momentum": 0.9, "estimator": "ste"}

    def quantizer(self, slot, bits, layer, name):
        if self.is_weight(slot):
            return UniformQuantizer(bits, observer="ema", observer_kwargs={"momentum": 0.0},
                                    estimator=self.options["estimator"], **self.weight_kwargs(slot))
        return UniformQuantizer(bits, symmetric=False, observer="ema",
                                observer_kwargs={"momentum": self.options["momentum"]},
                                estimator=self.options["estimator"])
