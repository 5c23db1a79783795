"""MixQ-GNN search (Moustafa, Kriege & Gansterer, ICDE 2025, arXiv 2505.09361): relaxed bit-widths.

Every slot gets a :class:`~qgnn.quant.RelaxedQuantizer` over the candidate widths (default {2, 4, 8}):
weights symmetric per output channel, activations asymmetric per tensor with EMA ranges, the STE
throughout, as plain QAT. ``prepare`` adds a :class:`~qgnn.search.penalty.BitOpsPenalty` as
``model.mixq_penalty``, so the training loss becomes

    L = L_task + λ · E[BitOPs] / BitOPs_FP32

(``penalty="memory"`` for the memory proxy). After the search, ``BitAssignment.from_model`` reads the
arg-max widths and ``quantize_`` builds the fixed-bit model from them (:mod:`qgnn.search.mixq` runs both
phases). Options (``QuantConfig.options``): ``candidates``, ``weight_candidates``, ``lambda``,
``penalty``, ``temperature``, ``momentum`` (EMA of activation ranges), ``sampling`` (``softmax`` or
``gumbel``), ``init`` / ``init_logit`` (α's start: uniform, or favour one width, e.g. ``init=8`` starts
near the 8-bit model and lets the penalty lower widths).

``weight_candidates`` gives the weight slots their own set (default: ``candidates``), e.g. weights
{2, 4, 8} with activations {4, 8}: a 2-bit weight matrix (one scale per output channel) costs far less
accuracy than a 2-bit activation (one scale per tensor over every node). On Cora, GCN with Degree-Quant
at W2A4 in the first layer keeps 81.2 % (5 seeds), where a 2-bit hidden activation drops to 66-69 %.
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
                "init": "uniform", "init_logit": 2.0, "weight_candidates": None}

    def __init__(self, config):
        super().__init__(config)
        self.candidates = parse_candidates(self.options["candidates"])
        wc = self.options["weight_candidates"]
        self.weight_candidates = self.candidates if wc is None else parse_candidates(wc)

    def quantizer(self, slot, bits, layer, name):
        o = self.options
        if self.is_weight(slot):
            return RelaxedQuantizer(self.weight_candidates, observer="ema", observer_kwargs={"momentum": 0.0},
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
