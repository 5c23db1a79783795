"""Per-tensor uniform quantization of LightGCN's embedding table: the QAT (STE) and LSQ baselines of GNAQ.

The ego table E is quantized as one tensor before propagation, ê = Q(E), then ordinary LightGCN:

* ``qat``: :class:`qgnn.quant.UniformQuantizer`, asymmetric, range = the current table's min / max every
  step (EMA momentum 0, as qgnn's QAT for weights), straight-through gradients (Jacob et al. 2018;
  Bengio et al. 2013);
* ``lsq``: :class:`qgnn.quant.LSQQuantizer`, symmetric, learned step initialised to 2 mean|E| / sqrt(q_max)
  (Esser et al., ICLR 2020); 1 bit is the binary quantizer s · sign(E).

Started from the pretrained FP32 table when ``--pretrained`` is given (the benchmarks do, as for GNAQ).
Stored size: ceil(N d b / 8) bytes of packed codes + 8 bytes (scale and zero-point as float32).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from qgnn.errors import ConfigError
from qgnn.methods.config import RecMethodConfig
from qgnn.models.lightgcn import LightGCN
from qgnn.quant import LSQQuantizer, UniformQuantizer


@dataclass
class RecQATConfig(RecMethodConfig):
    """Options of the per-tensor QAT table baseline (``--model lightgcn --method qat``): none."""

    name = "qat"


@dataclass
class RecLSQConfig(RecMethodConfig):
    """Options of the per-tensor LSQ table baseline (``--model lightgcn --method lsq``): none."""

    name = "lsq"


_CONFIGS = {"qat": RecQATConfig, "lsq": RecLSQConfig}


class QuantTableLightGCN(LightGCN):
    def __init__(self, num_users: int, num_items: int, *, hidden: int = 64, num_layers: int = 3, bits: int = 2,
                 kind: str = "qat", **options):
        """``options``: none today (an unknown one is a ConfigError naming the valid ones)."""
        super().__init__(num_users, num_items, hidden=hidden, num_layers=num_layers)
        if kind not in _CONFIGS:
            raise ConfigError(f"unknown table quantizer {kind!r}; valid: qat, lsq")
        _CONFIGS[kind].from_dict(options)
        if bits is None:
            raise ConfigError(f"{kind} needs --bits")
        self.bits, self.kind = int(bits), kind
        if kind == "qat":
            self.quant = UniformQuantizer(self.bits, symmetric=False, observer="ema",
                                          observer_kwargs={"momentum": 0.0}, estimator="ste")
        elif kind == "lsq":
            self.quant = LSQQuantizer(self.bits, init="lsq")
        else:
            raise ConfigError(f"unknown table quantizer {kind!r}; valid: qat, lsq")

    def ego(self) -> Tensor:
        return self.quant(self.embedding.weight)

    def storage(self) -> dict:
        from qgnn.export.packing import packed_nbytes

        return {"code_bytes": packed_nbytes(self.embedding.weight.numel(), self.bits), "level_bytes": 8,
                "bits": self.bits}
