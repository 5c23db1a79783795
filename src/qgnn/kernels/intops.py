"""The integer runtime's kernel dispatcher: one entry point per kernel, a plain-torch reference beside each
fast backend, and a reason for every choice (``qgnn info`` prints :func:`runtime_backends`).

* :func:`rowwise_aggregate`: the neighbourhood sum / mean over packed rows
  (:mod:`qgnn.kernels.reference.rowwise`). Backends: ``"fbgemm"`` (rowwise embedding bag,
  :mod:`qgnn.kernels.cpu.fbgemm`), ``"reference"``. ``"auto"``: fbgemm on CPU tensors where the op exists.
* :func:`qlinear`: the quantized linear layer on stored codes (:mod:`qgnn.kernels.reference.qlinear`), its
  weight prepared once as a :class:`PreparedLinear`. Backends: ``"fbgemm"`` (``quantized::linear``, the
  requantisation to the next grid fused; one scale per activation tensor), ``"int_mm"``
  (``torch._int_mm``, int8 x int8 -> int32, with Jacob et al.'s zero-point corrections; any activation
  scale), ``"float"`` (float32 GEMMs on the centred codes, exact: :func:`exact_mm`), ``"reference"``.
  ``"auto"``: fbgemm where it applies and is exact for the layer's codes on this CPU
  (:func:`~qgnn.kernels.cpu.fbgemm.fbgemm_pairs_exact`), else the exact fallback, int_mm or float, whichever is
  faster here (:func:`exact_backend`; both give the same accumulators); with float output, the faster of fbgemm
  and that fallback for the shape, measured on its first call (:class:`ShapeChoice`).

Measured on one thread of the project's machine (``benchmarks/runtime.py --part kernels``, codes in, codes of
the next grid out): fbgemm's linear takes 0.50x the FP32 ``F.linear`` time at (262,144 x 128) @ (128 x 256) and
0.48x at (262,144 x 256) @ (256 x 40); the ``_int_mm`` path 3.0x and 1.5x (its zero-point corrections and
requantisation are separate passes), so it serves only per-row scales; the rowwise bag 0.20-0.37x torch's
FP32 CSR SpMM on sbm-1m's graph at 40-256 channels and 8 / 4 / 2 bits. On a CPU without AVX512-VNNI (an AVX2
EPYC, one thread) ``torch._int_mm`` is a plain loop, 30x sgemm's time at (4,096 x 128) @ (128 x 256) (ad hoc),
and fbgemm saturates on full-range 8-bit codes: there 8-bit layers run the exact float32 GEMM and 4-bit ones
fbgemm.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import Tensor

from qgnn.errors import ConfigError

from .cpu.fbgemm import (
    CodeBuffer,
    fbgemm_available,
    fbgemm_linear_exact,
    fbgemm_pairs_exact,
    prepack_linear,
    qlinear_fbgemm,
    qlinear_fbgemm_float,
    rowwise_aggregate_fbgemm,
)
from .reference import FLOAT_EXACT
from .reference.qlinear import OutGrid, check_qlinear, qlinear_reference
from .reference.rowwise import MODES, check_csr, rowwise_aggregate_reference, unpack_rows

__all__ = ["AGGREGATE_BACKENDS", "FLOAT_OUT_CHOICE", "LINEAR_BACKENDS", "SMALL_ROWS", "CodeBuffer", "PreparedLinear",
           "ShapeChoice", "aggregate_backend", "exact_backend", "exact_mm", "float_exact_mm", "int_mm_fast",
           "linear_backend", "qlinear", "qlinear_from_float", "rowwise_aggregate", "rowwise_values",
           "runtime_backends"]

AGGREGATE_BACKENDS = ("auto", "fbgemm", "reference")
LINEAR_BACKENDS = ("auto", "fbgemm", "int_mm", "float", "reference")


def _check(name: str, valid: tuple[str, ...], what: str) -> None:
    if name not in valid:
        raise ConfigError(f"unknown {what} backend {name!r}; valid: {', '.join(valid)}")


def aggregate_backend(rows: Tensor, backend: str = "auto") -> tuple[str, str]:
    """(backend, why) for :func:`rowwise_aggregate` on ``rows``."""
    _check(backend, AGGREGATE_BACKENDS, "aggregation")
    ok, why = fbgemm_available()
    if backend == "fbgemm":
        if not ok or rows.device.type != "cpu":
            raise ConfigError(f"aggregation backend 'fbgemm' needs CPU tensors and fbgemm ({why})")
        return "fbgemm", "requested"
    if backend == "reference":
        return "reference", "requested"
    if rows.device.type != "cpu":
        return "reference", f"rows on {rows.device.type}; fbgemm's kernels run on the CPU"
    return ("fbgemm", "fbgemm rowwise embedding bag") if ok else ("reference", why)


def rowwise_aggregate(rows: Tensor, bits: int, channels: int, indptr: Tensor, indices: Tensor,
                      weights: Tensor | None = None, mode: str = "sum", backend: str = "auto",
                      checked: bool = False) -> Tensor:
    """``out[i] = Σ_k w_k (scale_j u_j + bias_j)`` over CSR row i (mean: / count), float32 [M, C].
    ``checked``: the caller built the CSR and checked its indices once (``qgnn.export.tables.CSRPlan``), so
    the per-call check before fbgemm, which trusts its offsets, is skipped (a pass over the indices per chunk)."""
    if mode not in MODES:
        raise ConfigError(f"unknown aggregation mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "mean" and weights is not None:
        raise ConfigError("a mean aggregation takes no edge weights")
    name, _ = aggregate_backend(rows, backend)
    if name != "reference" and not checked:  # fbgemm trusts its offsets: a malformed CSR gives wrong sums
        check_csr(indptr, indices, weights, rows.size(0))
    if name == "reference":
        return rowwise_aggregate_reference(rows, bits, channels, indptr, indices, weights, mode)
    m = indptr.numel() - 1
    if indices.numel() == 0 or channels == 0:
        return torch.zeros((m, channels), dtype=torch.float32)
    return rowwise_aggregate_fbgemm(rows, bits, channels, indptr, indices, weights, mode)


def rowwise_values(rows: Tensor, bits: int, channels: int, start: int, end: int, backend: str = "auto") -> Tensor:
    """The values ``scale_j · u_j + bias_j`` of rows ``start .. end`` of a fused table, float32 [rows, C]:
    fbgemm's embedding bag with one row per bag (one vectorised kernel instead of several torch passes to
    unpack sub-byte rows), or the reference's decode."""
    name, _ = aggregate_backend(rows, backend)
    if name == "reference" or end <= start:
        u, scale, bias = unpack_rows(rows[start:end], bits, channels)
        return u.to(torch.float32).mul_(scale.view(-1, 1)).add_(bias.view(-1, 1))
    idx = torch.arange(start, end, dtype=torch.int32)
    ptr = torch.arange(end - start + 1, dtype=torch.int32)
    return rowwise_aggregate_fbgemm(rows, bits, channels, ptr, idx, None, "sum")


