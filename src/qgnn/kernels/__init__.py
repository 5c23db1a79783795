"""Kernels: ``reference/`` holds the plain-PyTorch specification of each kernel; fast backends (triton,
imported lazily) will sit beside it with the same signatures, and the names exported here are the
dispatch point the rest of qgnn calls. The integer kernels resolve to their reference implementation.

* :func:`integer_aggregate` / :func:`integer_accumulate`: message passing on integer codes with one
  float rescale at the end (MixQ-GNN, Moustafa et al. 2025, Theorem 1); see ``docs/integer.md``.
* :func:`lorap_inject`: LoRAP's prompt injection ``s + softmax(s W_aᵀ) U V`` (Liu et al. 2026), a fused
  Triton kernel on CUDA (``kernels/triton/lorap.py``), the reference elsewhere; :func:`lorap_backend` says
  which and why.

``import qgnn.kernels`` imports neither triton nor CUDA.
"""

from .lorap import LORAP_BACKENDS, lorap_backend, lorap_inject
from .reference import (
    FLOAT_EXACT,
    INT32_MAX,
    REDUCTIONS,
    accumulator_bound,
    integer_accumulate,
    integer_aggregate,
    max_in_degree_int32,
)
from .reference.lorap import lorap_inject_reference

__all__ = [
    "FLOAT_EXACT",
    "INT32_MAX",
    "REDUCTIONS",
    "accumulator_bound",
    "integer_accumulate",
    "integer_aggregate",
    "LORAP_BACKENDS",
    "lorap_backend",
    "lorap_inject",
    "lorap_inject_reference",
    "max_in_degree_int32",
]
