"""Node-wise level tables: every node (row) has its own 2^b quantization levels (GNAQ's node-aware quantizer).

Li et al., "A Node-Aware Dynamic Quantization Approach for Graph Collaborative Filtering" (CIKM 2025,
arXiv 2508.16516). For a table X [N, d] (one row per node) and b bits:

* initialisation (node-aware intervals): node i's interval is its own range [m_i, M_i], m_i = min_j X_ij,
  M_i = max_j X_ij, split into 2^b uniform levels  L_ik = m_i + k Δ_i,  Δ_i = (M_i − m_i) / (2^b − 1),
  k = 0 .. 2^b − 1;
* codes: one b-bit code per coordinate, the nearest level, q_ij = argmin_k |X_ij − L_ik| (ties to the
  lower level), so at initialisation |L_{i q_ij} − X_ij| <= Δ_i / 2;
* dequantisation: x̂_ij = L_{i q_ij}, differentiable in the levels (a gather), so learnable levels get
  their exact gradient (the "dynamic scaling" of GNAQ); the codes themselves carry no gradient.

Storage: the codes bit-packed (``qgnn.export.packing``), ceil(N d b / 8) bytes, plus N · 2^b levels as
float32. The levels stay a free table (they may move out of order during training); nearest-level search
sorts each row first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError
from qgnn.quant.primitives import validate_bits

LEVEL_BYTES = 4  # float32 levels


class NodeLevelQuantizer(nn.Module):
    """2^bits learnable levels per node; :meth:`codes` (nearest level) and :meth:`dequantize` (gather)."""

    def __init__(self, num_nodes: int, bits: int, learnable: bool = True):
        super().__init__()
        self.bits = validate_bits(bits)
        self.num_nodes = int(num_nodes)
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

    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        """Nearest-level codes [N, d] (uint8) of ``x`` [N, d] under each row's levels."""
        lv, perm = torch.sort(self.levels.detach(), dim=1)
        x = x.detach().to(lv.dtype).contiguous()
        hi = torch.searchsorted(lv, x).clamp_(1, self.num_levels - 1)  # lv[hi - 1] <= x <= lv[hi] (or clamped)
        lo = hi - 1
        take_hi = (torch.gather(lv, 1, hi) - x) < (x - torch.gather(lv, 1, lo))
        idx = torch.where(take_hi, hi, lo)
        return torch.gather(perm, 1, idx).to(torch.uint8)

    def dequantize(self, codes: Tensor) -> Tensor:
        """x̂_ij = L_{i, codes_ij}; differentiable in the levels."""
        return torch.gather(self.levels, 1, codes.long())

    def nbytes(self, dim: int) -> dict:
        """Bytes of the stored table: packed codes of an [N, dim] table plus the float32 levels."""
        from qgnn.export.packing import packed_nbytes

        return {"code_bytes": packed_nbytes(self.num_nodes * dim, self.bits),
                "level_bytes": LEVEL_BYTES * self.levels.numel(), "bits": self.bits}

    def export(self, codes: Tensor) -> dict[str, Tensor]:
        """The stored form: bit-packed codes (uint8 bytes) and the level table."""
        from qgnn.export.packing import pack_bits

        return {"codes": pack_bits(codes, self.bits), "levels": self.levels.detach().clone(),
                "shape": torch.tensor(list(codes.shape))}

    @staticmethod
    def unpack(stored: dict[str, Tensor], bits: int) -> tuple[Tensor, Tensor]:
        """(codes [N, d] uint8, levels) from :meth:`export`'s output."""
        from qgnn.export.packing import unpack_bits

        n, d = (int(v) for v in stored["shape"])
        return unpack_bits(stored["codes"], bits, n * d).reshape(n, d), stored["levels"]

    def extra_repr(self) -> str:
        return f"num_nodes={self.num_nodes}, bits={self.bits}, learnable={self.levels.requires_grad}"