class PreparedLinear:
    """A quantized weight prepared once for :func:`qlinear`: int8 codes ``w`` [O, K], zero-point and scale
    (one, or one per output channel), float bias; fbgemm's packed form and ``_int_mm``'s transposed codes are
    built on first use."""

    def __init__(self, w: Tensor, zero: Tensor, scale: Tensor, bias: Tensor | None = None):
        if w.dtype != torch.int8 or w.dim() != 2:
            raise ConfigError(f"PreparedLinear needs int8 codes [O, K], got {w.dtype} {tuple(w.shape)}")
        self.w = w.contiguous()
        self.out_features, self.in_features = w.shape
        self.zero = zero.to(torch.int32).reshape(-1) if zero.numel() > 1 else zero.to(torch.int32).reshape(())
        self.scale = scale.to(torch.float32).reshape(-1) if scale.numel() > 1 else scale.to(torch.float32).reshape(())
        self.bias = None if bias is None else bias.to(torch.float32)
        self._packed = None
        self._wt = None
        self.rowsum = self.w.to(torch.int32).sum(1)
        self.zero_free = self.zero.numel() == 1 and int(self.zero) == 0  # symmetric weights: no z_w terms
        # per activation grid, the [O] vectors a small graph's calls would otherwise rebuild each call (one
        # torch op each: several µs, against a few µs for the whole GEMM of a [345, 64] batch)
        self._out_scale: dict[float, Tensor] = {}
        self._zero_term: dict[int, Tensor] = {}
        self._centred: tuple[Tensor, int] | None = None
        self._w_range = (int(self.w.min()), int(self.w.max())) if self.w.numel() else (0, 0)

    def fbgemm_exact(self, u_max: int) -> bool:
        """Whether fbgemm's GEMM is exact on activation codes ``0 .. u_max`` against these weight codes here
        (:func:`~qgnn.kernels.cpu.fbgemm.fbgemm_pairs_exact`)."""
        return fbgemm_pairs_exact(u_max, *self._w_range)

    def out_scale(self, x_scale: float) -> Tensor:
        """``s_x · s_w`` (scalar or [O]) for one activation scale."""
        v = self._out_scale.get(x_scale)
        if v is None:
            v = self._out_scale[x_scale] = torch.tensor(x_scale, dtype=torch.float32) * self.scale
        return v

    def centred_float(self) -> tuple[Tensor, int]:
        """(``(w − z_w)ᵀ`` as float32 [K, O], contiguous; its largest magnitude): the exact-float GEMM's operand,
        built once."""
        if self._centred is None:
            z = self.zero.view(-1, 1) if self.zero.dim() else self.zero
            c = self.w.to(torch.int32) - z
            self._centred = (c.to(torch.float32).t().contiguous(), int(c.abs().max()) if c.numel() else 0)
        return self._centred

    def zero_term(self, za: int) -> Tensor:
        """``za · Σ_k w_ok`` (int32 [O]) for one integer activation offset ``za``."""
        v = self._zero_term.get(za)
        if v is None:
            v = self._zero_term[za] = self.rowsum * za
        return v

    def packed(self):
        if self._packed is None:
            self._packed = prepack_linear(self.w, self.zero, self.scale, self.bias)
        return self._packed

    def transposed(self) -> Tensor:
        if self._wt is None:
            self._wt = self.w.t().contiguous()
        return self._wt

    def nbytes(self) -> int:
        return self.w.numel() + 4 * (self.scale.numel() + self.zero.numel())


