"""Quantization configs: typed, versioned dataclasses with a JSON round trip (:mod:`qgnn.config`).

A :class:`QuantConfig` says which method quantizes a model, at which bits, which quantizer slots of each
layer are quantized, and per-module exceptions. Per-layer precision is data (torchao's idea):
``overrides`` maps a module name or a regular expression to a partial config
(:class:`ModuleOverride`: bits, slot bits, slots, skip), so a mixed-precision assignment is just a dict.

A method's options are its own dataclass, a :class:`MethodConfig` subclass registered with its handler
(``qgnn.methods.base.register_method``): ``QATConfig``, ``LSQConfig``, ``DQConfig``, ``A2QConfig``,
``MixQConfig``. Its fields are the options with their defaults, so a recipe is a dict of field overrides.
``QuantConfig(method="dq", options={"p_max": 0.3})`` (the dict form) and
``QuantConfig(bits=4, options=DQConfig(p_max=0.3))`` (the method follows from the options' type) build the
same config; ``quantize_(model, DQConfig())`` is ``QuantConfig(options=DQConfig())``: 8 bits, default slots.
Bits live in QuantConfig only (one place), not in the method configs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from qgnn.config import CONFIG_VERSION, ConfigBase, check_version
from qgnn.errors import ConfigError
from qgnn.quant import validate_bits

__all__ = ["ALL_SLOTS", "DEFAULT_SLOTS", "WEIGHT_SLOTS", "MethodConfig", "ModuleOverride", "QuantConfig",
           "RecMethodConfig", "rec_method_config"]

# Every operand of a multiply-accumulate is quantized by default: the layer input
# (or X·W for GCN/GAT, which is what aggregation multiplies), the weights, the
# edge coefficients and GAT's attention; a layer adds its own operands
# (QuantModule.DEFAULT_EXTRA_SLOTS: SAGE's aggregate, which lin_l multiplies).
# Outputs feed the next layer's input quantizer, so quantizing them again would
# only add rounding.
DEFAULT_SLOTS = ("input", "weight", "weight_root", "att", "xw", "edge", "attention")
ALL_SLOTS = ("input", "weight", "weight_root", "att", "xw", "edge", "message", "aggr", "output", "attention")
WEIGHT_SLOTS = frozenset({"weight", "weight_root", "att"})


def _check_slots(names, what: str = "quantizer slot") -> None:
    bad = [s for s in names if s not in ALL_SLOTS]
    if bad:
        raise ConfigError(f"unknown {what}(s) {', '.join(map(str, bad))}; valid slots: {', '.join(ALL_SLOTS)}")


@dataclass
class OptionsConfig(ConfigBase):
    """Base of a method's options (``key_word`` "option"; messages name the method: "dq p_min must ...")."""

    name: ClassVar[str] = "base"
    key_word: ClassVar[str] = "option"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            cls.config_name = cls.name


@dataclass
class MethodConfig(OptionsConfig):
    """Options every ``quantize_`` method shares; each method's config subclasses it (one dataclass per
    method, its options as typed fields with their defaults). Built from a dict with ``from_dict`` (an
    unknown option is an error naming the valid ones) or directly; checked when built."""

    weight_granularity: Literal["channel", "tensor"] = "channel"
    """Weight scales: one per output channel (rows of W [out, in]) or one per tensor. GAT's attention
    vectors always use one per tensor."""

    def resolve(self, bits: int) -> MethodConfig:
        """The options with every "by bits" / derived default (None) filled in, for a model quantized at
        ``bits`` (QuantConfig.bits). Default: the options unchanged."""
        return self


@dataclass
class RecMethodConfig(OptionsConfig):
    """Options of a recommendation method (a quantized LightGCN: ``--model lightgcn --method gnaq``):
    ``TrainConfig.quant["options"]`` is checked through it when the config is resolved, and the model class
    builds its options from it (its fields hold the defaults)."""


def rec_method_config(name: str) -> type[RecMethodConfig]:
    """The options class of recommendation method ``name`` (qat, lsq, gnaq, bigear)."""
    from qgnn.errors import lookup
    from qgnn.methods.bigear import BiGeaRConfig
    from qgnn.methods.gnaq import GNAQConfig
    from qgnn.methods.rec_baselines import RecLSQConfig, RecQATConfig

    table = {c.name: c for c in (RecQATConfig, RecLSQConfig, GNAQConfig, BiGeaRConfig)}
    return lookup("recommendation method", name, table)


@dataclass
class ModuleOverride(ConfigBase):
    """One entry of ``QuantConfig.overrides``: the settings of the modules its key matches. Keys left out
    keep the QuantConfig's value (``slot_bits`` is merged over it)."""

    config_name: ClassVar[str] = "override"

    bits: int | None = None
    """Default width of this module's slots."""
    weight_bits: int | None = None
    """Width of its weight slots."""
    act_bits: int | None = None
    """Width of its activation slots."""
    slot_bits: dict[str, int] | None = None
    """Width per slot name."""
    slots: tuple[str, ...] | None = None
    """The slots quantized in this module."""
    skip: bool = False
    """Leave the module in float."""

    def validate(self) -> None:
        for b in (self.bits, self.weight_bits, self.act_bits, *(self.slot_bits or {}).values()):
            if b is not None:
                validate_bits(b)
        _check_slots([*(self.slots or ()), *(self.slot_bits or {})])

    def partial(self) -> dict:
        """The keys this override sets (what ``QuantConfig.for_module`` merges)."""
        out = {k: v for k, v in self.fields_dict().items() if v is not None and k != "skip"}
        return {**out, "skip": True} if self.skip else out


