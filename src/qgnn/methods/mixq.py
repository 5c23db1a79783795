"""MixQ-GNN search (Moustafa, Kriege & Gansterer, ICDE 2025, arXiv 2505.09361): relaxed bit-widths.

Every slot gets a :class:`~qgnn.quant.RelaxedQuantizer` over the candidate widths (default {2, 4, 8}):
weights symmetric per output channel, activations asymmetric per tensor with EMA ranges, the STE
throughout, as plain QAT. ``prepare`` adds a :class:`~qgnn.search.penalty.BitOpsPenalty` as
``model.mixq_penalty``, so the training loss becomes

    L = L_task + λ · E[BitOPs] / BitOPs_FP32

(``penalty="memory"`` for the memory proxy). After the search, ``BitAssignment.from_model`` reads the
arg-max widths and ``quantize_`` builds the fixed-bit model from them (:mod:`qgnn.search.mixq` runs both
phases). Options (``QuantConfig.options``): ``candidates``, ``lambda``, ``penalty``, ``temperature``,
``momentum`` (EMA of activation ranges), ``sampling`` (``softmax`` or ``gumbel``), ``init`` /
``init_logit`` (α's start: uniform, or favour one width, e.g. ``init=8`` starts near the 8-bit
model and lets the penalty lower widths).
"""

from __future__ import annotations

from torch import nn

from qgnn.methods.base import Method, register_method
from qgnn.quant import RelaxedQuantizer, parse_candidates


@register_method("mixq")
class MixQ(Method):
    @classmethod
    def default_options(cls, config):
        return {**super().default_options(config), "candidates": [2, 4, 8], "lambda": 0.1, "penalty": "bitops",
                "temperature": 1.0, "momentum": 0.9, "sampling": "softmax",
                "init": "uniform", "init_logit": 2.0}

    def __init__(self, config):
        super().__init__(config)
        self.candidates = parse_candidates(self.options["candidates"])

    def quantizer(self, slot, bits, layer, name):
        o = self.options
        if self.is_weight(slot):
            return RelaxedQuantizer(self.candidates, observer="ema", observer_kwargs={"momentum": 0.0},
                                    **self._relaxed_kwargs(), **self.weight_kwargs(slot))
        return RelaxedQuantizer(self.candidates, symmetric=False, observer="ema",
                                observer_kwargs={"momentum": o["momentum"]}, **self._relaxed_kwargs())

    def _relaxed_kwargs(self) -> dict:
        o = self.options
        return {"temperature": o["temperature"], "sampling": o["sampling"], "init": o["init"],
                "init_logit": o["init_logit"]}

    def prepare(self, model: nn.Module) -> None:
        from qgnn.search.penalty import BitOpsPenalty

        model.mixq_penalty = BitOpsPenalty(model, self.options["lambda"], self.options["penalty"])
