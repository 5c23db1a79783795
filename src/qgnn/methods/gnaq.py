"""GNAQ: node-aware dynamic quantization of LightGCN's embedding table (Li et al., CIKM 2025, arXiv 2508.16516).

What is stored (and used at inference): per node i, b-bit codes q_i ∈ {0..2^b−1}^d and a table of 2^b
levels L_i, in FP8 (e4m3) as the paper stores its "scaling factors" (``level_dtype="fp8"``, the recipe's
default) or float32; the ego embedding is ê_ij = L_{i, q_ij} (:class:`qgnn.quant.nodewise.NodeLevelQuantizer`),
then ordinary LightGCN propagation (3 layers, layer mean). Training starts from a pretrained FP32 table E⁰.

* Node-aware initialisation: L_i = 2^b uniform levels over [min_j E⁰_ij, max_j E⁰_ij]; q = nearest level
  of E⁰, so the initial table is within Δ_i / 2 of E⁰ coordinate by coordinate (plus the levels' own
  rounding with FP8 levels).
* Dynamic scaling: the levels are parameters, trained every step with their exact gradient through the
  gather ê = L[q] (``dynamic=False`` freezes them: the "w/o dynamic scaling" ablation). With FP8 levels the
  parameter is a float32 copy; the forward uses its FP8 rounding, through which the gradient passes straight
  (:func:`qgnn.quant.nodewise.round_fp8`), and the codes are the nearest of the rounded levels.
* Relation-aware update (RAU), our reading of the paper's graph relation-aware gradient estimation. A
  training-only latent update Δ [N, d] (initialised to 0) moves the codes, but only through the graph:

      z = E⁰ + P Δ,    P = D̃^{-1/2} (A + I) D̃^{-1/2}   (first-order aggregation, self loop included)
      q = nearest-level codes of z (refreshed every step),   ê = L[q]

  In the backward pass the rounding z → ê passes the gradient on unchanged, so Δ receives
  ∂ℒ/∂Δ = Pᵀ ∂ℒ/∂ê = P ∂ℒ/∂ê: each node's update is the normalised sum of its own and its neighbours'
  quantization gradients, and a node's codes change only when the propagated update P Δ crosses a level
  boundary. The STE ablation (``estimator="ste"``) is the same with P = I (z = E⁰ + Δ, the plain
  straight-through estimator on a latent table).
* Loss: BPR + λ · LambdaLoss (``lambda_rank``, default 0.5) over each training pair's candidates (its
  positive and ``candidates`` − 1 = 7 sampled negatives; formula in :mod:`qgnn.train.rec_losses`), plus
  LightGCN's L2 on the batch rows of ê.

Stored size (``storage()``): ceil(N d b / 8) bytes of packed codes + N · 2^b levels at 1 byte (FP8) or 4
(float32). At d = 64, b = 2 that is 16 + 4 bytes a node with FP8 levels against 256 for FP32 (12.8x), 16 + 16
with float32 levels (8x). The latent E⁰ and Δ (and the float32 copy of FP8 levels) are training state only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from qgnn.errors import ConfigError
from qgnn.methods.config import RecMethodConfig
from qgnn.models.lightgcn import LightGCN, NormAdj
from qgnn.quant.nodewise import LEVEL_DTYPES, NodeLevelQuantizer
from qgnn.train.rec_losses import lambda_loss

ESTIMATORS = {"rau": "rau", "ste": "ste"}


@dataclass
class GNAQConfig(RecMethodConfig):
    """Options of GNAQ (``--method gnaq``, ``--method-opt KEY=VALUE``); the module docstring has the formulas."""

    name = "gnaq"

    dynamic: bool = True
    """Train the per-node levels (False: the "w/o dynamic scaling" ablation, ``--static-intervals``)."""
    estimator: Literal["rau", "ste"] = "rau"
    """Code updates through the graph (RAU, z = E⁰ + P Δ) or plain straight-through (STE, z = E⁰ + Δ)."""
    lambda_rank: float = 0.5
    """λ of BPR + λ · LambdaLoss (0: BPR only, ``--no-lambdaloss``)."""
    candidates: int = 8
    """Items ranked per training pair by LambdaLoss: its positive and candidates − 1 sampled negatives."""
    level_dtype: Literal["fp8", "fp32"] = "fp32"
    """Storage of the per-node levels: "fp8" (float8 e4m3, 1 byte a level, the paper's choice) or "fp32".
    The plain command takes "fp8" from its recipe (:mod:`qgnn.recipes`, validated in docs/results.md,
    "GNAQ with FP8 levels"); the field's own default stays "fp32" so that a config recorded before FP8
    levels existed (no ``level_dtype`` key) rebuilds the model it trained. FP8's 3 mantissa bits suit short
    codes: on ml-100k's pretrained table rounding moves 2-bit levels by at most 0.11 of a level step, 4-bit ones
    by up to 0.54, and at 8 bits a node's 256 levels fall on about 79 distinct FP8 values (use "fp32" there)."""

    def validate(self) -> None:
        self.require("candidates", self.candidates >= 2, "an integer >= 2")
        self.require("lambda_rank", self.lambda_rank >= 0, "a number >= 0")
        self.require("level_dtype", self.level_dtype in LEVEL_DTYPES, f"one of {', '.join(LEVEL_DTYPES)}")


class GNAQLightGCN(LightGCN):
    def __init__(self, num_users: int, num_items: int, *, hidden: int = 64, num_layers: int = 3, bits: int = 2,
                 **options):
        """``options``: the fields of :class:`GNAQConfig` (its defaults where left out)."""
        super().__init__(num_users, num_items, hidden=hidden, num_layers=num_layers)
        if bits is None:
            raise ConfigError("gnaq needs --bits (1, 2, 4 or 8)")
        o = GNAQConfig.from_dict(options)
        dynamic, estimator, lambda_rank, candidates = o.dynamic, o.estimator, o.lambda_rank, o.candidates
        del self.embedding  # the stored table is codes + levels; the latent state lives below
        n = num_users + num_items
        self.bits, self.dynamic, self.lambda_rank = int(bits), bool(dynamic), float(lambda_rank)
        self.estimator = estimator
        self.candidates = int(candidates)
        self.num_negatives = self.candidates - 1 if self.lambda_rank > 0 else 1
        self.level_dtype = o.level_dtype
        self.quant = NodeLevelQuantizer(n, self.bits, learnable=self.dynamic, level_dtype=o.level_dtype)
        self.register_buffer("e0", torch.zeros(n, hidden))
        self.register_buffer("codes", torch.zeros(n, hidden, dtype=torch.uint8))
        self.delta = nn.Parameter(torch.zeros(n, hidden))
        self.rau_adj: NormAdj | None = None

    def set_graph(self, edge_index: Tensor) -> GNAQLightGCN:
        dev = self.e0.device
        self.edge_index = edge_index.to(dev)
        self.adj = NormAdj(edge_index.cpu(), self.num_nodes).to(dev)
        self.rau_adj = NormAdj(edge_index.cpu(), self.num_nodes, self_loops=True).to(dev)
        return self

    @torch.no_grad()
    def init_from_pretrained(self, weight: Tensor) -> None:
        """Node-aware initialisation from the FP32 table (module docstring)."""
        self.e0.copy_(weight)
        self.delta.zero_()
        self.quant.initialize(self.e0)
        self.codes.copy_(self.quant.codes(self.e0))

    def latent(self) -> Tensor:
        """z = E⁰ + P Δ (RAU) or E⁰ + Δ (STE): what the codes are the nearest levels of."""
        if self.estimator == "ste":
            return self.e0 + self.delta
        if self.rau_adj is None:
            raise ConfigError("GNAQLightGCN.set_graph(edge_index) must be called first")
        return self.e0 + self.rau_adj(self.delta)

    @torch.no_grad()
    def refresh_codes(self) -> Tensor:
        self.codes.copy_(self.quant.codes(self.latent()))
        return self.codes

    def ego(self) -> Tensor:
        if not self.training:  # the stored model: codes and levels only
            return self.quant.dequantize(self.refresh_codes()).detach()
        z = self.latent()
        q = self.quant.codes(z)
        self.codes.copy_(q)
        return self.quant.dequantize(q) + (z - z.detach())  # value L[q]; gradient to L exact, to z identity

    def extra_loss(self, eu, ep, en, ex):
        if self.lambda_rank == 0:
            return 0.0
        cand = torch.cat([ep[:, None], en[:, : self.candidates - 1]], 1)
        scores = (eu[:, None, :] * cand).sum(-1)
        rel = torch.zeros_like(scores)
        rel[:, 0] = 1.0
        return self.lambda_rank * lambda_loss(scores, rel)

    def storage(self) -> dict:
        return self.quant.nbytes(self.hidden)

    @torch.no_grad()
    def export(self) -> dict[str, Tensor]:
        """Packed codes and levels (in their storage dtype) of the current model (``NodeLevelQuantizer.unpack``
        reverses it)."""
        return self.quant.export(self.refresh_codes())
