"""Full-ranking Top-K metrics for recommendation, computed in user batches.

For every user u with at least one target item (the test, or validation, interactions T_u), all items
are scored (``user_emb[u] · item_emb.T``), the user's known interactions (training items, and for the
test split also the validation items) are removed from the ranking, and the top K items R_u(K) are kept:

    Recall@K = |R_u(K) ∩ T_u| / |T_u|
    NDCG@K   = DCG / IDCG,  DCG = Σ_{r=1..K} [R_u(r) ∈ T_u] / log2(r + 1),
                            IDCG = Σ_{r=1..min(K, |T_u|)} 1 / log2(r + 1)

averaged over those users (He et al., LightGCN, SIGIR 2020; the same definitions as LightGCN-PyTorch).
An excluded item gets score −inf and is never a hit, even if K exceeds the number of remaining items.
Users are processed ``batch_users`` at a time, so the score matrix never exceeds batch_users × items.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KS = (10, 20)


class UserItemIndex:
    """Per-user sorted item lists of a set of (user, item) pairs, as CSR (ptr [U+1], items) + sorted codes."""

    def __init__(self, pairs: Tensor, num_users: int, num_items: int):
        pairs = pairs.reshape(2, -1).long()
        code = torch.unique(pairs[0] * num_items + pairs[1])  # sorted, deduplicated
        self.num_items = num_items
        self.codes = code
        self.items = code % num_items
        counts = torch.bincount(code // num_items, minlength=num_users)
        self.ptr = torch.zeros(num_users + 1, dtype=torch.long)
        self.ptr[1:] = torch.cumsum(counts, 0)
        self.counts = counts

    def rows(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(row in ``users``, item) for every pair of these users."""
        cnt = self.counts[users]
        row = torch.repeat_interleave(torch.arange(len(users)), cnt)
        start = torch.repeat_interleave(self.ptr[users], cnt)
        offs = torch.arange(int(cnt.sum())) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        return row, self.items[start + offs]

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        """Bool tensor: is (users[k], items[k]) one of the pairs (any matching shapes)."""
        if self.codes.numel() == 0:
            return torch.zeros(items.shape, dtype=torch.bool)
        c = users * self.num_items + items
        pos = torch.searchsorted(self.codes, c).clamp_(max=self.codes.numel() - 1)
        return self.codes[pos] == c


def topk_ranking(user_emb: Tensor, item_emb: Tensor, users: Tensor, exclude: list[UserItemIndex], k: int,
                 score=None) -> tuple[Tensor, Tensor]:
    """Top-k item ids and scores [len(users), k] for ``users``, excluded pairs removed (score −inf)."""
    scores = score(users) if score is not None else user_emb[users] @ item_emb.T
    for ex in exclude:
        r, i = ex.rows(users)
        scores[r, i] = -math.inf
    k = min(k, scores.size(1))
    vals, idx = torch.topk(scores, k, dim=1)
    return idx, vals


@torch.no_grad()
def rank_metrics(user_emb: Tensor, item_emb: Tensor, target: UserItemIndex, exclude: list[UserItemIndex],
                 ks=KS, batch_users: int = 2048, score=None) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users with a target item (module docstring); keys ``recall@K``, ``ndcg@K``.

    ``score(users) -> [len(users), I]`` replaces the dot product when given (BiGeaR's layer-wise scores)."""
    users_all = torch.nonzero(target.counts > 0).flatten()
    kmax = max(ks)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))
    idcg_cum = torch.cumsum(disc, 0)
    for s in range(0, len(users_all), batch_users):
        users = users_all[s: s + batch_users]
        idx, vals = topk_ranking(user_emb, item_emb, users, exclude, kmax, score)
        hits = target.contains(users[:, None].expand_as(idx), idx) & torch.isfinite(vals)
        hits = hits.double()
        n_t = target.counts[users].double()
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += float((h.sum(1) / n_t).sum())
            idcg = idcg_cum[(n_t.clamp(max=min(k, h.size(1))) - 1).long()]
            sums[f"ndcg@{k}"] += float(((h * disc[: h.size(1)]).sum(1) / idcg).sum())
    n = max(len(users_all), 1)
    return {key: v / n for key, v in sums.items()}


def rank_metrics_reference(scores: Tensor, target: dict[int, set], exclude: dict[int, set], ks=KS) -> dict:
    """Plain per-user loop over a dense score matrix [U, I]: the specification of :func:`rank_metrics`."""
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    users = [u for u in range(scores.size(0)) if target.get(u)]
    for u in users:
        cand = [i for i in range(scores.size(1)) if i not in exclude.get(u, set())]
        cand.sort(key=lambda i: (-float(scores[u, i]), i))
        for k in ks:
            top = cand[:k]
            hit = [1.0 if i in target[u] else 0.0 for i in top]
            sums[f"recall@{k}"] += sum(hit) / len(target[u])
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hit))
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(target[u]))))
            sums[f"ndcg@{k}"] += dcg / idcg
    return {key: v / max(len(users), 1) for key, v in sums.items()}
