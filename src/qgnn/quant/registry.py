"""Quantizers by name: ``make_quantizer("lsq", 4, granularity="channel", ch_axis=0)``.

Built in: ``"uniform"`` (:class:`UniformQuantizer`), ``"lsq"`` (:class:`LSQQuantizer`) and ``"relaxed"``
(:class:`RelaxedQuantizer`, MixQ-GNN's search; its first argument is the candidate set). Later methods
(Degree-Quant ``"dq"``, ``"a2q"``, ``"relaxed"`` mixed precision, GNAQ ``"nodewise"``) add theirs with
:func:`register_quantizer`, so configs and the CLI can name them.
"""

from __future__ import annotations

from qgnn.errors import ConfigError, lookup

from .quantizers import LSQQuantizer, Quantizer, UniformQuantizer
from .relaxed import RelaxedQuantizer

__all__ = ["QUANTIZERS", "register_quantizer", "make_quantizer", "available_quantizers"]

QUANTIZERS: dict[str, type[Quantizer]] = {"uniform": UniformQuantizer, "lsq": LSQQuantizer,
                                          "relaxed": RelaxedQuantizer}


def register_quantizer(name: str, cls: type[Quantizer] | None = None, *, replace: bool = False):
    """Register a :class:`Quantizer` subclass under ``name``; usable as ``@register_quantizer("dq")``.

    Registering a taken name raises ConfigError unless ``replace=True`` (a typo must not silently shadow
    another method's quantizer).
    """

    def add(c: type[Quantizer]) -> type[Quantizer]:
        if not (isinstance(c, type) and issubclass(c, Quantizer)):
            raise ConfigError(f"only Quantizer subclasses can be registered, got {c!r}")
        key = name.lower().replace("-", "_")
        if key in QUANTIZERS and QUANTIZERS[key] is not c and not replace:
            raise ConfigError(f"quantizer name {name!r} is already registered to {QUANTIZERS[key].__name__}")
        QUANTIZERS[key] = c
        return c

    return add if cls is None else add(cls)


def available_quantizers() -> list[str]:
    return sorted(QUANTIZERS)


def make_quantizer(kind: str, bits: int = 8, **kwargs) -> Quantizer:
    """Build the quantizer registered as ``kind`` with ``bits`` and constructor ``kwargs``.

    Unknown ``kind`` -> UnknownNameError listing the registered names; ``bits`` outside 1..8 ->
    ConfigError. Example:
    ``make_quantizer("uniform", 8, observer="ema", observer_kwargs={"momentum": 0.99})``.
    """
    return lookup("quantizer", kind, QUANTIZERS)(bits, **kwargs)


from . import a2q as _a2q  # noqa: E402,F401  (registers "a2q", A2QQuantizer, with register_quantizer)
