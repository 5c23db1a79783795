"""Node-wise level tables: every node (row) has its own 2^b quantization levels (GNAQ's node-aware quantizer).

Li et al., "A Node-Aware Dynamic Quantization Approach for Graph Collaborative Filtering" (CIKM 2025,
arXiv 2508.16516). For a table X [N, d] (one row per node) and b bits:

* initialisation (node-aware intervals): node i's interval is its own range [m_i, M_i], m_i = min_j X_ij,
  M_i = max_j X_ij, split into 2^b uniform levels  L_ik = m_i + k Δ_i,  Δ_i = (M_i − m_i) / (2^b − 1),
  k = 0 .. 2^b − 1;
* stored levels: the levels as stored and used, S = fp8(L) with FP8 levels (``level_dtype="fp8"``, the
  paper's "FP8 for scaling factors"), S = L with float32 levels; L itself is the float32 training copy;
* codes: one b-bit code per coordinate, the nearest stored level, q_ij = argmin_k |X_ij − S_ik| (ties to
  the lower level), so at initialisation |S_{i q_ij} − X_ij| <= Δ_i / 2 + the FP8 rounding error of the levels;
* dequantisation: x̂_ij = S_{i q_ij}, differentiable in the levels (a gather; the FP8 rounding passes the
  gradient straight through, :func:`round_fp8`), so learnable levels get the gradient of the gather (the
  "dynamic scaling" of GNAQ); the codes themselves carry no gradient.

FP8 is e4m3 without infinities (``torch.float8_e4m3fn``: 1 sign, 4 exponent, 3 mantissa bits; largest
finite 448, smallest normal 2^-6, subnormals down to 2^-9): a level keeps a relative precision of 2^-4
(round to nearest even) in the normal range and an absolute one of 2^-10 below it, and a level beyond ±448
saturates to ±448 (:func:`to_fp8`; torch's own cast turns such values into NaN in some versions).

Storage: the codes bit-packed (``qgnn.export.packing``), ceil(N d b / 8) bytes, plus N · 2^b levels at
:data:`LEVEL_BYTES` bytes each (1 for FP8, 4 for float32). The levels stay a free table (they may move out
of order during training, and FP8 rounding may merge two of them); nearest-level search sorts each row first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError
from qgnn.quant.primitives import validate_bits

__all__ = ["FP8_DTYPE", "FP8_MAX", "LEVEL_BYTES", "LEVEL_DTYPES", "NodeLevelQuantizer", "round_fp8", "to_fp8"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
LEVEL_DTYPES = {"fp8": FP8_DTYPE, "fp32": torch.float32}  # config name -> dtype the levels are stored in
LEVEL_BYTES = {"fp8": 1, "fp32": 4}


def check_level_dtype(level_dtype: str) -> str:
    if level_dtype not in LEVEL_DTYPES:
        raise ConfigError(f"unknown level_dtype {level_dtype!r}; valid: {', '.join(LEVEL_DTYPES)}")
    return level_dtype


def to_fp8(x: Tensor) -> Tensor:
    """``x`` as ``float8_e4m3fn``: round to nearest (ties to even), saturating at ±448 (NaN stays NaN)."""
    return x.detach().clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


class _RoundFP8(torch.autograd.Function):
    # An autograd function, not x + (r − x).detach(): its value is exactly r (the sum may round away from it),
    # so the export, which stores to_fp8 of the same levels, decodes to the same bits.
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return to_fp8(x).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_fp8(x: Tensor) -> Tensor:
    """``x`` rounded to the nearest FP8 (e4m3) value (:func:`to_fp8`), in ``x``'s dtype; the gradient passes
    straight through (identity, saturated entries included: levels live far inside ±448)."""
    return _RoundFP8.apply(x)


class NodeLevelQuantizer(nn.Module):
    """2^bits learnable levels per node; :meth:`codes` (nearest level) and :meth:`dequantize` (gather).

    ``level_dtype``: "fp8" (levels stored and used as FP8, trained through :func:`round_fp8`) or "fp32"."""

    def __init__(self, num_nodes: int, bits: int, learnable: bool = True, level_dtype: str = "fp32"):
        super().__init__()
        self.bits = validate_bits(bits)
        self.num_nodes = int(num_nodes)
        self.level_dtype = check_level_dtype(level_dtype)
        self.levels = nn.Parameter(torch.zeros(self.num_nodes, 1 << self.bits), requires_grad=learnable)

    @property
    def bit_width(self) -> int:
        return self.bits

    @property
    def num_levels(self) -> int:
        return 1 << self.bits

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Levels of each row from its own min / max (module docstring)."""
        if x.dim() != 2 or x.size(0) != self.num_nodes:
            raise ConfigError(f"NodeLevelQuantizer for {self.num_nodes} nodes got a table of shape {tuple(x.shape)}")
        mn, mx = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        k = torch.arange(self.num_levels, dtype=x.dtype, device=x.device)
        self.levels.copy_(mn + k * (mx - mn) / (self.num_levels - 1))

    def step(self) -> Tensor:
        """Δ_i of uniform levels (the bound of the initial error is Δ_i / 2): (max_k L_ik − min_k L_ik) / (2^b − 1)."""
        lv = self.levels.detach()
        return (lv.max(1).values - lv.min(1).values) / (self.num_levels - 1)

    def stored_levels(self) -> Tensor:
        """S [N, 2^b] (float32): the levels as stored and used, FP8-rounded with straight-through gradient
        (``level_dtype="fp8"``) or the float32 levels themselves."""
        return round_fp8(self.levels) if self.level_dtype == "fp8" else self.levels

    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        """Nearest-level codes [N, d] (uint8) of ``x`` [N, d] under each row's stored levels."""
        lv, perm = torch.sort(self.stored_levels().detach(), dim=1)
        x = x.detach().to(lv.dtype).contiguous()
        hi = torch.searchsorted(lv, x).clamp_(1, self.num_levels - 1)  # lv[hi - 1] <= x <= lv[hi] (or clamped)
        lo = hi - 1
        take_hi = (torch.gather(lv, 1, hi) - x) < (x - torch.gather(lv, 1, lo))
        idx = torch.where(take_hi, hi, lo)
        return torch.gather(perm, 1, idx).to(torch.uint8)

    def dequantize(self, codes: Tensor) -> Tensor:
        """x̂_ij = S_{i, codes_ij}; differentiable in the levels."""
        return torch.gather(self.stored_levels(), 1, codes.long())

    def nbytes(self, dim: int) -> dict:
        """Bytes of the stored table: packed codes of an [N, dim] table, ceil(N · dim · b / 8), plus the
        N · 2^b levels at :data:`LEVEL_BYTES` each (1 byte FP8, 4 float32)."""
        from qgnn.export.packing import packed_nbytes

        return {"code_bytes": packed_nbytes(self.num_nodes * dim, self.bits),
                "level_bytes": LEVEL_BYTES[self.level_dtype] * self.levels.numel(), "bits": self.bits}

    @torch.no_grad()
    def export_levels(self) -> Tensor:
        """The levels in their storage dtype (``float8_e4m3fn`` or float32), on the CPU; decoded with
        ``.to(torch.float32)`` they are :meth:`stored_levels` bit for bit."""
        lv = self.levels.detach().cpu()
        return to_fp8(lv) if self.level_dtype == "fp8" else lv.to(torch.float32).clone()

    def export(self, codes: Tensor) -> dict[str, Tensor]:
        """The stored form: bit-packed codes (uint8 bytes) and the level table in its storage dtype."""
        from qgnn.export.packing import pack_bits

        return {"codes": pack_bits(codes, self.bits), "levels": self.export_levels(),
                "shape": torch.tensor(list(codes.shape))}

    @staticmethod
    def unpack(stored: dict[str, Tensor], bits: int) -> tuple[Tensor, Tensor]:
        """(codes [N, d] uint8, levels as float32) from :meth:`export`'s output."""
        from qgnn.export.packing import unpack_bits

        n, d = (int(v) for v in stored["shape"])
        return unpack_bits(stored["codes"], bits, n * d).reshape(n, d), stored["levels"].to(torch.float32)

    def extra_repr(self) -> str:
        return (f"num_nodes={self.num_nodes}, bits={self.bits}, learnable={self.levels.requires_grad}, "
                f"level_dtype={self.level_dtype}")
