"""qgnn: low-bit graph neural networks on PyTorch Geometric.

`import qgnn` stays light: it imports neither triton nor CUDA, and sub-packages
are loaded on first use (``qgnn.data``, ``qgnn.models``, ``qgnn.train``, ...).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {"data", "models", "train", "quant", "nn", "methods", "prompts", "search", "kernels", "export"}


def __getattr__(name: str):
    # Lazy sub-package import keeps `import qgnn` fast and free of optional backends.
    if name in _SUBMODULES:
        return importlib.import_module(f"qgnn.{name}")
    if name in ("quantize_", "QuantConfig"):  # the one verb, torchao-style: qgnn.quantize_(model, config)
        return getattr(importlib.import_module("qgnn.methods"), name)
    raise AttributeError(f"module 'qgnn' has no attribute {name!r}")


__all__ = ["__version__", "quantize_", "QuantConfig", *sorted(_SUBMODULES)]
