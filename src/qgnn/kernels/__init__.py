"""Kernels: ``reference/`` holds the plain-PyTorch specification of each kernel; fast backends (triton,
imported lazily) will sit beside it with the same signatures, and the names exported here are the
dispatch point the rest of qgnn calls. For now every name resolves to its reference implementation.

* :func:`integer_aggregate` / :func:`integer_accumulate`: message passing on integer codes with one
  float rescale at the end (MixQ-GNN, Moustafa et al. 2025, Theorem 1); see ``docs/integer.md``.

``import qgnn.kernels`` imports neither triton nor CUDA.
"""

from .reference import (
    INT32_MAX,
    REDUCTIONS,
    accumulator_bound,
    integer_accumulate,
    integer_aggregate,
    max_in_degree_int32,
)

__all__ = [
    "INT32_MAX",
    "REDUCTIONS",
    "accumulator_bound",
    "integer_accumulate",
    "integer_aggregate",
    "max_in_degree_int32",
]
