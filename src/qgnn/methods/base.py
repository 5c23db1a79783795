"""The method interface and its one registry: method config type -> handler (torchao's pattern).

A method is a config dataclass (its options, :class:`~qgnn.methods.config.MethodConfig`) and a handler
class that decides which quantizer sits in each slot (``quantizer``) and may add behaviour to the
converted model (``prepare``: hooks, masks, penalties). ``@register_method(DQConfig)`` on the handler is
the only registration; method names (``qgnn train --method dq``) are the configs' ``name``.
`qgnn.quantize_` calls both; the training runner only calls `quantize_`.
"""

from __future__ import annotations

from torch import nn

from qgnn.errors import lookup
from qgnn.methods.config import WEIGHT_SLOTS, MethodConfig, QuantConfig
from qgnn.quant import Quantizer

_HANDLERS: dict[type[MethodConfig], type[Method]] = {}


def register_method(config_cls: type[MethodConfig]):
    """Class decorator: make a handler serve ``config_cls`` in `quantize_` and ``qgnn train --method``."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)) or config_cls is MethodConfig:
        raise TypeError(f"register_method takes a MethodConfig subclass, got {config_cls!r}")

    def deco(cls):
        cls.name, cls.config_class = config_cls.name, config_cls
        _HANDLERS[config_cls] = cls
        return cls
    return deco


def _load() -> None:
    import qgnn.methods  # noqa: F401  (its import registers the built-in methods)


def method_configs() -> dict[str, type[MethodConfig]]:
    """name -> config class of every registered method."""
    _load()
    return {c.name: c for c in _HANDLERS}


def method_names() -> list[str]:
    return ["fp32", *sorted(method_configs())]


def method_config(name: str) -> type[MethodConfig]:
    """The config class of method ``name`` (case-insensitive); UnknownNameError listing the valid ones."""
    return lookup("method", name, method_configs())


def get_method(name_or_config: str | type[MethodConfig] | MethodConfig) -> type[Method]:
    """The handler of a method name, config class or config instance."""
    cls = name_or_config if isinstance(name_or_config, type) else (
        type(name_or_config) if isinstance(name_or_config, MethodConfig) else method_config(name_or_config))
    _load()
    for c in cls.__mro__:  # a subclass of a registered config is served by the same handler
        if c in _HANDLERS:
            return _HANDLERS[c]
    return lookup("method", getattr(cls, "name", str(cls)), {c.name: h for c, h in _HANDLERS.items()})


class Method:
    """Base handler: symmetric signed weights (per output channel), asymmetric activations (per tensor).

    ``self.options`` is the method's config with its "by bits" defaults resolved for ``config.bits``.
    """

    name = "base"
    config_class: type[MethodConfig] = MethodConfig

    def __init__(self, config: QuantConfig):
        self.config = config
        self.options = config.method_options()

    def quantizer(self, slot: str, bits: int, layer: nn.Module, name: str) -> Quantizer:
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> None:
        """Hook for method behaviour beyond the quantizers (default: nothing)."""

    # shared helpers ---------------------------------------------------------------------------
    def weight_kwargs(self, slot: str) -> dict:
        # Weights [out, in]: one scale per output channel (axis 0), symmetric around 0.
        # GAT's attention vectors [1, heads, C] are small: one scale per tensor.
        gran = self.options.weight_granularity if slot != "att" else "tensor"
        return {"symmetric": True, "granularity": gran, "ch_axis": 0}

    @staticmethod
    def is_weight(slot: str) -> bool:
        return slot in WEIGHT_SLOTS
