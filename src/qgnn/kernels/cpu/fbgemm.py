"""The runtime's CPU kernels from fbgemm, as the installed torch ships them (``torch.ops.quantized``).

* :func:`rowwise_aggregate_fbgemm`: ``embedding_bag_{byte,4bit,2bit}_rowwise_offsets``, a weighted sum (or
  mean) of fused rows (:mod:`qgnn.kernels.reference.rowwise`) per CSR row, with float32 accumulation:
  recommendation systems' kernel for summing quantized embedding rows, which is exactly a GNN's
  neighbourhood sum over a CSR graph. It reads ``C`` bytes (8 bits) or ``C/2`` (4 bits) per neighbour
  instead of float32's ``4C``.
* :func:`qlinear_fbgemm`: ``quantized::linear`` (uint8 x int8 -> int32 GEMM with the requantisation to the
  next grid fused, :mod:`qgnn.kernels.reference.qlinear`) and, for a float output,
  ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``.

fbgemm on CPUs without AVX512-VNNI multiplies uint8 by int8 with ``vpmaddubsw``, whose int16 pair sums can
saturate for full-range codes (why torch's default qconfig reduces activations to 7 bits);
:func:`fbgemm_linear_exact` probes that once per process. Where it does, a layer whose codes cannot reach the
int16 limits (:func:`fbgemm_pairs_exact`: 4-bit activations or weights, 7-bit activations) still runs on
fbgemm, and the dispatcher (:mod:`qgnn.kernels.intops`) runs the others on an exact fallback.

torch 2.13 warns that quantized tensors are deprecated; the codes are wrapped as quantized tensors only for
the call (no copy), and the warning is silenced here.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import Tensor

__all__ = ["CodeBuffer", "fbgemm_available", "fbgemm_linear_exact", "fbgemm_pairs_exact", "rowwise_aggregate_fbgemm",
           "qlinear_fbgemm", "qlinear_fbgemm_float", "prepack_linear"]

_BAG_OPS = {8: "embedding_bag_byte_rowwise_offsets", 4: "embedding_bag_4bit_rowwise_offsets",
            2: "embedding_bag_2bit_rowwise_offsets"}


@contextlib.contextmanager
def _engine(quiet: bool = True):
    """fbgemm's x86 engine for the call (restored after); ``quiet``: silence torch's deprecation warnings of
    quantized tensors (their creation warns; the embedding bags and the float-input linear create none, and
    skipping ``catch_warnings`` saves microseconds that add up over a small graph's hundred calls)."""
    old = torch.backends.quantized.engine
    switch = old not in ("x86", "fbgemm")
    if switch:
        torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    try:
        if quiet:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        else:
            yield
    finally:
        if switch:
            torch.backends.quantized.engine = old


@functools.cache
def fbgemm_available() -> tuple[bool, str]:
    """(usable, why): the quantized ops exist and the fbgemm / x86 engine is compiled in."""
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        return False, f"torch has no fbgemm engine (engines: {', '.join(engines) or 'none'})"
    try:
        for name in (*_BAG_OPS.values(), "linear", "linear_prepack"):
            getattr(torch.ops.quantized, name)
    except (AttributeError, RuntimeError) as e:
        return False, f"torch.ops.quantized lacks an fbgemm op ({e})"
    return True, "fbgemm (torch.ops.quantized)"


def rowwise_aggregate_fbgemm(rows: Tensor, bits: int, channels: int, indptr: Tensor, indices: Tensor,
                             weights: Tensor | None = None, mode: str = "sum") -> Tensor:
    """fbgemm's rowwise embedding bag: the reference's signature and result (float32 [M, C])."""
    op = getattr(torch.ops.quantized, _BAG_OPS[bits])
    if indices.dtype != indptr.dtype:
        indices = indices.to(indptr.dtype)
    if weights is not None and weights.dtype != torch.float32:
        weights = weights.to(torch.float32)
    with _engine(quiet=False):
        # mode 0 (sum) always: the op's mean mode (1) does not divide by the bag sizes of an offsets CSR
        out = op(rows, indices, indptr, False, 0, False, weights, None, True)
    out = out if out.size(1) == channels else out[:, :channels]
    if mode == "mean":
        counts = (indptr[1:] - indptr[:-1]).clamp_(min=1).to(torch.float32)
        out = out.div_(counts.view(-1, 1)) if out.is_contiguous() else out / counts.view(-1, 1)
    return out


def prepack_linear(w: Tensor, w_zero: Tensor, w_scale: Tensor, bias: Tensor | None):
    """fbgemm's packed weight of int8 codes [O, K] (per tensor or per output channel), with its float bias."""
    with _engine():
        if w_scale.numel() == 1:
            qw = torch._make_per_tensor_quantized_tensor(w, float(w_scale.reshape(())), int(w_zero.reshape(())))
        else:
            z = w_zero.reshape(-1).to(torch.int64).expand(w.size(0)).contiguous()
            qw = torch._make_per_channel_quantized_tensor(w, w_scale.reshape(-1).to(torch.float64), z, 0)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.to(torch.float32))


