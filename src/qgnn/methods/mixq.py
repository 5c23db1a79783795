"""MixQ-GNN search (Moustafa, Kriege & Gansterer, ICDE 2025, arXiv 2505.09361): relaxed bit-widths.

Every slot gets a :class:`~qgnn.quant.RelaxedQuantizer` over the candidate widths (default {2, 4, 8}):
weights symmetric per output channel, activations asymmetric per tensor with EMA ranges, the STE
throughout, as plain QAT. ``prepare`` adds a :class:`~qgnn.search.penalty.BitOpsPenalty` as
``model.mixq_penalty``, so the training loss becomes

    L = L_task + λ · E[BitOPs] / BitOPs_FP32

(``penalty="memory"`` for the memory proxy). After the search, ``BitAssignment.from_model`` reads the
arg-max widths and ``quantize_`` builds the fixed-bit model from them (:mod:`qgnn.search.mixq` runs both
phases). Options (``QuantConfig.options``, the fields of :class:`MixQConfig`): ``candidates``,
``weight_candidates``, ``lambda``, ``penalty``, ``temperature``, ``momentum`` (EMA of activation ranges),
``sampling`` (``softmax`` or ``gumbel``), ``init`` / ``init_logit`` (α's start: uniform, or favour one width,
e.g. ``init=8`` starts near the 8-bit model and lets the penalty lower widths). These defaults are
:class:`MixQConfig`'s (candidates {2, 4, 8}, λ = 0.1); ``qgnn train --method mixq`` and ``qgnn search`` take
the validated search recipe instead (:mod:`qgnn.recipes`: weights {2, 4, 8}, activations {4, 8}, λ = 50).

``weight_candidates`` gives the weight slots their own set (default: ``candidates``), e.g. weights
{2, 4, 8} with activations {4, 8}: a 2-bit weight matrix (one scale per output channel) costs far less
accuracy than a 2-bit activation (one scale per tensor over every node). On Cora, GCN with Degree-Quant
at W2A4 in the first layer keeps 81.2 % (5 seeds), where a 2-bit hidden activation drops to 66-69 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import nn

from qgnn.errors import ConfigError
from qgnn.methods.base import Method, register_method
from qgnn.methods.config import MethodConfig
from qgnn.quant import RelaxedQuantizer, parse_candidates


@dataclass
class MixQConfig(MethodConfig):
    """Options of the MixQ-GNN search (``--method mixq``; ``qgnn search`` builds them from its flags).
    The dict key of ``lam`` is ``"lambda"`` (a Python keyword cannot be a field name)."""

    name = "mixq"
    aliases: ClassVar[dict[str, str]] = {"lambda": "lam"}

    candidates: tuple[int, ...] = (2, 4, 8)
    """Candidate bit-widths of every slot (sorted, unique, each in 1..8)."""
    lam: float = 0.1
    """λ of L = L_task + λ · E[BitOPs] / BitOPs_FP32 (finite; < 0 rewards bits)."""
    penalty: Literal["bitops", "memory"] = "bitops"
    """What the penalty measures: expected BitOPs, or the memory proxy (stored bits)."""
    temperature: float = 1.0
    """T of softmax(α / T)."""
    momentum: float = 0.9
    """EMA momentum of the activation ranges."""
    sampling: Literal["softmax", "gumbel"] = "softmax"
    """"softmax": MixQ's deterministic mixture; "gumbel": one hard Gumbel-softmax sample per forward."""
    init: str | int = "uniform"
    """α's start: "uniform", or a candidate width to favour (its logit set to init_logit)."""
    init_logit: float = 2.0
    """The favoured width's starting logit (init = a width)."""
    weight_candidates: tuple[int, ...] | None = None
    """The weight slots' own candidate set (None: candidates)."""

    def validate(self) -> None:
        self.candidates = parse_candidates(self.candidates)
        if self.weight_candidates is not None:
            self.weight_candidates = parse_candidates(self.weight_candidates)
        if not math.isfinite(self.lam):
            raise ConfigError(f"mixq lambda must be a finite number, got {self.lam!r}")
        self.require("temperature", self.temperature > 0, "a number > 0")
        self.require("momentum", 0 <= self.momentum <= 1, "in [0, 1]")
        every = set(self.candidates) & set(self.weight_candidates or self.candidates)
        self.require("init", self.init == "uniform" or (isinstance(self.init, int) and self.init in every),
                     f"'uniform' or a width in every candidate set {sorted(every)}")


@register_method(MixQConfig)
class MixQ(Method):
    def __init__(self, config):
        super().__init__(config)
        self.candidates = self.options.candidates
        wc = self.options.weight_candidates
        self.weight_candidates = self.candidates if wc is None else wc

    def quantizer(self, slot, bits, layer, name):
        o = self.options
        if self.is_weight(slot):
            return RelaxedQuantizer(self.weight_candidates, observer="ema", observer_kwargs={"momentum": 0.0},
                                    **self._relaxed_kwargs(), **self.weight_kwargs(slot))
        return RelaxedQuantizer(self.candidates, symmetric=False, observer="ema",
                                observer_kwargs={"momentum": o.momentum}, **self._relaxed_kwargs())

    def _relaxed_kwargs(self) -> dict:
        o = self.options
        return {"temperature": o.temperature, "sampling": o.sampling, "init": o.init, "init_logit": o.init_logit}

    def prepare(self, model: nn.Module) -> None:
        from qgnn.search.penalty import BitOpsPenalty

        model.mixq_penalty = BitOpsPenalty(model, self.options.lam, self.options.penalty)
