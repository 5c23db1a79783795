"""Integer message passing: the plain-torch specification.

MixQ-GNN (Moustafa et al., arXiv 2505.09361, Theorem 1): with ``x_j = s_x (q_x,j - z_x)`` (one scale /
zero-point per tensor, or one per channel) and ``e_ij = s_e (q_e,ij - z_e)`` (one per tensor)::

    Σ_j e_ij x_j  =  s_e · s_x · Σ_j (q_e,ij - z_e)(q_x,j - z_x)

so the aggregation runs entirely in integers and is rescaled once at the end. This module computes
exactly that: zero-points are subtracted in the accumulator dtype, each edge multiplies two integers,
``index_add_`` sums them per target node, and one float multiply by ``s_e · s_x`` gives real values.

Conventions (PyG's ``source_to_target`` flow): ``edge_index[0]`` is the source j (the row of ``q_x`` a
message reads), ``edge_index[1]`` the target i (the output row it is added to). Sources index the rows of
``q_x``; targets index ``0..num_nodes-1`` (the two sets may differ, e.g. one source row per *edge* when
``q_x`` holds message codes and ``edge_index[0] = arange(E)``). Duplicate edges and self loops are
ordinary edges; a target with no edge gets 0 (also under ``reduce="mean"``).

Accumulator width. Every partial sum of target i is bounded by
``B_i = Σ_{j→i} |q_e,ij - z_e| · max_{j,c} |q_x,jc - z_x,c|``; the reference computes ``B = max_i B_i``
from the codes it is given (one pass over the edges, in int64) and accumulates in int32 when
``B <= 2^31 - 1``, in int64 otherwise, so the accumulator never wraps. :func:`accumulator_bound` is the
static worst case for b-bit codes, ``(2^b_x - 1)(2^b_e - 1) · max_in_degree`` (an unweighted adjacency
counts as ``2^b_e - 1 = 1``), since ``|q - z| <= qmax - qmin = 2^b - 1`` for any zero-point in range:
int32 is always safe up to in-degree 33,025 for 8-bit x and edges, 8,421,504 for 8-bit x unweighted,
9,544,371 for 4-bit x and edges.

This is the reference: it checks its inputs (and so synchronises with the device) and favours clarity;
a fast kernel must reproduce its accumulator bit for bit.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from qgnn.errors import ConfigError

__all__ = [
    "INT32_MAX",
    "REDUCTIONS",
    "accumulator_bound",
    "max_in_degree_int32",
    "integer_accumulate",
    "integer_aggregate",
]

INT32_MAX = (1 << 31) - 1
FLOAT_EXACT = 1 << 24  # float32 holds every integer of magnitude <= 2^24 exactly
INT64_MAX = (1 << 63) - 1
REDUCTIONS = ("sum", "mean")


# --------------------------------------------------------------------------------------------------
# static bound
# --------------------------------------------------------------------------------------------------


def _span(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits < 1:
        raise ConfigError(f"bits must be a positive integer, got {bits!r}")
    return (1 << int(bits)) - 1


def accumulator_bound(x_bits: int, max_in_degree: int, e_bits: int | None = None) -> int:
    """Worst-case ``|Σ_j (q_e,ij - z_e)(q_x,j - z_x)|`` for ``x_bits``-bit node codes, ``e_bits``-bit edge
    codes (None: unweighted adjacency, every factor 1) and at most ``max_in_degree`` edges into a node:
    ``(2^x_bits - 1) · (2^e_bits - 1) · max_in_degree``. Any zero-point in [qmin, qmax] is covered."""
    if isinstance(max_in_degree, bool) or not isinstance(max_in_degree, numbers.Integral) or max_in_degree < 0:
        raise ConfigError(f"max_in_degree must be a non-negative integer, got {max_in_degree!r}")
    e_span = 1 if e_bits is None else _span(e_bits)
    return _span(x_bits) * e_span * int(max_in_degree)


def max_in_degree_int32(x_bits: int, e_bits: int | None = None) -> int:
    """Largest in-degree for which :func:`accumulator_bound` fits int32 (int32 can never wrap below it)."""
    per_edge = _span(x_bits) * (1 if e_bits is None else _span(e_bits))
    return INT32_MAX // per_edge


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _is_int(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_codes(name: str, q, dim: int) -> Tensor:
    if not isinstance(q, Tensor):
        raise ConfigError(f"{name} must be a tensor of integer codes, got {type(q).__name__}")
    if not _is_int(q):
        raise ConfigError(
            f"{name} must hold integer codes (int8 / uint8 / int16 / int32 / int64, as Quantizer.quant_int "
            f"returns), got {q.dtype}; quantize the tensor first instead of passing real values"
        )
    if q.dim() != dim:
        want = "[num_source_rows, channels]" if dim == 2 else "[num_edges]"
        raise ConfigError(f"{name} must have shape {want}, got {tuple(q.shape)}")
    return q


def _as_param(name: str, v, like: Tensor, channels: int | None, allow_none: bool) -> Tensor | None:
    """A scale / zero-point as a flat tensor of 1 (per tensor) or ``channels`` (per channel) entries."""
    if v is None:
        if allow_none:
            return None
        raise ConfigError(f"{name} is required")
    if isinstance(v, bool) or not isinstance(v, (Tensor, numbers.Real)):
        raise ConfigError(f"{name} must be a number or a tensor, got {type(v).__name__}")
    t = torch.as_tensor(v, device=like.device)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    shape = tuple(t.shape)
    # accepted: () / [1] (per tensor), [C] / [1, C] (per channel); rows > 1 would be per node or per edge
    if t.dim() > 2 or (t.dim() == 2 and shape[0] != 1):
        raise ConfigError(
            f"{name} must be per tensor (shape () or [1]) or per channel ([C] or [1, C]), got shape {shape}: "
            "a per-node or per-edge parameter cannot be factored out of Σ_j (Theorem 1)"
        )
    t = t.reshape(-1)
    allowed = (1,) if channels is None else (1, channels)
    if t.numel() not in allowed:
        what = "one value (per tensor)" if channels is None else f"1 or {channels} values"
        raise ConfigError(f"{name} must hold {what}, got shape {shape}")
    return t


def _check_scale(name: str, s: Tensor) -> Tensor:
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ConfigError(f"{name} must be finite and positive, got {s.tolist()}")
    return s


def _check_zero_point(name: str, z: Tensor | None) -> Tensor | None:
    if z is None:
        return None
    if not bool(torch.isfinite(z).all()) or not torch.equal(z, z.round()):
        raise ConfigError(f"{name} must hold integers (the zero-point of integer codes), got {z.tolist()}")
    if z.numel() and float(z.abs().max()) > INT64_MAX / 4:
        raise ConfigError(f"{name} is out of range for integer arithmetic: {z.tolist()}")
    return z


def _check_edge_index(edge_index, num_src: int, num_nodes: int) -> tuple[Tensor, Tensor]:
    if not isinstance(edge_index, Tensor) or edge_index.is_sparse:
        raise ConfigError("edge_index must be a dense [2, num_edges] integer tensor")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ConfigError(f"edge_index must have shape [2, num_edges], got {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"edge_index must be int64 (or int32), got {edge_index.dtype}")
    src, dst = edge_index[0].long(), edge_index[1].long()
    if src.numel():
        lo, hi = int(src.min()), int(src.max())
        if lo < 0 or hi >= num_src:
            raise ConfigError(
                f"edge_index[0] (sources) must lie in [0, {num_src}) (the rows of q_x), got values in [{lo}, {hi}]"
            )
        lo, hi = int(dst.min()), int(dst.max())
        if lo < 0 or hi >= num_nodes:
            raise ConfigError(
                f"edge_index[1] (targets) must lie in [0, {num_nodes}) (num_nodes), got values in [{lo}, {hi}]"
            )
    return src, dst


# --------------------------------------------------------------------------------------------------
# the integer sum
# --------------------------------------------------------------------------------------------------


def _prepare(q_x, x_zero_point, edge_index, num_nodes, q_e, e_zero_point):
    """Validated operands: (q_x, z_x [1|C] or None, src, dst, q_e or None, z_e [1] or None)."""
    q_x = _check_codes("q_x", q_x, 2)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral) or num_nodes < 0:
        raise ConfigError(f"num_nodes must be a non-negative integer, got {num_nodes!r}")
    num_nodes = int(num_nodes)
    src, dst = _check_edge_index(edge_index, q_x.size(0), num_nodes)
    if edge_index.device != q_x.device:
        raise ConfigError(f"edge_index is on {edge_index.device} but q_x on {q_x.device}")
    z_x = _check_zero_point("x_zero_point", _as_param("x_zero_point", x_zero_point, q_x, q_x.size(1), True))
    z_e = None
    if q_e is not None:
        q_e = _check_codes("q_e", q_e, 1)
        if q_e.numel() != src.numel():
            raise ConfigError(
                f"q_e must have one code per edge: {src.numel()} edges in edge_index, got {q_e.numel()} codes"
            )
        if q_e.device != q_x.device:
            raise ConfigError(f"q_e is on {q_e.device} but q_x on {q_x.device}")
        z_e = _check_zero_point("e_zero_point", _as_param("e_zero_point", e_zero_point, q_e, None, True))
    elif e_zero_point is not None:
        raise ConfigError("e_zero_point was given without q_e (q_e=None means an unweighted 0/1 adjacency)")
    return q_x, z_x, src, dst, num_nodes, q_e, z_e


def _centered(q: Tensor, z: Tensor | None, dtype: torch.dtype) -> Tensor:
    """q - z in ``dtype`` (the zero-point broadcasts per tensor or per channel / last axis)."""
    c = q.to(dtype)
    if z is None:
        return c
    return c - z.to(dtype)


def _bound(xc64: Tensor, ec64: Tensor | None, dst: Tensor, num_nodes: int) -> int:
    """max_i Σ_{j→i} |e_ij| · max|x|: no partial sum of any target can exceed it (exact, in Python ints)."""
    if dst.numel() == 0 or xc64.numel() == 0:
        return 0
    max_x = int(xc64.abs().max())
    if ec64 is None:
        wdeg = torch.bincount(dst, minlength=num_nodes)
    else:
        wdeg = torch.zeros(num_nodes, dtype=torch.int64, device=dst.device).index_add_(0, dst, ec64.abs())
    return int(wdeg.max()) * max_x


def integer_accumulate(
    q_x: Tensor,
    x_zero_point: Tensor | float | None,
    edge_index: Tensor,
    num_nodes: int,
    q_e: Tensor | None = None,
    e_zero_point: Tensor | float | None = None,
    *,
    accum_dtype: torch.dtype | None = None,
) -> Tensor:
    """The integer accumulator ``acc[i, c] = Σ_{(j,i) ∈ E} (q_e,ji - z_e) · (q_x[j, c] - z_x[c])``.

    Args:
        q_x: integer codes ``[S, C]`` (S source rows: nodes, or edges for message codes).
        x_zero_point: zero-point per tensor (number, ``()`` / ``[1]``) or per channel (``[C]`` / ``[1, C]``);
            must hold integers; None means 0 (symmetric).
        edge_index: ``[2, E]``, row 0 the source rows of ``q_x``, row 1 the targets ``< num_nodes``.
        num_nodes: number of target rows of the result.
        q_e: integer edge codes ``[E]``, or None for an unweighted adjacency (every factor 1).
        e_zero_point: per-tensor zero-point of ``q_e`` (None: 0).
        accum_dtype: None (default) picks int32 when the exact bound of the module docstring fits, else
            int64; ``torch.int64`` forces int64; ``torch.int32`` forces int32 and raises ConfigError if it
            could overflow.

    Returns:
        ``[num_nodes, C]`` int32 or int64 tensor, exact (never wrapped). Targets without edges hold 0.
    """
    q_x, z_x, src, dst, num_nodes, q_e, z_e = _prepare(q_x, x_zero_point, edge_index, num_nodes, q_e, e_zero_point)
    if accum_dtype not in (None, torch.int32, torch.int64):
        raise ConfigError(f"accum_dtype must be None, torch.int32 or torch.int64, got {accum_dtype}")
    xc = _centered(q_x, z_x, torch.int64)  # int64: no wrap while bounding, whatever the code dtype
    ec = None if q_e is None else _centered(q_e, z_e, torch.int64)
    bound = _bound(xc, ec, dst, num_nodes)
    if bound > INT64_MAX:
        raise ConfigError(f"the aggregation can reach {bound}, beyond int64; use narrower codes")
    fits32 = bound <= INT32_MAX
    if accum_dtype == torch.int32 and not fits32:
        raise ConfigError(
            f"int32 accumulation could overflow: the bound max_i Σ_j |q_e - z_e| · max |q_x - z_x| is {bound} "
            f"> 2^31 - 1; use accum_dtype=None or torch.int64"
        )
    dtype = accum_dtype or (torch.int32 if fits32 else torch.int64)
    # every per-edge product is <= bound, so it is computed in the accumulator dtype without wrapping too
    xc = xc.to(dtype)
    msg = xc.index_select(0, src)  # [E, C]
    if ec is not None:
        msg = msg * ec.to(dtype).view(-1, 1)
    acc = torch.zeros((num_nodes, q_x.size(1)), dtype=dtype, device=q_x.device)
    return acc.index_add_(0, dst, msg)


def integer_aggregate(
    q_x: Tensor,
    x_scale: Tensor | float,
    x_zero_point: Tensor | float | None,
    edge_index: Tensor,
    num_nodes: int,
    q_e: Tensor | None = None,
    e_scale: Tensor | float | None = None,
    e_zero_point: Tensor | float | None = None,
    reduce: str = "sum",
    *,
    return_accumulator: bool = False,
    accum_dtype: torch.dtype | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``Σ_j e_ij x_j`` (or its mean over the in-edges) from integer codes, summed in integers.

    ``out[i] = s_e · s_x · acc[i]`` with ``acc`` from :func:`integer_accumulate` (one float rescale), and
    for ``reduce="mean"`` divided by the in-degree of i (targets without edges give 0, never NaN).

    Args:
        q_x, x_zero_point, edge_index, num_nodes, q_e, e_zero_point, accum_dtype: see
            :func:`integer_accumulate`.
        x_scale: positive scale per tensor or per channel (same shapes as the zero-point), as returned by
            :meth:`qgnn.quant.Quantizer.quant_int` for a per-tensor or per-channel (last axis) quantizer.
        e_scale: positive per-tensor scale of ``q_e``; required with ``q_e``, refused without it.
        reduce: ``"sum"`` or ``"mean"``.
        return_accumulator: also return the integer accumulator (for the integer runtime / export).

    Returns:
        float tensor ``[num_nodes, C]`` in the scales' dtype (float32 for float32 scales or numbers), or
        ``(out, acc)`` with ``return_accumulator=True``.
    """
    if reduce not in REDUCTIONS:
        raise ConfigError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
    q_x = _check_codes("q_x", q_x, 2)
    s_x = _check_scale("x_scale", _as_param("x_scale", x_scale, q_x, q_x.size(1), False))
    if q_e is None:
        if e_scale is not None:
            raise ConfigError("e_scale was given without q_e (q_e=None means an unweighted 0/1 adjacency)")
        s = s_x
    else:
        if e_scale is None:
            raise ConfigError("q_e needs its e_scale (per tensor)")
        s_e = _check_scale("e_scale", _as_param("e_scale", e_scale, q_x, None, False))
        s = s_e * s_x  # the single combined rescale factor, [1] or [C]
    acc = integer_accumulate(q_x, x_zero_point, edge_index, num_nodes, q_e, e_zero_point, accum_dtype=accum_dtype)
    out = acc.to(s.dtype) * s.view(1, -1)
    if reduce == "mean":
        deg = torch.bincount(edge_index[1].long(), minlength=int(num_nodes)).clamp_(min=1)
        out = out / deg.to(out.dtype).view(-1, 1)
    return (out, acc) if return_accumulator else out