class CodeBuffer:
    """Scratch uint8 codes [rows, cols] whose bytes are also a quint8 tensor of one scale and zero-point, so that
    a chunk's codes written in place (``u``) reach fbgemm's linear as they are (``q``):
    ``torch._make_per_tensor_quantized_tensor`` copies its input, which cost more than the GEMM itself on
    Cora's first layer (179 against 80 µs a [256, 1434] chunk, one thread). Allocated once per layer run and
    reused by its chunks; :meth:`take` gives the first ``m`` rows of both."""

    def __init__(self, rows: int, cols: int, scale: float = 1.0, zero: int = 0):
        with _engine():
            self.q = torch._empty_affine_quantized((rows, cols), scale=float(scale), zero_point=int(zero),
                                                   dtype=torch.quint8)
        self.u = _codes_of(self.q)  # the same bytes as uint8 (no copy): what the unpacking writes into

    def take(self, m: int) -> tuple[Tensor, Tensor]:
        """(uint8 [m, cols], quint8 [m, cols]): views of the same first ``m`` rows."""
        return self.u[:m], self.q[:m]


def qlinear_fbgemm(u: Tensor, x_zero: int, x_scale: float, packed, out: tuple[float, int, int] | None,
                   qx: Tensor | None = None) -> Tensor:
    """``quantized::linear`` on codes ``u`` [M, K] (one scale / zero-point): float32 [M, O] or uint8 codes on
    the output grid ``(s_y, z_y, u_max)``. ``qx``: ``u`` already as fbgemm's quint8 tensor of that scale and
    zero-point (a :class:`CodeBuffer`'s view), which saves wrapping it (a copy)."""
    with _engine():
        if qx is None or qx.q_scale() != float(x_scale) or qx.q_zero_point() != int(x_zero):
            qx = torch._make_per_tensor_quantized_tensor(u, float(x_scale), int(x_zero))
        if out is None:
            return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                qx.dequantize(), float(x_scale), int(x_zero), packed)
        s_y, z_y, u_max = out
        codes = _codes_of(torch.ops.quantized.linear(qx, packed, float(s_y), int(z_y)))
    return codes.clamp_max_(u_max) if u_max < 255 else codes


def _codes_of(q: Tensor) -> Tensor:
    """The uint8 codes of a quint8 tensor as a view of its storage (``int_repr`` copies them: 15 % of a GCN
    forward on sbm-100k)."""
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def qlinear_fbgemm_float(x: Tensor, x_zero: int, x_scale: float, packed) -> Tensor:
    """``linear_with_input_q_dq_qweight_dq_output_fp32``: float rows ``x`` quantized inside the kernel (one
    scale / zero-point, the uint8 range; the caller clamps to a narrower grid), float32 out."""
    with _engine(quiet=False):
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, float(x_scale), int(x_zero),
                                                                                 packed)


@functools.cache
def fbgemm_linear_exact() -> tuple[bool, str]:
    """Whether fbgemm's uint8 x int8 GEMM is exact here for full-range codes (no int16 saturation)."""
    ok, why = fbgemm_available()
    if not ok:
        return ok, why
    gen = torch.Generator().manual_seed(0)
    k = 256  # 255 · 128 · 256 < 2^24: the float output holds every accumulator exactly
    u = torch.cat([torch.full((8, k), 255, dtype=torch.uint8),
                   torch.randint(0, 256, (56, k), generator=gen, dtype=torch.uint8)])
    w = torch.cat([torch.full((8, k), -128, dtype=torch.int8),
                   torch.randint(-128, 128, (24, k), generator=gen, dtype=torch.int8)])
    try:
        packed = prepack_linear(w, torch.zeros(()), torch.ones(()), None)
        y = qlinear_fbgemm(u, 0, 1.0, packed, None)
    except RuntimeError as e:  # pragma: no cover - depends on the build
        return False, f"fbgemm linear failed ({e})"
    ref = (u.to(torch.int64) @ w.to(torch.int64).t()).to(torch.float32)
    if not torch.equal(y, ref):
        return False, "fbgemm's uint8 x int8 GEMM saturates on full-range codes on this CPU (no AVX512-VNNI)"
    return True, "fbgemm quantized linear, exact on full-range codes here"


INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1


def fbgemm_pairs_exact(u_max: int, w_min: int, w_max: int) -> bool:
    """Whether fbgemm's linear is exact on uint8 codes in ``0 .. u_max`` and int8 weight codes in ``w_min ..
    w_max``: everywhere it is exact for full-range codes (:func:`fbgemm_linear_exact`), else where no pair sum
    ``u_k w_k + u_(k+1) w_(k+1)`` of ``vpmaddubsw`` can leave int16: ``2 u_max w_max <= 32767`` and
    ``2 u_max w_min >= −32768``. Holds for any 4-bit activation grid (2 · 15 · 128), any activations of at
    most 7 bits against int8 weights (2 · 128 · 127 = 32,512; 2 · 128 · −128 = −32,768), and 8-bit activations
    against weights within ±64; tested against the exact product on the CPU the tests run on."""
    if fbgemm_linear_exact()[0]:
        return True
    if not fbgemm_available()[0]:
        return False
    return 2 * u_max * max(w_max, 0) <= INT16_MAX and 2 * u_max * min(w_min, 0) >= INT16_MIN