@functools.cache
def int_mm_fast() -> tuple[bool, str]:
    """(whether ``torch._int_mm`` is at least as fast here as the exact float32 GEMM it stands beside, why):
    timed once per process at (512 x 256) @ (256 x 256), the best of 3 calls each after an untimed one. Where
    the CPU lacks AVX512-VNNI, torch's kernel is a plain loop (30x sgemm's time on an AVX2 EPYC). Both give the
    same exact accumulators and the same float ops after them, so the choice changes the time, never a
    result."""
    if not hasattr(torch, "_int_mm"):  # pragma: no cover - every supported torch has it
        return False, "this torch has no torch._int_mm"
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (512, 256), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (256, 256), generator=gen, dtype=torch.int8)
    af, bf = a.to(torch.float32), b.to(torch.float32)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_int, t_float = best(lambda: torch._int_mm(a, b)), best(lambda: torch.mm(af, bf))
    ratio = t_int / max(t_float, 1e-9)
    if ratio <= 1.0:
        return True, f"torch._int_mm ({ratio:.2f}x the float32 GEMM's time here)"
    return False, f"exact float32 GEMMs on the centred codes (torch._int_mm takes {ratio:.1f}x their time here)"


def exact_backend() -> tuple[str, str]:
    """(``"int_mm"`` or ``"float"``, why): the exact GEMM for what fbgemm cannot take (per-row activation scales,
    codes that would saturate its int16 pair sums), whichever is faster here (:func:`int_mm_fast`)."""
    fast, why = int_mm_fast()
    return ("int_mm" if fast else "float"), why


def linear_backend(per_row: bool, backend: str = "auto", lin: PreparedLinear | None = None,
                   u_max: int = 255) -> tuple[str, str]:
    """(backend, why) for :func:`qlinear`; ``per_row``: the activations have one scale per row; ``lin`` and
    ``u_max``: the layer's weights and largest activation code, where fbgemm is exact only for some codes
    (:func:`~qgnn.kernels.cpu.fbgemm.fbgemm_pairs_exact`)."""
    _check(backend, LINEAR_BACKENDS, "linear")
    if backend in ("reference", "int_mm", "float"):
        return backend, "requested"
    exact, why = fbgemm_linear_exact()
    layer_ok = exact or (lin is not None and lin.fbgemm_exact(u_max))
    if backend == "fbgemm":
        if per_row:
            raise ConfigError("linear backend 'fbgemm' needs one activation scale per tensor")
        if not layer_ok:
            raise ConfigError(f"linear backend 'fbgemm' is unusable here: {why}")
        return "fbgemm", "requested"
    if per_row:
        name, fallback = exact_backend()
        return name, f"one activation scale per row (fbgemm takes one per tensor): {fallback}"
    if exact:
        return "fbgemm", why
    if layer_ok:
        return "fbgemm", "this layer's codes cannot saturate fbgemm's int16 pair sums"
    name, fallback = exact_backend()
    return name, f"{why}: {fallback}"


