"""Ranking losses for recommendation: BPR and LambdaLoss (the LambdaRank-weighted pairwise loss).

BPR (Rendle et al., UAI 2009):  L_BPR = mean over (u, i, j) of softplus(ŷ_uj − ŷ_ui) = −ln σ(ŷ_ui − ŷ_uj).

LambdaLoss (Burges 2010, "From RankNet to LambdaRank to LambdaMART"; Wang et al., CIKM 2018, "The LambdaLoss
Framework for Ranking Metric Optimization", its NDCG-Loss2 weighting). For a user with candidates c = 1..C
(here the positive and the sampled negatives), relevance rel_c, scores s_c and ranks r_c (1 = highest score
among the candidates; ties broken by candidate order), gains G_c = 2^rel_c − 1, discounts D(r) = 1 / log2(1 + r),
IDCG = Σ_r G_(r) D(r) over the gains sorted in decreasing order:

    |ΔNDCG_ab| = |G_a − G_b| · |D(r_a) − D(r_b)| / IDCG        (the NDCG change when a and b swap places)
    L_λ = (1 / B) Σ_users Σ_{(a, b): rel_a > rel_b} |ΔNDCG_ab| · softplus(−(s_a − s_b))

The weights are computed from detached scores (they weight the pairwise logistic loss; they are not
differentiated). A user without a relevant candidate (IDCG = 0) contributes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos: Tensor, neg: Tensor) -> Tensor:
    return F.softplus(neg - pos).mean()


def lambda_weights(scores: Tensor, rel: Tensor) -> Tensor:
    """|ΔNDCG_ab| [B, C, C] for every ordered pair with rel_a > rel_b (0 elsewhere); module docstring."""
    s = scores.detach()
    rel = rel.to(s.dtype)
    b, c = s.shape
    order = torch.sort(-s, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(1, c + 1, device=s.device).expand(b, c).contiguous())
    disc = 1.0 / torch.log2(1.0 + rank.to(s.dtype))
    gain = torch.pow(2.0, rel) - 1.0
    ideal = torch.sort(gain, dim=1, descending=True).values
    idcg = (ideal / torch.log2(torch.arange(2, c + 2, device=s.device, dtype=s.dtype))).sum(1)
    w = (gain[:, :, None] - gain[:, None, :]).abs() * (disc[:, :, None] - disc[:, None, :]).abs()
    w = w * (rel[:, :, None] > rel[:, None, :]).to(s.dtype)
    return torch.where(idcg[:, None, None] > 0, w / idcg.clamp(min=1e-12)[:, None, None], torch.zeros_like(w))


def lambda_loss(scores: Tensor, rel: Tensor) -> Tensor:
    """L_λ of the module docstring for a batch of users: scores and relevance [B, C]."""
    w = lambda_weights(scores, rel)
    diff = scores[:, :, None] - scores[:, None, :]
    return (w * F.softplus(-diff)).sum((1, 2)).mean()
