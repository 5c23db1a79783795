"""PEP 562 lazy exports for qgnn's packages.

A package lists ``{name: module}`` and sets ``__getattr__ = lazy_exports(__name__, EXPORTS)``: the names load on
first use, so importing a light sibling module (the CLI's parser, ``qgnn info``) does not import torch / PyG
through the package's ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` that imports ``exports[name]`` on first access (then caches the value in the
    package), and falls back to the package's submodules, as eager imports gave."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
