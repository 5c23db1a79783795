"""A bit assignment: module name -> {slot: bits}, the result of a mixed-precision search, as data.

It is what a search hands to ``quantize_``: :meth:`BitAssignment.to_overrides` turns it into
``QuantConfig.overrides`` (one exact-name entry per module, ``{"slot_bits": {...}}``), so a fixed-bit model
with exactly these widths is built by any method (``qat``, ``lsq``, ``dq``). JSON form::

    {"format": "qgnn.bit_assignment", "version": 1,
     "bits": {"convs.0": {"input": 8, "weight": 4, "xw": 2, "edge": 4}, "convs.1": {...}}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from qgnn.errors import ConfigError
from qgnn.quant import validate_bits

__all__ = ["BitAssignment"]

FORMAT = "qgnn.bit_assignment"
VERSION = 1


@dataclass
class BitAssignment:
    """``bits[module_name][slot] = width``; see the module docstring."""

    bits: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self):
        from qgnn.methods.config import ALL_SLOTS

        if not isinstance(self.bits, dict):
            raise ConfigError(f"a bit assignment maps module names to {{slot: bits}}, got {type(self.bits).__name__}")
        clean: dict[str, dict[str, int]] = {}
        for name, slots in self.bits.items():
            if not isinstance(slots, dict):
                raise ConfigError(f"bit assignment entry {name!r} must map slots to bits, got {slots!r}")
            bad = [s for s in slots if s not in ALL_SLOTS]
            if bad:
                raise ConfigError(f"bit assignment entry {name!r} names unknown slot(s) {', '.join(bad)}; "
                                  f"valid slots: {', '.join(ALL_SLOTS)}")
            clean[name] = {s: validate_bits(b) for s, b in slots.items()}
        self.bits = clean

    # ------------------------------------------------------------------ from a searched model
    @classmethod
    def from_model(cls, model: nn.Module) -> BitAssignment:
        """The arg-max width of every relaxed quantizer of ``model`` (the end of a MixQ search); slots
        with a fixed-width quantizer keep their width."""
        from qgnn.nn import QuantModule
        from qgnn.quant import RelaxedQuantizer

        bits: dict[str, dict[str, int]] = {}
        for name, m in model.named_modules():
            if not isinstance(m, QuantModule):
                continue
            entry = {}
            for slot, q in m.quantizers().items():
                if not q.enabled:
                    continue
                entry[slot] = q.chosen_bits() if isinstance(q, RelaxedQuantizer) else m.slot_bits(slot)
            if entry:
                bits[name] = entry
        if not bits:
            raise ConfigError("the model has no quantized layer: nothing to read a bit assignment from")
        return cls(bits)

    # ------------------------------------------------------------------ to quantize_
    def to_overrides(self) -> dict[str, dict]:
        """``QuantConfig.overrides`` that give every listed module exactly its widths (names escaped, so
        ``convs.1`` matches only ``convs.1``) and quantize exactly the listed slots."""
        return {re.escape(name): {"slot_bits": dict(slots), "slots": list(slots)}
                for name, slots in self.bits.items()}

    def check_model(self, model: nn.Module) -> None:
        """ConfigError if the assignment names modules ``model`` lacks or slots they lack."""
        modules = dict(model.named_modules())
        missing = [n for n in self.bits if n not in modules]
        if missing:
            raise ConfigError(f"the bit assignment names modules the model lacks: {', '.join(missing)}")

    # ------------------------------------------------------------------ summaries
    def histogram(self) -> dict[int, int]:
        """How many slots got each width."""
        out: dict[int, int] = {}
        for slots in self.bits.values():
            for b in slots.values():
                out[b] = out.get(b, 0) + 1
        return dict(sorted(out.items()))

    def describe(self) -> str:
        return "; ".join(f"{n}: " + " ".join(f"{s}={b}" for s, b in slots.items()) for n, slots in self.bits.items())

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "bits": {n: dict(s) for n, s in self.bits.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> BitAssignment:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ConfigError(f"not a qgnn bit assignment (expected format {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ConfigError(f"bit assignment version {d.get('version')} is not supported (this qgnn reads {VERSION})")
        return cls(d.get("bits", {}))

    def save(self, path: str | Path) -> None:
        from qgnn.train.checkpoint import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> BitAssignment:
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read bit assignment {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"bit assignment {path} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
