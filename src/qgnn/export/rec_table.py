"""LightGCN's quantized ego table as the runtime holds it: the file's packed codes plus levels / scale, no floats.

The ``model.table`` of a ``task = "rec"`` file (:mod:`qgnn.export.rec_format`) is kept exactly as stored:

* the codes stay one uint8 buffer of ``ceil(N d b / 8)`` bytes in the file's bit-packing layout
  (:mod:`qgnn.export.packing`: row-major, LSB first; one code per byte at 8 bits, two at 4, four at 2);
* ``node_levels`` (GNAQ): the per-node level table L [N, 2^b] as stored (``float8_e4m3fn``, 1 byte a level, or
  float32), ê_ij = float32(L[i, q_ij]);
* ``uniform`` (QAT / LSQ, one grid for the whole table): the grid (qmin, qmax, binary) and the scalar
  scale s and zero-point z, ê = (q − z) · s (binary: q · s with q ∈ {−1, +1}).

So the bytes held are the file's table bytes: ``N d b / 8`` for the codes, plus ``N 2^b`` (FP8) or ``4 N 2^b``
(float32) for GNAQ's levels (8 for QAT / LSQ's scale and zero-point). A float32 copy of the table is never
kept: :meth:`PackedTable.decode` builds one for a caller that needs it (LightGCN's propagation, which is float,
see :mod:`qgnn.export.rec`) and gives it away.

:meth:`PackedTable.decode` reproduces the fake-quant model's eval-mode ``ego()`` bit for bit: the same gather
``torch.gather(L, 1, q)`` as ``NodeLevelQuantizer.dequantize`` (FP8 levels are widened to float32 first, an
exact conversion that gives the model's FP8-rounded levels), and the same float32 operations
``(float(q) − float(z)) · s`` as :func:`qgnn.quant.primitives.dequantize` (tests compare them).

The file's codes are checked once at load (padding bits zero, codes within the grid, levels finite, scale
positive and finite, zero-point in the grid): a CheckpointError naming ``model.table``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgnn.errors import CheckpointError, ConfigError

from .packing import unpack_bits

__all__ = ["PackedTable"]

WHERE = "model.table"
_BLOCK = 1 << 14  # rows per gather block of decode()


def _scalar(t: dict, key: str, tensors: dict[str, Tensor], dtype) -> Tensor | None:
    """A per-tensor scale / zero-point, inline (a one-element list) or a named tensor; None when null."""
    v = t.get(key)
    if v is None:
        return None
    x = (tensors[v] if isinstance(v, str) else torch.tensor(v)).reshape(-1)
    if x.numel() != 1:
        raise CheckpointError(f"{WHERE}: a per-tensor {key} has one entry, got {x.numel()}")
    return x.to(dtype)


class PackedTable:
    """The packed ego table of a validated ``model.table`` descriptor (module docstring).

    Attributes: ``kind`` ("node_levels" | "uniform"), ``bits``, ``num_nodes``, ``hidden``, ``codes`` (the
    file's packed uint8 buffer), ``levels`` [N, 2^b] (GNAQ) or ``scale`` / ``zero_point`` (0-d tensors) and
    ``qmin``, ``qmax``, ``binary`` (uniform)."""

    def __init__(self, table: dict, tensors: dict[str, Tensor], num_nodes: int, hidden: int):
        self.kind, self.bits = table["kind"], int(table["bits"])
        self.num_nodes, self.hidden = num_nodes, hidden
        self.codes = tensors[table["codes"]].contiguous()
        self.levels: Tensor | None = None
        self.scale = self.zero_point = None
        self.binary = False
        if self.kind == "node_levels":
            self.levels = tensors[table["levels"]].contiguous()  # kept in the file's dtype (FP8: 1 byte a level)
            self.qmin, self.qmax = 0, (1 << self.bits) - 1
        else:
            self.qmin, self.qmax, self.binary = int(table["qmin"]), int(table["qmax"]), bool(table["binary"])
            s = _scalar(table, "scale", tensors, torch.float32)
            z = _scalar(table, "zero_point", tensors, torch.int32)
            if s is None or not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
                raise CheckpointError(f"{WHERE}: scales must be finite and positive")
            z = torch.zeros(1, dtype=torch.int32) if z is None else z
            if not self.qmin <= int(z) <= self.qmax:
                raise CheckpointError(f"{WHERE}: zero-points must lie in the grid [{self.qmin}, {self.qmax}]")
            if self.binary and int(z) != 0:
                raise CheckpointError(f"{WHERE}: binary codes have zero-point 0")
            self.scale, self.zero_point = s.reshape(()), z.reshape(())
        stored = self._unpack()  # the checks need the codes once; they are not kept unpacked
        if self.kind == "uniform":
            top = 1 if self.binary else self.qmax - self.qmin
            if stored.numel() and int(stored.max()) > top:
                raise CheckpointError(f"{WHERE}: codes beyond the grid maximum {self.qmax}")

    def _unpack(self) -> Tensor:
        """The stored unsigned codes [N, d] (uint8): level indices (GNAQ), u = q − qmin or (q + 1) / 2."""
        try:
            return unpack_bits(self.codes, self.bits, self.num_nodes * self.hidden).view(self.num_nodes, self.hidden)
        except ConfigError as e:
            raise CheckpointError(f"{WHERE}: {e}") from None

    @property
    def nbytes(self) -> int:
        """Bytes held: packed codes + levels (GNAQ) or the scalar scale and zero-point (uniform)."""
        extra = self.levels.numel() * self.levels.element_size() if self.levels is not None else 8
        return self.codes.numel() * self.codes.element_size() + extra

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor the table holds (for memory accounting and tests)."""
        out = {"codes": self.codes}
        if self.levels is not None:
            out["levels"] = self.levels
        else:
            out.update(scale=self.scale, zero_point=self.zero_point)
        return out

    def decode(self) -> Tensor:
        """The dequantized table ê [N, d] (float32, a new tensor the caller owns): the fake-quant ``ego()``."""
        u = self._unpack()
        if self.kind == "node_levels":
            # in row blocks: the int64 indices gather needs are then a block's, not a second [N, d] table
            out = torch.empty(self.num_nodes, self.hidden, dtype=torch.float32)
            for s in range(0, self.num_nodes, _BLOCK):
                lv = self.levels[s:s + _BLOCK].to(torch.float32)  # exact for FP8; gather has no FP8 kernel
                torch.gather(lv, 1, u[s:s + _BLOCK].long(), out=out[s:s + _BLOCK])
            return out
        if self.binary:
            return (u.to(torch.int16) * 2 - 1).to(torch.float32) * self.scale
        q = (u.to(torch.int16) + self.qmin).to(torch.float32)
        return (q - self.zero_point.to(torch.float32)) * self.scale
