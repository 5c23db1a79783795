"""Which elements of a tensor share one quantization parameter (scale, zero-point, range).

A :class:`Layout` maps a flat parameter table of size ``P`` onto a tensor ``x``:

* ``"tensor"``: P = 1, one parameter for every element.
* ``"channel"``: P = number of channels = ``x.shape[ch_axis]``. Activations ``[N, C]`` use the last axis
  (``ch_axis=-1``, the default), weights ``[out, in]`` use ``ch_axis=0``. P may be left unknown
  (``num_channels=None``); the owner then sizes its tables from the first tensor it sees.
* ``"node"``: P = ``num_nodes``; row ``i`` of ``x`` (dim 0) belongs to node ``index[i]``, or to node ``i``
  when ``index`` is None. ``index`` may repeat ids (a node in several rows) and need not cover every
  node; nodes that never appear keep their own entries untouched.

All maps are vectorised torch ops (gather / scatter_reduce / index_add), never Python loops over nodes or
channels, and never ``.item()``: they run on every training forward.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from qgnn.errors import ConfigError, lookup

__all__ = ["GRANULARITIES", "parse_granularity", "Layout", "fill_unseen", "fill_nan"]

GRANULARITIES = {
    "tensor": "tensor",
    "per_tensor": "tensor",
    "channel": "channel",
    "per_channel": "channel",
    "node": "node",
    "per_node": "node",
}


def parse_granularity(name: str) -> str:
    """Canonical granularity (``"tensor"``, ``"channel"`` or ``"node"``); UnknownNameError otherwise."""
    return lookup("granularity", name, GRANULARITIES)


def _positive_int(name: str, v, allow_none: bool) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


class Layout:
    """Granularity of a quantizer or observer: how a parameter table of size :attr:`size` covers ``x``."""

    def __init__(
        self,
        granularity: str = "tensor",
        ch_axis: int = -1,
        num_nodes: int | None = None,
        num_channels: int | None = None,
    ):
        self.granularity = parse_granularity(granularity)
        if isinstance(ch_axis, bool) or not isinstance(ch_axis, numbers.Integral):
            raise ConfigError(f"ch_axis must be an integer axis, got {ch_axis!r}")
        self.ch_axis = int(ch_axis)
        self.num_nodes = None
        self.num_channels = None
        if self.granularity == "node":
            if num_nodes is None:
                raise ConfigError("granularity 'node' needs num_nodes (the size of the per-node table)")
            self.num_nodes = _positive_int("num_nodes", num_nodes, allow_none=False)
        elif self.granularity == "channel":
            self.num_channels = _positive_int("num_channels", num_channels, allow_none=True)

    # ------------------------------------------------------------------ description
    @property
    def size(self) -> int | None:
        """Number of parameters P (None: per-channel with the channel count not known yet)."""
        if self.granularity == "tensor":
            return 1
        if self.granularity == "node":
            return self.num_nodes
        return self.num_channels

    def describe(self) -> str:
        if self.granularity == "tensor":
            return "per_tensor"
        if self.granularity == "node":
            return f"per_node({self.num_nodes})"
        return f"per_channel(axis={self.ch_axis})"

    def same_as(self, other: Layout) -> bool:
        return (self.granularity, self.num_nodes) == (other.granularity, other.num_nodes) and (
            self.granularity != "channel" or self.ch_axis == other.ch_axis
        )

    # ------------------------------------------------------------------ checks
    def axis(self, x: Tensor) -> int:
        if not -x.dim() <= self.ch_axis < x.dim():
            raise ConfigError(f"ch_axis={self.ch_axis} is out of range for a {x.dim()}-d tensor")
        return self.ch_axis % x.dim()

    def check(self, x: Tensor, index: Tensor | None = None) -> int:
        """Validate ``x`` / ``index`` (shapes only: Python ints, no device sync); return the P they need."""
        if self.granularity == "tensor":
            return 1
        if self.granularity == "channel":
            c = x.shape[self.axis(x)]
            if self.num_channels is not None and c != self.num_channels:
                raise ConfigError(
                    f"per-channel quantizer was built for {self.num_channels} channels on axis "
                    f"{self.ch_axis}, got a tensor of shape {tuple(x.shape)}"
                )
            return c
        if x.dim() == 0:
            raise ConfigError("per-node quantization needs a tensor with one row per node, got a scalar")
        n = x.shape[0]
        if index is None:
            if n > self.num_nodes:
                raise ConfigError(
                    f"per-node quantizer has {self.num_nodes} nodes but x has {n} rows and no index; "
                    "pass index (the node id of each row)"
                )
        else:
            if index.dim() != 1 or index.shape[0] != n:
                raise ConfigError(
                    f"index must be 1-d with one node id per row of x ({n}), got shape {tuple(index.shape)}"
                )
            if index.dtype not in (torch.int64, torch.int32):
                raise ConfigError(f"index must be an integer (long) tensor of node ids, got {index.dtype}")
        return self.num_nodes

    # ------------------------------------------------------------------ parameters -> elements
    def expand(self, p: Tensor, x: Tensor, index: Tensor | None = None) -> Tensor:
        """View / gather the table ``p`` ([P]) so that it broadcasts against ``x`` element by element."""
        if self.granularity == "tensor":
            return p.reshape(())
        if self.granularity == "channel":
            shape = [1] * x.dim()
            shape[self.axis(x)] = p.shape[0]
            return p.view(shape)
        n = x.shape[0]
        rows = p[:n] if index is None else p.index_select(0, index)
        return rows.view((n,) + (1,) * (x.dim() - 1))

    def group_size(self, x: Tensor) -> int:
        """Number of elements of ``x`` that share one parameter (LSQ's N in its gradient scale)."""
        if self.granularity == "tensor":
            return x.numel()
        if self.granularity == "channel":
            return x.numel() // max(x.shape[self.axis(x)], 1)
        return x[0].numel() if x.shape[0] else 0

    def matrix(self, x: Tensor) -> tuple[Tensor, int]:
        """A 2-d view (copy only when unavoidable) whose dim ``pdim`` runs over the P slices.

        tensor: ``[1, numel]``; channel on axis 0: ``[C, rest]``; channel elsewhere: ``[rest, C]``
        (a view for contiguous activations with channels last); node: ``[N, row]``.
        """
        if self.granularity == "tensor":
            return x.reshape(1, -1), 0
        if self.granularity == "node":
            return x.reshape(x.shape[0], -1), 0
        a = self.axis(x)
        c = x.shape[a]
        if a == 0:
            return x.reshape(c, -1), 0
        return x.movedim(a, -1).reshape(-1, c), 1

    # ------------------------------------------------------------------ elements -> parameters
    def scatter_rows(self, rows: Tensor, index: Tensor | None, reduce: str, fill: float) -> Tensor:
        """Per-node table [num_nodes] from per-row values, ``reduce`` in {'amin', 'amax', 'sum'};
        nodes without rows hold ``fill``."""
        table = rows.new_full((self.num_nodes,), fill)
        if index is None:
            table[: rows.shape[0]] = rows
            return table
        if reduce == "sum":
            return table.index_add_(0, index, rows)
        return table.scatter_reduce_(0, index, rows, reduce, include_self=True)

    def minmax(self, x: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-parameter (min, max) of ``x``; entries with no element hold the sentinels (+inf, -inf)."""
        # amin + amax rather than aminmax(dim=...): on CPU the fused one is not vectorised along a dim
        # and is 10x slower for [N, C] activations.
        if self.granularity == "tensor":
            mn, mx = torch.aminmax(x)
            return mn.reshape(1), mx.reshape(1)
        if self.granularity == "channel":
            dims = tuple(d for d in range(x.dim()) if d != self.axis(x))
            return x.amin(dim=dims), x.amax(dim=dims)
        rows = x.reshape(x.shape[0], -1)
        rmin, rmax = rows.amin(dim=1), rows.amax(dim=1)
        return (
            self.scatter_rows(rmin, index, "amin", math.inf),
            self.scatter_rows(rmax, index, "amax", -math.inf),
        )

    def mean(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-parameter mean of ``x``; nodes with no element get NaN (callers fill them)."""
        if self.granularity == "tensor":
            return x.mean().reshape(1)
        if self.granularity == "channel":
            dims = tuple(d for d in range(x.dim()) if d != self.axis(x))
            return x.mean(dim=dims)
        rows = x.reshape(x.shape[0], -1)
        sums = self.scatter_rows(rows.sum(dim=1), index, "sum", 0.0)
        counts = self.scatter_rows(rows.new_full((rows.shape[0],), float(rows.shape[1])), index, "sum", 0.0)
        return sums / counts  # 0/0 = NaN marks unseen nodes


def fill_unseen(min_val: Tensor, max_val: Tensor) -> tuple[Tensor, Tensor]:
    """Replace entries never observed (non-finite sentinels) by the range pooled over observed entries,
    or by 0 when nothing was observed, so qparams stay finite.

    Why pooled and not zero: a node absent from training (isolated, or outside every mini-batch) would
    otherwise get a zero range and be quantized to ~0 when it finally shows up at inference.
    """
    if min_val.numel() == 0:
        return min_val, max_val
    seen = torch.isfinite(min_val) & torch.isfinite(max_val)
    inf = torch.full_like(min_val, math.inf)
    pooled_min = torch.where(seen, min_val, inf).amin()
    pooled_max = torch.where(seen, max_val, -inf).amax()
    pooled_min = torch.where(torch.isfinite(pooled_min), pooled_min, torch.zeros_like(pooled_min))
    pooled_max = torch.where(torch.isfinite(pooled_max), pooled_max, torch.zeros_like(pooled_max))
    return torch.where(seen, min_val, pooled_min), torch.where(seen, max_val, pooled_max)


def fill_nan(values: Tensor) -> Tensor:
    """Replace NaN entries (unseen nodes) by the mean of the others (0 if none)."""
    ok = ~torch.isnan(values)
    total = torch.where(ok, values, torch.zeros_like(values)).sum()
    count = ok.sum().clamp(min=1)
    return torch.where(ok, values, total / count)