def _int_mm_linear(u: Tensor, x_zero, x_scale, lin: PreparedLinear, out: OutGrid | None) -> Tensor:
    """``torch._int_mm`` on ``u − 128`` (int8) with the zero-point expansion of the reference's ``acc``."""
    a = torch.bitwise_xor(u, 128).view(torch.int8)  # u − 128, as int8, in one pass
    za = torch.as_tensor(x_zero, dtype=torch.int32)
    za = (za.view(-1, 1) if za.numel() > 1 else za.reshape(())) - 128
    return _int_mm_shifted(a, za, x_scale, lin, out)


def _int_mm_shifted(a: Tensor, za, x_scale, lin: PreparedLinear, out: OutGrid | None) -> Tensor:
    """The reference's result from shifted codes ``a = u − z_x + za`` (int8; ``za``: an int, or an int32 scalar
    or [M, 1] tensor): ``acc = Σ_k (a − za)(w − z_w) = a·w − za Σ_k w − z_w Σ_k a + K za z_w`` by
    ``torch._int_mm`` on ``a`` and the rank-one corrections (Jacob et al., eq. 7; none for ``za = 0`` and
    symmetric weights)."""
    acc = torch._int_mm(a, lin.transposed())
    plain = isinstance(za, int)
    if not plain or za != 0:
        acc -= lin.zero_term(za) if plain else za * lin.rowsum.view(1, -1)
    if not lin.zero_free:
        zw = lin.zero.view(1, -1) if lin.zero.dim() else lin.zero
        acc -= a.sum(1, dtype=torch.int32).view(-1, 1) * zw
        if not plain or za != 0:
            acc += lin.in_features * za * zw
    return _finish(acc, x_scale, lin, out)


def _finish(acc: Tensor, x_scale, lin: PreparedLinear, out: OutGrid | None) -> Tensor:
    """``acc · s_x s_w + bias`` from exact accumulators (int32, or float32 holding the integers the reference's
    ``acc.to(float32)`` gives), then the output grid's codes where ``out`` is given: the int_mm and float paths'
    common end, so the two give the same values."""
    if isinstance(x_scale, float):
        s = lin.out_scale(x_scale)
    else:
        sx = torch.as_tensor(x_scale, dtype=torch.float32)
        s = (sx.view(-1, 1) if sx.numel() > 1 else sx.reshape(())) * (lin.scale.view(1, -1) if lin.scale.dim()
                                                                        else lin.scale)
    # int32 · float32 -> float32 in one pass: the reference's acc.to(float32) * s, value for value
    y = torch.mul(acc, s)
    if lin.bias is not None:
        y += lin.bias
    if out is None:
        return y
    s_y, z_y, u_max = out
    return y.div_(s_y).round_().add_(z_y).clamp_(0, u_max).to(torch.uint8)


def _int_mm_from_float(x: Tensor, x_zero: int, x_scale: float, u_max: int, lin: PreparedLinear,
                       scratch: bool = False) -> Tensor:
    """Float rows through :func:`_int_mm_shifted`, their codes ``u = clamp(round(x / s) + z, 0, u_max)`` formed in
    the quantizer's own passes (``x / s``, round half to even) and stored shifted as int8: centred, ``u − z``,
    where that range fits (any 4-bit grid; an 8-bit grid with z = 128), else ``u − 128`` (adding an integer
    after the rounding is exact). No unsigned code tensor in between."""
    t = x.div_(x_scale) if scratch else torch.div(x, x_scale)
    if x_zero <= 128 and u_max - x_zero <= 127:
        a = t.round_().clamp_(-x_zero, u_max - x_zero).to(torch.int8)
        return _int_mm_shifted(a, 0, x_scale, lin, None)
    a = t.round_().add_(x_zero - 128).clamp_(-128, u_max - 128).to(torch.int8)
    return _int_mm_shifted(a, x_zero - 128, x_scale, lin, None)


