"""Quantizer statistics kept identical across the processes of a distributed run (torchrun + DDP).

Under data parallelism each rank sees its own slice of a batch. DDP averages gradients, so learned
parameters (LSQ steps, A2Q steps and widths, MixQ's bit logits, GNAQ's levels, prompts) stay identical by
construction. What DDP does not cover is the state a quantizer computes from the data it sees: observer ranges
(min / max, EMA, percentiles) and the first-batch initialisations (LSQ's and A2Q's steps). Left alone, each
rank would quantize with its own ranges while DDP averages the gradients of different models.

This module holds the reductions, in the manner of ``SyncBatchNorm``: inside the forward, right where a
quantizer turns a batch into a statistic, the statistic is reduced over the ranks, so every rank quantizes
the same step with the same ranges, and the statistic is that of the union of the ranks' batches:

* batch min / max: all-reduce MIN / MAX (exactly the single-process value on the union; the ``(+inf, -inf)``
  sentinels of entries a rank did not see are neutral);
* batch percentiles: estimated from the union of the ranks' random samples (:func:`gather`), which is a sample of
  the union of their batches (per node, where each rank sees other nodes: the mean of the ranks' estimates);
* per-entry means (LSQ's first step): the mean over the ranks that saw the entry;
* "some batch had a negative value" flags: all-reduce MAX.

Off unless a run turns it on (:func:`syncing`, entered by :mod:`qgnn.train.distributed`): a single process, or
a user's own script that happens to have a process group, runs exactly as before. Every reduction is a
collective: all ranks must call it in the same order, which holds because they run the same model on batches
of the same count (the distributed samplers give every rank the same number of batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["active", "any_true", "gather", "maximum", "min_max", "nanmean", "syncing"]

_GROUP: list = []  # the process group of the innermost syncing() block (None: the default group)
# what the reductions have sent since the process started: calls and payload bytes (benchmarks/distributed.py)
STATS = {"calls": 0, "bytes": 0}


@contextmanager
def syncing(group=None) -> Iterator[None]:
    """Within the block, quantizer statistics are reduced over ``group`` (None: the default process group)."""
    _GROUP.append(group)
    try:
        yield
    finally:
        _GROUP.pop()


def active() -> bool:
    """Whether statistics are being reduced (inside :func:`syncing`, with more than one process)."""
    if not _GROUP:
        return False
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size(_GROUP[-1]) > 1


def _all_reduce(t: Tensor, op) -> Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, op=op, group=_GROUP[-1])
    STATS["calls"] += 1
    STATS["bytes"] += t.numel() * t.element_size()
    return t


def min_max(mn: Tensor, mx: Tensor) -> tuple[Tensor, Tensor]:
    """Element-wise min of ``mn`` and max of ``mx`` over the ranks, in one collective (returns new tensors)."""
    if not active():
        return mn, mx
    import torch.distributed as dist

    both = _all_reduce(torch.cat([-mn.reshape(-1), mx.reshape(-1)]).float(), dist.ReduceOp.MAX)
    k = mn.numel()
    return (-both[:k]).reshape(mn.shape).to(mn.dtype), both[k:].reshape(mx.shape).to(mx.dtype)


def maximum(t: Tensor) -> Tensor:
    """Element-wise max of ``t`` over the ranks (returns a new tensor)."""
    if not active():
        return t
    import torch.distributed as dist

    return _all_reduce(t.detach().float().clone(), dist.ReduceOp.MAX).to(t.dtype)


def nanmean(*ts: Tensor) -> tuple[Tensor, ...]:
    """For each tensor, the element-wise mean over the ranks whose entry is finite; entries no rank has
    finite keep their own (non-finite) value. One collective for all of them (returns new tensors)."""
    if not active():
        return ts
    import torch.distributed as dist

    flat = [t.reshape(-1).float() for t in ts]
    ok = [torch.isfinite(f) for f in flat]
    payload = torch.cat([torch.where(o, f, torch.zeros_like(f)) for f, o in zip(flat, ok, strict=True)]
                        + [o.float() for o in ok])
    payload = _all_reduce(payload, dist.ReduceOp.SUM)
    n = sum(f.numel() for f in flat)
    sums, counts = payload[:n], payload[n:]
    out, at = [], 0
    for t, f in zip(ts, flat, strict=True):
        s, c = sums[at:at + f.numel()], counts[at:at + f.numel()]
        at += f.numel()
        out.append(torch.where(c > 0, s / c.clamp(min=1), f).reshape(t.shape).to(t.dtype))
    return tuple(out)


def gather(t: Tensor, dim: int = 0) -> Tensor:
    """The ranks' ``t`` (the same shape on every rank) concatenated along ``dim``, in rank order."""
    if not active():
        return t
    import torch.distributed as dist

    group = _GROUP[-1]
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)
    STATS["calls"] += 1
    STATS["bytes"] += t.numel() * t.element_size()
    return torch.cat(parts, dim=dim)


def any_true(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank."""
    if not active():
        return flag
    import torch.distributed as dist

    # nccl reduces CUDA tensors only
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(_GROUP[-1]) == "nccl" else "cpu"
    return bool(_all_reduce(torch.tensor([1.0 if flag else 0.0], device=dev), dist.ReduceOp.MAX).item() > 0)
