"""Quantization configs: versioned dataclasses with a JSON round trip.

A :class:`QuantConfig` says which method quantizes a model, at which bits, which
quantizer slots of each layer are quantized, and per-module exceptions. Per-layer
precision is data (torchao's idea): ``overrides`` maps a module name or a regular
expression to a partial config, so a mixed-precision assignment is just a dict.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from qgnn.errors import ConfigError
from qgnn.quant import validate_bits

CONFIG_VERSION = 1

# Every operand of a multiply-accumulate is quantized by default: the layer input
# (or X·W for GCN/GAT, which is what aggregation multiplies), the weights, the
# edge coefficients and GAT's attention. Outputs feed the next layer's input
# quantizer, so quantizing them again would only add rounding.
DEFAULT_SLOTS = ("input", "weight", "weight_root", "att", "xw", "edge", "attention")
ALL_SLOTS = ("input", "weight", "weight_root", "att", "xw", "edge", "message", "aggr", "output", "attention")
WEIGHT_SLOTS = frozenset({"weight", "weight_root", "att"})


@dataclass
class QuantConfig:
    """What `quantize_` does to a model.

    bits: default bit-width of every slot; ``weight_bits`` / ``act_bits`` override it
    for weight slots / activation slots; ``slot_bits`` per slot name.
    slots: the slots to quantize (names from ``ALL_SLOTS``; a layer ignores slots it lacks).
    overrides: {module name or regex: {"bits": .., "slot_bits": {..}, "slots": [..]}}; the
    first matching key wins; ``{"skip": true}`` leaves a module in float.
    method options live in ``options`` (e.g. Degree-Quant's p_min / p_max).
    """

    method: str = "qat"
    bits: int = 8
    weight_bits: int | None = None
    act_bits: int | None = None
    slot_bits: dict[str, int] = field(default_factory=dict)
    slots: tuple[str, ...] = DEFAULT_SLOTS
    overrides: dict[str, dict] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self):
        self.slots = tuple(self.slots)
        self.validate()

    def validate(self) -> None:
        for b in (self.bits, self.weight_bits, self.act_bits, *self.slot_bits.values()):
            if b is not None:
                validate_bits(b)
        bad = [s for s in (*self.slots, *self.slot_bits) if s not in ALL_SLOTS]
        if bad:
            raise ConfigError(f"unknown quantizer slot(s) {', '.join(bad)}; valid slots: {', '.join(ALL_SLOTS)}")
        for key, ov in self.overrides.items():
            if not isinstance(ov, dict):
                raise ConfigError(f"override for {key!r} must be a dict, got {type(ov).__name__}")
            unknown = set(ov) - {"bits", "weight_bits", "act_bits", "slot_bits", "slots", "skip"}
            if unknown:
                raise ConfigError(f"override for {key!r} has unknown keys: {', '.join(sorted(unknown))}")
            for b in (ov.get("bits"), ov.get("weight_bits"), ov.get("act_bits"), *ov.get("slot_bits", {}).values()):
                if b is not None:
                    validate_bits(b)
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"QuantConfig version {self.version} is not supported (this qgnn reads {CONFIG_VERSION})")

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
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["slots"] = list(self.slots)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> QuantConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown QuantConfig keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"QuantConfig is not valid JSON: {e}") from None