# A layer of at most this many rows (a small graph, a batch of small graphs, a graph model's pooled rows) runs its
# float-input GEMMs as exact float32 GEMMs on the centred codes (_float_exact_from_float): fbgemm's call costs
# about 40 µs whatever the shape on one thread, more than sgemm's whole product at these sizes (MUTAG's batches of
# ~350 nodes); from about a thousand rows fbgemm is faster (benchmarks/runtime.py --part gemm). Decided per layer
# (its rows), not per chunk, so the chunk size changes no result.
SMALL_ROWS = 1024


def float_exact_mm(c, wt: Tensor, bound: int) -> Tensor:
    """``c @ wt`` for integer-valued float32 operands [M, K] and [K, O] whose products are at most ``bound`` in
    magnitude, exactly: float32 GEMMs over blocks of at most ``2^24 / bound`` columns, whose partial sums are
    integers within 2^24 whatever the summation order, summed in float64 where there is more than one block
    (exact to 2^53) and rounded once to float32, as an int32 sum's ``.to(float32)`` rounds (float64 blocks
    where float32 matmuls may run at reduced precision: TF32 / bf16). ``c``: the float32 tensor, or a function
    ``(start, end) -> float32 [M, end − start]`` giving its columns block by block (codes converted per
    block: no float copy of all K columns at once)."""
    cols = c if callable(c) else (lambda start, end: c[:, start:end])
    k = wt.size(0)
    if torch.get_float32_matmul_precision() != "highest":
        acc = None
        for start in range(0, max(k, 1), 512):
            part = torch.mm(cols(start, start + 512).to(torch.float64), wt[start:start + 512].to(torch.float64))
            acc = part if acc is None else acc.add_(part)
        return acc.to(torch.float32)
    per = max(1, FLOAT_EXACT // max(1, bound))
    if k <= per:
        return torch.mm(cols(0, k), wt)
    acc = torch.mm(cols(0, per), wt[:per]).to(torch.float64)
    for start in range(per, k, per):
        acc += torch.mm(cols(start, start + per), wt[start:start + per])
    return acc.to(torch.float32)


def exact_mm(c: Tensor, lin: PreparedLinear, c_max: int) -> Tensor:
    """``acc = c (w − z_w)ᵀ`` for centred codes ``c`` (float32 [M, K], integers, ``|c| <= c_max``), exactly, by
    :func:`float_exact_mm` (blocks of ``2^24 / (c_max · max|w − z_w|)`` columns): the reference's
    ``acc.to(float32)``."""
    wt, w_max = lin.centred_float()
    return float_exact_mm(c, wt, c_max * w_max)


def _float_exact_from_float(x: Tensor, x_zero: int, x_scale: float, lin: PreparedLinear,
                            u_max: int, scratch: bool = False) -> Tensor:
    """The reference's result from float rows: the centred codes ``c = clamp(round(x / s), −z, u_max − z)`` (the
    quantizer's passes; ``u − z = c``), ``acc = c (w − z_w)ᵀ`` by :func:`exact_mm`, then ``acc · s_x s_w + bias``
    as the reference computes it: bit for bit its value."""
    t = x.div_(x_scale) if scratch else torch.div(x, x_scale)
    c = t.round_().clamp_(-x_zero, u_max - x_zero)
    return _finish(exact_mm(c, lin, max(x_zero, u_max - x_zero)), x_scale, lin, None)


def _float_exact_codes(u: Tensor, x_zero, x_scale, lin: PreparedLinear, out: OutGrid | None,
                       u_max: int) -> Tensor:
    """The reference's result from codes ``u`` (one zero-point, or one per row): ``c = u − z`` in float32, converted
    one block of columns at a time (a float copy of all of a wide input, CiteSeer's 3,703 columns, would
    quadruple the bytes of the codes), through :func:`float_exact_mm`, then the common end (:func:`_finish`)."""
    z = torch.as_tensor(x_zero)
    if z.numel() > 1:
        z = z.reshape(-1)
        c_max, zc = max(int(z.max()), u_max - int(z.min())), z.view(-1, 1).to(torch.float32)
    else:
        z = int(z)
        c_max, zc = max(z, u_max - z), (float(z) if z else None)

    def cols(start: int, end: int) -> Tensor:
        c = u[:, start:end].to(torch.float32)
        return c if zc is None else c.sub_(zc)

    wt, w_max = lin.centred_float()
    return _finish(float_exact_mm(cols, wt, max(c_max, 1) * w_max), x_scale, lin, out)


def qlinear(u: Tensor, x_zero, x_scale, lin: PreparedLinear, out: OutGrid | None = None,
            backend: str = "auto", qx: Tensor | None = None, u_max: int = 255) -> Tensor:
    """The quantized linear layer (:mod:`qgnn.kernels.reference.qlinear`) by the backend
    :func:`linear_backend` picks: float32 [M, O], or uint8 codes on the output grid ``out``. ``qx``: ``u`` as a
    quint8 tensor of one scale / zero-point (a :class:`CodeBuffer`'s view), read by fbgemm without a copy;
    ``u_max``: the largest code ``u`` can hold (its grid's span)."""
    check_qlinear(u, lin.w)
    per_row = any(torch.is_tensor(v) and v.numel() > 1 for v in (x_scale, x_zero))
    name, _ = linear_backend(per_row, backend, lin, u_max)
    if u.size(0) == 0:
        return torch.empty((0, lin.out_features), dtype=torch.float32 if out is None else torch.uint8)
    if name == "fbgemm" and out is None and backend == "auto":  # float out: the faster for this shape
        return FLOAT_OUT_CHOICE.run(u, int(x_zero), float(x_scale), lin, qx, u_max)
    return _codes_call(name, u, x_zero, x_scale, lin, out, qx, u_max)


def _codes_call(name: str, u: Tensor, x_zero, x_scale, lin: PreparedLinear, out: OutGrid | None,
                qx: Tensor | None, u_max: int) -> Tensor:
    if name == "reference":
        return qlinear_reference(u, x_zero, x_scale, lin.w, lin.zero, lin.scale, lin.bias, out)
    if name == "int_mm":
        return _int_mm_linear(u, x_zero, x_scale, lin, out)
    if name == "float":
        return _float_exact_codes(u, x_zero, x_scale, lin, out, u_max)
    return qlinear_fbgemm(u.contiguous(), int(x_zero), float(x_scale), lin.packed(), out, qx)


class ShapeChoice:
    """The faster backend of :func:`qlinear` with float32 output, per shape, measured on first use.

    Codes in, float out: fbgemm's kernel takes float input, so its path dequantizes the codes first (a float
    copy of the input), where ``torch._int_mm`` reads the codes (or, where it is slow, :func:`exact_backend`,
    the float path converts them once); which is faster depends on the shape
    (``benchmarks/runtime.py --part gemm``, one thread: fbgemm 0.03 against int_mm 0.05 ms at (64, 64) -> 64
    rows, int_mm 1.1 against fbgemm 5.8 ms at 4,096 rows of (1,433 -> 16)). The first call of a shape (rows
    rounded up to a power of two, K, O) runs both ``trials`` times and keeps the faster; later calls run it.
    Both give ``s_x s_w acc + bias`` of the same exact integer accumulators, so they differ by float32
    rounding of that product only. With codes out the choice stays fbgemm's: its requantisation is fused,
    and the two round exact ties differently, which a timing-dependent choice would make vary between runs."""

    def __init__(self, trials: int = 3):
        self.trials = trials
        self.table: dict[tuple[int, int, int], str] = {}

    @staticmethod
    def key(m: int, k: int, o: int) -> tuple[int, int, int]:
        return 1 << max(0, (m - 1).bit_length()), k, o

    def _call(self, name: str, u, x_zero, x_scale, lin, qx, u_max: int = 255):
        return _codes_call(name, u, x_zero, x_scale, lin, None, qx, u_max)

    def run(self, u: Tensor, x_zero: int, x_scale: float, lin: PreparedLinear, qx: Tensor | None = None,
            u_max: int = 255) -> Tensor:
        key = self.key(u.size(0), u.size(1), lin.out_features)
        name = self.table.get(key)
        if name is None:
            best = {c: self._measure(c, lambda c=c: self._call(c, u, x_zero, x_scale, lin, qx, u_max))
                    for c in ("fbgemm", exact_backend()[0])}
            name = min(best, key=lambda c: best[c][0])
            self.table[key] = name
            return best[name][1]
        return self._call(name, u, x_zero, x_scale, lin, qx, u_max)

    def _measure(self, name: str, fn) -> tuple[float, Tensor]:
        """(median seconds of ``trials`` calls of backend ``name``'s ``fn`` after an untimed one, its result):
        a kernel's first call in a process pays for its set-up (fbgemm's weight packing, first allocations)."""
        import time

        y = fn()
        times = []
        for _ in range(self.trials):
            t = time.perf_counter()
            y = fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2], y


