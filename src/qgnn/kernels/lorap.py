"""The LoRAP prompt-injection dispatcher: one entry point, the fused Triton kernel on CUDA, the reference
elsewhere, and a reason for the choice.

``lorap_inject(s, w_a, u, v)`` computes ``s + softmax(s W_aᵀ) U V`` (LoRAP, arXiv 2601.15079; see
:mod:`qgnn.kernels.reference.lorap`). ``backend="auto"`` takes Triton when s is on a CUDA device and triton
imports, and the plain-torch reference otherwise; ``"triton"`` / ``"reference"`` force one (``"triton"``
on CPU tensors works only under ``TRITON_INTERPRET=1``, which the tests use). Triton is imported on the
first call that needs it, never by ``import qgnn.kernels``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from torch import Tensor

from qgnn.errors import ConfigError

from .reference.lorap import lorap_inject_reference

__all__ = ["LORAP_BACKENDS", "lorap_backend", "lorap_inject"]

LORAP_BACKENDS = ("auto", "triton", "reference")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _have_triton() -> bool:
    """Whether triton is importable. Cached: ``find_spec`` searches sys.path (about 0.1 ms), and the
    dispatcher runs once per prompted layer per forward, a cost as large as the fused kernel itself."""
    return importlib.util.find_spec("triton") is not None


def lorap_backend(s: Tensor, backend: str = "auto") -> tuple[str, str]:
    """(``"triton"`` or ``"reference"``, why) for a call on ``s``; ConfigError for an unusable request."""
    if backend not in LORAP_BACKENDS:
        raise ConfigError(f"unknown lorap backend {backend!r}; valid: {', '.join(LORAP_BACKENDS)}")
    if backend == "reference":
        return "reference", "requested"
    if backend == "triton":
        if not _have_triton():
            raise ConfigError("lorap backend 'triton' requested but triton is not installed "
                              "(pip install 'qgnn[triton]')")
        if not s.is_cuda and not _interpreting():
            raise ConfigError("lorap backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
        return "triton", "requested"
    if not s.is_cuda:
        return "reference", f"input on {s.device.type}, the fused kernel runs on CUDA devices"
    if not _have_triton():
        return "reference", "triton is not installed (pip install 'qgnn[triton]')"
    return "triton", f"CUDA input ({s.device}) and triton installed"


def lorap_inject(s: Tensor, w_a: Tensor, u: Tensor, v: Tensor, backend: str = "auto") -> Tensor:
    """``s + softmax(s W_aᵀ) U V`` by the backend :func:`lorap_backend` picks; differentiable."""
    name, _ = lorap_backend(s, backend)
    if name == "reference":
        return lorap_inject_reference(s, w_a, u, v)
    from .triton.lorap import lorap_inject_triton  # lazy: triton loads on first use

    return lorap_inject_triton(s, w_a, u, v)
