"""The method interface and its registry.

A method decides which quantizer sits in each slot (``quantizer``) and may add
behaviour to the converted model (``prepare``: hooks, masks, penalties).
`qgnn.quantize_` calls both; the training runner only calls `quantize_`.
"""

from __future__ import annotations

from torch import nn

from qgnn.errors import lookup
from qgnn.methods.config import WEIGHT_SLOTS, QuantConfig
from qgnn.quant import Quantizer

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    """Class decorator: make a Method available to `quantize_` and `qgnn train --method`."""
    def deco(cls):
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def method_names() -> list[str]:
    return ["fp32", *sorted(_METHODS)]


def get_method(name: str) -> type[Method]:
    return lookup("method", name, _METHODS)


class Method:
    """Base: symmetric signed weights (per output channel), asymmetric activations (per tensor)."""

    name = "base"

    def __init__(self, config: QuantConfig):
        self.config = config
        self.options = {**self.default_options(config), **config.options}

    @classmethod
    def default_options(cls, config: QuantConfig) -> dict:
        return {"weight_granularity": "channel"}

    def quantizer(self, slot: str, bits: int, layer: nn.Module, name: str) -> Quantizer:
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Hook for method behaviour beyond the quantizers (default: nothing)."""

    # shared helpers ---------------------------------------------------------------------------
    def weight_kwargs(self, slot: str) -> dict:
        # Weights [out, in]: one scale per output channel (axis 0), symmetric around 0.
        # GAT's attention vectors [1, heads, C] are small: one scale per tensor.
        gran = self.options["weight_granularity"] if slot != "att" else "tensor"
        return {"symmetric": True, "granularity": gran, "ch_axis": 0}

    @staticmethod
    def is_weight(slot: str) -> bool:
        return slot in WEIGHT_SLOTS