FLOAT_OUT_CHOICE = ShapeChoice()


def qlinear_from_float(x: Tensor, x_zero: int, x_scale: float, u_max: int, lin: PreparedLinear,
                       backend: str = "auto", scratch: bool = False, on_grid: bool = False,
                       small: bool = False) -> Tensor:
    """:func:`qlinear` on the codes ``u = clamp(round(x / s) + z, 0, u_max)`` of float rows ``x`` (one scale and
    zero-point), float32 [M, O]. For fbgemm the rows are snapped to the grid in float, ``s · clamp(round(x / s),
    −z, u_max − z)`` (the quantizer's own ops: ``x / s``, round half to even, so ties go where the fake-quant
    model sends them), and the kernel (``linear_with_input_q_dq_qweight_dq_output_fp32``) quantizes those grid
    values back to exactly ``u``: no code tensor in between. For ``int_mm`` the codes are formed shifted into
    int8 in the same passes (:func:`_int_mm_from_float`). ``scratch``: ``x`` may be overwritten. ``on_grid``:
    ``x`` already holds grid values ``s · (u − z)`` (a table's decoded rows), so fbgemm's snap is skipped: the
    kernel's ``x · (1/s)`` lies within 1e-4 of the integer ``u − z`` (|u − z| <= 255) and rounds to it.
    ``small``: the caller's layer has at most :data:`SMALL_ROWS` rows; with ``"auto"`` its GEMMs are the exact
    float GEMMs on the centred codes (:func:`exact_mm`; the reference's value, bit for bit).

    No timed per-shape choice here (unlike :data:`FLOAT_OUT_CHOICE`): on a small graph's batches (MUTAG, [345, 64]
    -> 64, one thread) the int_mm path was as slow as fbgemm's ~40 µs call once its quantizing passes are
    counted, and a timing-dependent choice would make a model's outputs depend on the machine's load."""
    name = "float" if small and backend == "auto" else linear_backend(False, backend, lin, u_max)[0]
    if x.size(0) == 0 or name == "reference":
        u = torch.div(x, x_scale).round_().add_(x_zero).clamp_(0, u_max).to(torch.uint8)
        return qlinear(u, x_zero, x_scale, lin, None, backend, u_max=u_max)
    if name == "int_mm":
        return _int_mm_from_float(x, x_zero, x_scale, u_max, lin, scratch)
    if name == "float":
        return _float_exact_from_float(x, x_zero, x_scale, lin, u_max, scratch)
    if on_grid:
        return qlinear_fbgemm_float(x.contiguous(), int(x_zero), float(x_scale), lin.packed())
    y = x.div_(x_scale) if scratch else torch.div(x, x_scale)
    y.round_().clamp_(-x_zero, u_max - x_zero).mul_(x_scale)
    return qlinear_fbgemm_float(y.contiguous(), int(x_zero), float(x_scale), lin.packed())


def runtime_backends() -> dict[str, tuple[bool, str]]:
    """What the integer runtime's kernels run on here, and why (for ``qgnn info``)."""
    agg_ok, agg_why = fbgemm_available()
    lin_ok, lin_why = fbgemm_linear_exact()
    highest = torch.get_float32_matmul_precision() == "highest"
    small = (f"float rows into a layer of <= {SMALL_ROWS} rows: exact float32 GEMM on the centred codes (blocks of "
             "columns whose sums fit 2^24)" if highest else f"float rows into a layer of <= {SMALL_ROWS} rows: "
             "exact float64 GEMM on the centred codes (float32 matmul precision is not 'highest', so a float32 "
             "GEMM would not be exact)")
    linear = lin_why if lin_ok else (f"fbgemm where a layer's codes cannot saturate it (4-bit activations or "
                                     f"weights), else {exact_backend()[1]} ({lin_why})")
    return {"runtime aggregation": (True, agg_why if agg_ok else f"reference ({agg_why})"),
            "runtime linear": (True, linear),
            "runtime linear, small layers": (True, small)}