@dataclass
class QuantConfig(ConfigBase):
    """What `quantize_` does to a model.

    method: the registered method (``qat``, ``lsq``, ``dq``, ``a2q``, ``mixq``); None: the method of
    ``options`` when it is a method config, else ``qat``.
    bits: default bit-width of every slot; ``weight_bits`` / ``act_bits`` override it
    for weight slots / activation slots; ``slot_bits`` per slot name.
    slots: the slots to quantize (names from ``ALL_SLOTS``; a layer ignores slots it lacks).
    overrides: {module name or regex: {"bits": .., "slot_bits": {..}, "slots": [..]}} (or a
    :class:`ModuleOverride`); the first matching key wins; ``{"skip": true}`` leaves a module in float.
    options: the method's options, a dict of its config's fields or the config itself (e.g.
    ``DQConfig(p_max=0.3)``); after building, always the method's config instance.
    """

    config_name: ClassVar[str] = "QuantConfig"

    method: str | None = None
    bits: int = 8
    weight_bits: int | None = None
    act_bits: int | None = None
    slot_bits: dict[str, int] = field(default_factory=dict)
    slots: tuple[str, ...] = DEFAULT_SLOTS
    overrides: dict[str, Any] = field(default_factory=dict)
    options: Any = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def validate(self) -> None:
        check_version(self.version, "QuantConfig")
        self.version = CONFIG_VERSION
        for b in (self.bits, self.weight_bits, self.act_bits, *self.slot_bits.values()):
            if b is not None:
                validate_bits(b)
        _check_slots([*self.slots, *self.slot_bits])
        self.overrides = {key: self._override(key, ov) for key, ov in self.overrides.items()}
        self._resolve_options()

    @staticmethod
    def _override(key: str, ov) -> dict:
        if isinstance(ov, ModuleOverride):
            ov = ov.partial()
        if isinstance(ov, MethodConfig):
            raise ConfigError(f"override for {key!r} is a {type(ov).__name__}: overrides set bits, slots or skip "
                              "per module; the method (and its options) is one per model, since its masks and "
                              "penalties (Degree-Quant, A2Q, MixQ) span the whole model")
        if not isinstance(ov, dict):
            raise ConfigError(f"override for {key!r} must be a dict, got {type(ov).__name__}")
        try:
            re.compile(key)
        except re.error as e:
            raise ConfigError(f"override key {key!r} is not a module name or a valid regular expression: {e}") from None
        try:
            checked = ModuleOverride.from_dict(ov).fields_dict()
        except ConfigError as e:
            raise ConfigError(f"override for {key!r}: {e}") from None
        # the keys given; a null weight_bits / act_bits means "this module's bits", elsewhere null is "unset"
        return {k: checked[k] for k in ov
                if k in checked and (checked[k] is not None or k in ("weight_bits", "act_bits"))}

    def _resolve_options(self) -> None:
        from qgnn.methods.base import method_config  # registry (qgnn.methods registers the methods)

        opts = self.options
        if isinstance(opts, MethodConfig):
            cls = method_config(self.method or opts.name)
            if not isinstance(opts, cls):
                raise ConfigError(f"QuantConfig method {self.method!r} was given the options of method "
                                  f"{opts.name!r} ({type(opts).__name__}); pass {cls.__name__} or leave "
                                  "method out")
        elif isinstance(opts, dict):
            cls = method_config(self.method or "qat")
            opts = cls.from_dict(opts)
        else:
            raise ConfigError(f"QuantConfig options must be a dict or a method config (e.g. DQConfig), got "
                              f"{type(opts).__name__}")
        self.method, self.options = cls.name, opts

    def method_options(self) -> MethodConfig:
        """The options with their "by bits" defaults filled in for ``bits`` (what the handler uses)."""
        return self.options.resolve(self.bits)

    # -- resolution -------------------------------------------------------------------------------
    def for_module(self, name: str) -> dict | None:
        """The effective settings of module ``name``: None when it stays float."""
        ov = {}
        for key, value in self.overrides.items():
            if key == name or re.fullmatch(key, name):
                ov = value
                break
        if ov.get("skip"):
            return None
        base = {"bits": self.bits, "weight_bits": self.weight_bits, "act_bits": self.act_bits,
                "slot_bits": dict(self.slot_bits), "slots": tuple(self.slots)}
        base.update({k: (tuple(v) if k == "slots" else v) for k, v in ov.items() if k != "skip"})
        if "slot_bits" in ov:
            base["slot_bits"] = {**self.slot_bits, **ov["slot_bits"]}
        return base

    @staticmethod
    def bits_of(settings: dict, slot: str) -> int:
        if slot in settings["slot_bits"]:
            return settings["slot_bits"][slot]
        kind = settings["weight_bits"] if slot in WEIGHT_SLOTS else settings["act_bits"]
        return kind if kind is not None else settings["bits"]

    # -- JSON -------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"QuantConfig is not valid JSON: {e}") from None
