"""qgnn: low-bit graph neural networks on PyTorch Geometric.

`import qgnn` stays light: it imports neither triton nor CUDA, and sub-packages
are loaded on first use (``qgnn.data``, ``qgnn.models``, ``qgnn.train``, ...).
"""

from __future__ import annotations

from qgnn._lazy import lazy_exports

__version__ = "0.1.0"

_SUBMODULES = {"data", "models", "train", "quant", "nn", "methods", "prompts", "search", "kernels", "export",
               "compare", "config", "grid", "recipes", "testing"}

# Lazy sub-package import keeps `import qgnn` fast and free of optional backends; the one verb, torchao-style:
# qgnn.quantize_(model, config).
__getattr__ = lazy_exports(__name__, {"quantize_": "qgnn.methods", "QuantConfig": "qgnn.methods"})


__all__ = ["__version__", "quantize_", "QuantConfig", *sorted(_SUBMODULES)]
