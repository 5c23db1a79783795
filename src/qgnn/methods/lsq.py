"""Learned step-size quantization (Esser et al., ICLR 2020), applied to every slot.

The step s is a parameter trained with the task loss; its gradient is
∂x̂/∂s = −x/s + round(x/s) inside the range and q_min or q_max outside, scaled by
g = 1 / sqrt(N · q_max). Weights are symmetric (step initialised from the
weights' range); activations are asymmetric with a learned zero point (LSQ+,
Bhalgat et al. 2020), initialised from the first batch's min / max.
"""

from __future__ import annotations

from dataclasses import dataclass

from qgnn.methods.base import Method, register_method
from qgnn.methods.config import MethodConfig
from qgnn.quant import LSQQuantizer


@dataclass
class LSQConfig(MethodConfig):
    """Options of LSQ (``--method lsq``): only the shared ``weight_granularity``; the steps are learned."""

    name = "lsq"


@register_method(LSQConfig)
class LSQ(Method):
    def quantizer(self, slot, bits, layer, name):
        if self.is_weight(slot):
            return LSQQuantizer(bits, init="minmax", **self.weight_kwargs(slot))
        return LSQQuantizer(bits, symmetric=False, learn_zero_point=True, init="minmax")
