"""Typed, versioned configs: one ``to_dict`` / ``from_dict`` and one value check for every qgnn config.

:class:`ConfigBase` is a mixin for dataclasses (TrainConfig, QuantConfig, the method configs such as
``DQConfig``, PromptConfig, SearchConfig). It gives each of them

* **a type check when built**: every field's value is checked against its annotation (``int``, ``float``,
  ``bool``, ``str``, ``X | None``, ``Literal[...]``, ``tuple[int, ...]``, ``list[str]``, ``dict[str, int]``,
  nested configs), and a wrong one is one :class:`~qgnn.errors.ConfigError` line naming the field, the
  value and what is expected (``config bits must be an integer or null, got 'four'``). Coercions, and why:
  an integral float (``3.0``) is accepted as an int and an int as a float (JSON writers and hand-written
  files do not keep the distinction); a list is accepted for a tuple (JSON has no tuples); ``bool`` is
  never a number (``"seeds": true`` is a mistake, not 1). Range checks follow in the subclass's
  ``validate()``, which ``__post_init__`` calls after the type check.
* **one JSON form**: ``to_dict()`` gives plain JSON values (tuples as lists, nested configs as dicts) plus
  ``"version"``, the layout version of that form (:data:`CONFIG_VERSION`, one number for every config,
  written once per document: nested configs carry none). ``from_dict(d)`` accepts a missing version as
  the current one (files written before configs carried a version: results JSON, checkpoints, ``qgnn
  train --config old_results.json``), refuses a newer version with one line, and refuses unknown keys
  naming the valid ones. ``aliases`` maps a dict key to a field whose name cannot be that key (MixQ's
  ``"lambda"`` option is the field ``lam``); ``to_dict`` writes the dict key back.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from qgnn.errors import ConfigError

__all__ = ["CONFIG_VERSION", "ConfigBase", "check_version", "describe_type"]

CONFIG_VERSION = 1
"""Layout version of every config's dict form. Raise it when a key changes meaning or is removed (a new
key with a default does not need it) and teach ``from_dict`` to read the older layout."""


class _Mismatch(Exception):
    """Internal: a value does not fit a type (turned into one ConfigError line by the caller)."""


def check_version(version, what: str = "config") -> int:
    """The dict form's version: None (absent: written before versions) means the current one; a newer one
    than this qgnn reads is a ConfigError."""
    if version is None:
        return CONFIG_VERSION
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise ConfigError(f"{what} version must be a positive integer, got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigError(f"{what} version {version} was written by a newer qgnn (this one reads versions up to "
                          f"{CONFIG_VERSION}); upgrade qgnn to load it")
    return int(version)


def describe_type(tp) -> str:
    """``int | None`` -> 'an integer or null': what a message says is expected."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin in (tuple, list) or tp in (tuple, list):
        inner = f" of {_plural(args[0])}" if args and args[0] is not Ellipsis else ""
        return f"a list{inner}"
    if origin is dict or tp is dict:
        return "a JSON object (dict)"
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        return f"a {tp.__name__} or a dict of its options"
    return getattr(tp, "__name__", str(tp))


def _plural(tp) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, describe_type(tp))


def _coerce(value, tp):
    """``value`` fitted to annotation ``tp`` (see the module docstring for the coercions); _Mismatch if not."""
    if tp is Any or tp is object:
        return value
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        for arg in sorted(args, key=lambda a: a is not type(None)):  # None first: null is never coerced
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        for a in args:  # bool is an int subclass: True must not match 1
            if type(value) is type(a) and value == a:
                return a
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Mismatch
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(args) != len(value):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        if not args:
            return dict(value)
        return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, ConfigBase):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return tp.from_dict(value)  # its own errors name its own fields
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation this checker does not model: leave the value to validate()


def _to_plain(value):
    if isinstance(value, ConfigBase):
        return value.fields_dict()
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


class ConfigBase:
    """Mixin for config dataclasses: type check when built, versioned ``to_dict`` / ``from_dict``.

    Subclasses set ``config_name`` (how messages name the config: ``"config"``, ``"dq"``, ...) and
    ``key_word`` (``"key"``, or ``"option"`` for a method's options), may set ``aliases`` ({dict key:
    field name}) and override ``validate()`` for ranges and consistency (it runs after the type check, on
    coerced values, from ``__post_init__``).
    """

    config_name: ClassVar[str] = "config"
    key_word: ClassVar[str] = "key"
    aliases: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        self.check_types()
        self.validate()

    # -- checks -----------------------------------------------------------------------------------
    @classmethod
    def _hints(cls) -> dict:
        hints = cls.__dict__.get("_qgnn_hints")
        if hints is None:
            hints = typing.get_type_hints(cls)
            cls._qgnn_hints = hints
        return hints

    @classmethod
    def key_of(cls, name: str) -> str:
        """The dict key of field ``name`` (its alias where it has one)."""
        return next((k for k, v in cls.aliases.items() if v == name), name)

    def check_types(self) -> None:
        """Coerce every field to its annotation, or raise one ConfigError line (module docstring)."""
        hints = self._hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                setattr(self, f.name, _coerce(value, hints.get(f.name, Any)))
            except _Mismatch:
                raise ConfigError(f"{self.config_name} {self.key_of(f.name)} must be "
                                  f"{describe_type(hints[f.name])}, got {value!r}") from None

    def validate(self) -> None:
        """Ranges and consistency (subclasses); called after the type check."""

    def require(self, name: str, ok: bool, expected: str) -> None:
        """ConfigError ``<config> <name> must be <expected>, got <value>`` unless ``ok``."""
        if not ok:
            raise ConfigError(f"{self.config_name} {self.key_of(name)} must be {expected}, "
                              f"got {getattr(self, name)!r}")

    # -- dict form --------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """The keys of the dict form (field names, aliases applied), in field order."""
        return [cls.key_of(f.name) for f in dataclasses.fields(cls) if f.name != "version"]

    def fields_dict(self) -> dict:
        """Every field as JSON values, without the version: the form of a config nested in another's dict."""
        return {self.key_of(f.name): _to_plain(getattr(self, f.name))
                for f in dataclasses.fields(self) if f.name != "version"}

    def to_dict(self) -> dict:
        """JSON-ready dict of every field, with ``"version"`` (module docstring)."""
        return {"version": CONFIG_VERSION, **self.fields_dict()}

    @classmethod
    def from_dict(cls, d):
        """Build from the dict form: version checked, unknown keys refused, values checked when built."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.config_name} must be a JSON object (dict), got {type(d).__name__}")
        d = dict(d)
        check_version(d.pop("version", None), cls.config_name)
        valid = cls.keys()
        unknown = sorted(set(d) - set(valid) - set(cls.aliases.values()))
        if unknown:
            raise ConfigError(f"unknown {cls.config_name} {cls.key_word}s: {', '.join(map(str, unknown))}; "
                              f"valid {cls.key_word}s: {', '.join(sorted(valid)) or 'none'}")
        return cls(**{cls.aliases.get(k, k): v for k, v in d.items()})

    def replace(self, **changes):
        """A copy with ``changes`` (dict keys or field names), checked as when built."""
        return dataclasses.replace(self, **{self.aliases.get(k, k): v for k, v in changes.items()})
