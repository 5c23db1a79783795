"""Plain-PyTorch reference kernels: the specification every fast kernel is tested against.

Nothing here imports triton; each function checks its inputs and favours clarity over speed.

* :mod:`.integer_aggregate`: integer message passing (MixQ-GNN Theorem 1): ``integer_aggregate``,
  ``integer_accumulate``, ``accumulator_bound``, ``max_in_degree_int32``.
* :mod:`.lorap`: LoRAP prompt injection ``s + softmax(s W_aᵀ) U V``: ``lorap_inject_reference``.
"""

from .integer_aggregate import (
    FLOAT_EXACT,
    INT32_MAX,
    REDUCTIONS,
    accumulator_bound,
    integer_accumulate,
    integer_aggregate,
    max_in_degree_int32,
)
from .lorap import lorap_inject_reference

__all__ = [
    "FLOAT_EXACT",
    "INT32_MAX",
    "REDUCTIONS",
    "accumulator_bound",
    "integer_accumulate",
    "integer_aggregate",
    "lorap_inject_reference",
    "max_in_degree_int32",
]
