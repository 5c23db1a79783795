"""A BiGeaR-style 1-bit LightGCN (Chen et al., KDD 2022, "Learning Binarized Graph Representations with
Multi-faceted Quantization Reinforcement for Top-K Recommendation"): the baseline GNAQ compares against.

* Layer-wise binarization: the FP32 propagation h⁽⁰⁾ = E, h⁽ᵏ⁺¹⁾ = Â h⁽ᵏ⁾ is binarized at every layer,
  q⁽ᵏ⁾_i = sign(h⁽ᵏ⁾_i) · α⁽ᵏ⁾_i with the per-node scaler α⁽ᵏ⁾_i = mean_j |h⁽ᵏ⁾_ij| (sign(0) = +1); the
  representation is the concatenation [q⁽⁰⁾, ..., q⁽ᴸ⁾] / (L + 1), so the score is
  ŷ_ui = Σ_k ⟨q⁽ᵏ⁾_u, q⁽ᵏ⁾_i⟩ / (L + 1)² (uniform layer weights).
* Gradient of sign: the derivative of sign is 2δ(x); BiGeaR approximates δ by a Gaussian, here
  ∂sign(x)/∂x ≈ 2 · N(x; 0, σ²) = 2 exp(−x² / 2σ²) / (σ √(2π)), σ = the standard deviation of that
  layer's h⁽ᵏ⁾ (detached), so the estimator does not depend on the scale of the embeddings.
* Inference distillation: the pretrained FP32 LightGCN (the teacher) ranks all items for every user
  (training items excluded); its top R = ``top_r`` (100) items S_u are pseudo-positives weighted by rank,
  L_ID = −(1/|U_B|) Σ_{u ∈ U_B} Σ_{r=1..R} w_r ln σ(ŷ_{u, S_u(r)}) over the distinct users U_B of the batch,
  w_r = e^{−r/τ} / Σ_r' e^{−r'/τ},  τ = R / 10,
  added with weight ``lambda_id`` (1.0) to BPR + L2.

Stored size: (L + 1) bit-packed sign codes per coordinate plus (L + 1) float32 scalers per node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from qgnn.methods.config import RecMethodConfig
from qgnn.models.lightgcn import LightGCN, layer_rows


@dataclass
class BiGeaRConfig(RecMethodConfig):
    """Options of the BiGeaR-style 1-bit LightGCN (``--method bigear``); formulas in the module docstring."""

    name = "bigear"

    top_r: int = 100
    """R: the teacher's top-R items per user are the distillation pseudo-positives."""
    lambda_id: float = 1.0
    """Weight of the inference-distillation loss L_ID (0: off)."""

    def validate(self) -> None:
        self.require("top_r", self.top_r >= 1, "an integer >= 1")
        self.require("lambda_id", self.lambda_id >= 0, "a number >= 0")


class _SignGauss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sigma):
        ctx.save_for_backward(x)
        ctx.sigma = float(sigma)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        s = ctx.sigma
        return g * (2.0 / (s * math.sqrt(2 * math.pi))) * torch.exp(-x * x / (2 * s * s)), None


def sign_gauss(x: Tensor) -> Tensor:
    """sign(x) (sign(0) = +1) with the Gaussian approximation of its derivative (module docstring)."""
    sigma = float(x.detach().std()) if x.numel() > 1 else 1.0
    return _SignGauss.apply(x, max(sigma, 1e-8))


class BiGeaRLightGCN(LightGCN):
    def __init__(self, num_users: int, num_items: int, *, hidden: int = 64, num_layers: int = 3, **options):
        """``options``: the fields of :class:`BiGeaRConfig` (its defaults where left out)."""
        super().__init__(num_users, num_items, hidden=hidden, num_layers=num_layers)
        o = BiGeaRConfig.from_dict(options)
        self.top_r, self.lambda_id = o.top_r, o.lambda_id
        self.teacher_top: Tensor | None = None

    def binarize(self, layers: list[Tensor]) -> Tensor:
        """[q⁽⁰⁾, ..., q⁽ᴸ⁾] / (L + 1) from the layer embeddings h⁽ᵏ⁾ (rows of any node set)."""
        return torch.cat([sign_gauss(h) * h.abs().mean(1, keepdim=True) for h in layers], 1) / (self.num_layers + 1)

    def forward(self):
        h, layers = self.embedding.weight, [self.embedding.weight]
        for _ in range(self.num_layers):
            h = self._need_graph()(h)
            layers.append(h)
        return self.split(self.binarize(layers))

    def train_forward(self, idx):
        ego = self.embedding.weight
        return ego[idx], self.binarize(layer_rows(ego, self._need_graph(), self.num_layers, idx, separate=True))

    @torch.no_grad()
    def prepare(self, task) -> None:
        """The teacher's top-R lists, from the FP32 propagation of the (pretrained) table."""
        from qgnn.train.rec_metrics import topk_ranking

        ue, ie = self.split(self.propagate(self.embedding.weight))
        r = min(self.top_r, self.num_items)
        tops = []
        for s in range(0, self.num_users, 2048):
            users = torch.arange(s, min(s + 2048, self.num_users), device=ue.device)
            tops.append(topk_ranking(ue, ie, users, [task.train_idx], r)[0])
        self.teacher_top = torch.cat(tops)
        w = torch.exp(-torch.arange(1, r + 1, dtype=ue.dtype, device=ue.device) / (r / 10))
        self.rank_weight = w / w.sum()

    def extra_nodes(self, users):
        """Each distinct user of the batch and the teacher's top-R items: [Ub, 1 + R] node ids."""
        if self.lambda_id == 0 or self.teacher_top is None:
            return None
        uu = torch.unique(users)
        return torch.cat([uu[:, None], self.teacher_top[uu] + self.num_users], 1)

    def extra_loss(self, eu, ep, en, ex):
        if ex is None:
            return 0.0
        s = (ex[:, :1, :] * ex[:, 1:, :]).sum(-1)  # [Ub, R]: the distinct users against their teacher lists
        return -self.lambda_id * (F.logsigmoid(s) * self.rank_weight).sum(1).mean()

    def storage(self) -> dict:
        from qgnn.export.packing import packed_nbytes

        layers = self.num_layers + 1
        return {"code_bytes": packed_nbytes(self.num_nodes * self.hidden * layers, 1),
                "level_bytes": 4 * self.num_nodes * layers, "bits": 1}
