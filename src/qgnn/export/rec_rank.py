"""Full-ranking top-K for LightGCN: int8 scoring with exact re-ranking, beside the plain float reference.

Given final embeddings e_u (users) and e_i (items), float32, the ranking of user u is the order of the scores
s_ui = ⟨e_u, e_i⟩ over every item not excluded (training items; for the test split also validation items).
:func:`topk_reference` is the specification: a float32 score block ``e_U @ e_Iᵀ`` per chunk of users, the
excluded entries set to −inf, ``torch.topk`` (``qgnn.train.rec_metrics.topk_ranking``, what ``qgnn train``
evaluates with).

:func:`topk_int8` returns the same lists from int8 codes:

1. codes (symmetric, round to nearest): per user q_u = round(e_u / s_u), s_u = max_j |e_uj| / 127; one scale for
   the item table, q_i = round(e_i / s_I), s_I = max_ij |e_ij| / 127 — so a user's order of the approximate
   scores a_ui = s_u s_I ⟨q_u, q_i⟩ is the order of the exact integers ⟨q_u, q_i⟩, and no float pass over the
   [users × items] block is needed;
2. per chunk of users, acc = q_U q_Iᵀ in int32 (``torch._int_mm``, fbgemm's int8 GEMM on CPU; exact:
   |acc| <= d · 127² < 2^31 for d < 133,000), written into one reused buffer; excluded entries set to INT32_MIN;
3. candidates: the top K' = ``candidates`` integers of each row (default 2k). ``torch.topk`` over 40k items
   costs about as much as the int8 GEMM, so it runs on group maxima: the items are split into G = 16 strided
   groups, the row maximum of each group taken (one vectorised pass), the top K' groups kept and the top K'
   of their G · K' items taken. Exact: each of the K' largest entries lies in a group whose maximum is at
   least the K'-th largest entry, and at most K' groups have that (ties: any choice is a valid top-K');
4. re-ranking: the candidates' exact float32 scores ⟨e_u, e_i⟩ and ``torch.topk`` among them;
5. a proof per user that no other item belongs in the top k. With e = s (q + δ), |δ_j| <= 1/2,

       |s_ui − a_ui| <= ε_u = s_u/2 · max_i ‖e_i‖₁ + s_I/2 · ‖e_u‖₁ + d s_u s_I / 4

   (plus float32 rounding of the re-scored dot products, γ_d ‖e_u‖₁ max|e_I|, and a 0.1 % margin). Every item
   outside the candidates has acc <= acc_(K'), the smallest selected integer (also with ties, and also after
   the group selection: an item above it in an unselected group would put the K' selected groups' maxima,
   all candidates, above it too), so s_ui <= s_u s_I acc_(K') + ε_u. When that is below the k-th re-scored score, the
   candidates hold the true top k; when acc_(K') is an excluded entry, every remaining item is a candidate.
   Users without that proof are re-ranked with a larger K' (``retry`` times more) from the same integer block,
   and those still without it by the float reference on their rows. So the lists are those of the exact
   scores; they differ from :func:`topk_reference`'s only where two scores are equal up to float32 rounding
   (the float GEMM and the re-scoring sum in another order).

The statistics (users proved at each stage) come back in ``stats`` so that a benchmark can say how often the
fallback ran.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qgnn.errors import ConfigError
from qgnn.train.rec_metrics import UserItemIndex, topk_ranking

__all__ = ["Int8Items", "topk_reference", "topk_int8", "metrics_from_topk", "mask_pairs", "INT32_MIN", "GROUP"]

INT32_MIN = torch.iinfo(torch.int32).min
QMAX = 127
GROUP = 16  # items per group maximum (step 3); a multiple of 8 keeps the padded table aligned
_EPS32 = 2.0 ** -24


def _codes(x: Tensor, scale: Tensor) -> Tensor:
    return torch.round(x / scale).clamp_(-QMAX, QMAX).to(torch.int8)


def _row_scale(x: Tensor) -> Tensor:
    s = x.abs().amax(1, keepdim=True) / QMAX
    return torch.where(s > 0, s, torch.ones_like(s))


class Int8Items:
    """The int8 scoring state of one set of final embeddings (module docstring, step 1).

    ``codes`` [I_pad, d] int8 (items padded with zero rows to a multiple of ``GROUP``), ``scale`` the item scale
    s_I, ``l1_max`` = max_i ‖e_i‖₁, ``abs_max`` = max |e_I|; ``emb`` the float32 item table kept for re-scoring."""

    def __init__(self, item_emb: Tensor):
        if item_emb.dim() != 2 or item_emb.dtype != torch.float32:
            raise ConfigError(f"item embeddings must be a float32 [items, d] tensor, got {tuple(item_emb.shape)} "
                              f"{item_emb.dtype}")
        self.emb = item_emb
        self.num_items, self.dim = item_emb.shape
        self.abs_max = float(item_emb.abs().max()) if item_emb.numel() else 0.0
        self.scale = torch.tensor(self.abs_max / QMAX if self.abs_max > 0 else 1.0, dtype=torch.float32)
        self.l1_max = float(item_emb.abs().sum(1).max()) if item_emb.numel() else 0.0
        pad = (-self.num_items) % GROUP
        self.codes = torch.zeros(self.num_items + pad, self.dim, dtype=torch.int8)
        self.codes[: self.num_items] = _codes(item_emb, self.scale)

    @property
    def padded(self) -> int:
        return self.codes.size(0)


def mask_pairs(block: Tensor, users: Tensor, exclude: list[UserItemIndex], value) -> None:
    """Set ``block[r, i] = value`` for every excluded pair (users[r], i) (in place)."""
    for ex in exclude:
        r, i = ex.rows(users)
        block[r, i] = value


def topk_reference(user_emb: Tensor, item_emb: Tensor, users: Tensor, exclude: list[UserItemIndex], k: int,
                   chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Top-k item ids and float32 scores [len(users), k] (excluded: −inf), float32 GEMM per chunk of users."""
    ids, vals = [], []
    for s in range(0, len(users), chunk):
        i, v = topk_ranking(user_emb, item_emb, users[s:s + chunk], exclude, k)
        ids.append(i)
        vals.append(v)
    k = min(k, item_emb.size(0))
    return (torch.cat(ids) if ids else torch.zeros(0, k, dtype=torch.long),
            torch.cat(vals) if vals else torch.zeros(0, k))


class _Scratch:
    """Buffers reused by the chunks of one pass. A fresh multi-megabyte tensor per chunk costs its page faults
    (glibc maps such blocks anew on each allocation), which on CPU is comparable to the work done in it."""

    def __init__(self):
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> Tensor:
        n = math.prod(shape)
        b = self._bufs.get(name)
        if b is None or b.numel() < n or b.dtype != dtype:
            b = self._bufs[name] = torch.empty(n, dtype=dtype)
        return b[:n].view(shape)


def _select(block: Tensor, kc: int, work: _Scratch) -> tuple[Tensor, Tensor]:
    """(values, item ids) of the kc largest entries of each row of the int32 ``block`` [B, I_pad] (step 3)."""
    b, n = block.shape
    m = n // GROUP
    if m < 2 * kc:  # few groups: no saving
        return torch.topk(block, kc, dim=1)
    gmax = torch.amax(block.view(b, GROUP, m), 1, out=work.get("gmax", (b, m), block.dtype))  # group g: g + m·j
    g = torch.topk(gmax, kc, dim=1).indices  # [B, kc]
    items = torch.add(g.unsqueeze(2), m * torch.arange(GROUP), out=work.get("items", (b, kc, GROUP), g.dtype))
    items = items.view(b, -1)  # [B, kc · G]
    vals, pos = torch.topk(torch.gather(block, 1, items, out=work.get("cval", items.shape, block.dtype)), kc, dim=1)
    return vals, items.gather(1, pos)


def _rerank(ue: Tensor, items: Int8Items, cand: Tensor, cval: Tensor, k: int,
            work: _Scratch) -> tuple[Tensor, Tensor]:
    """Exact float32 scores of the candidates, and the top k among them (ids, scores)."""
    b, kc = cand.shape
    rows = work.get("rows", (b * kc, items.dim), items.emb.dtype)
    torch.index_select(items.emb, 0, cand.clamp(max=items.num_items - 1).view(-1), out=rows)
    # multiply in place and sum: several times faster than a bmm of [kc, d] @ [d, 1] matrices here
    exact = rows.view(b, kc, -1).mul_(ue.unsqueeze(1)).sum(-1)
    exact = exact.masked_fill_(cval == INT32_MIN, -math.inf)  # excluded (or padding) items
    v, p = torch.topk(exact, k, dim=1)
    return cand.gather(1, p), v


def topk_int8(user_emb: Tensor, items: Int8Items, users: Tensor, exclude: list[UserItemIndex], k: int,
              chunk: int = 256, candidates: int | None = None, retry: int = 4,
              stats: dict | None = None) -> tuple[Tensor, Tensor]:
    """The top-k lists of :func:`topk_reference` from int8 codes (module docstring): ids [len(users), k] and
    exact float32 scores. ``candidates``: K' (default 2k), ``retry``: the factor of the second K'.
    ``stats`` (a dict) receives the counts ``users``, ``proved`` (first K'), ``retried``, ``fallback``."""
    ni, d = items.num_items, items.dim
    if user_emb.dim() != 2 or user_emb.size(1) != d or user_emb.dtype != torch.float32:
        raise ConfigError(f"user embeddings must be float32 [users, {d}], got {tuple(user_emb.shape)} {user_emb.dtype}")
    k = min(k, ni)
    k1 = min(max(candidates or 2 * k, k), ni)
    k2 = min(max(k1 * retry, k1), ni)
    st = stats if stats is not None else {}
    for key in ("users", "proved", "retried", "fallback"):
        st.setdefault(key, 0)
    n = len(users)
    out_i = torch.empty(n, k, dtype=torch.long)
    out_v = torch.empty(n, k, dtype=torch.float32)
    buf = torch.empty(min(chunk, max(n, 1)), items.padded, dtype=torch.int32)  # reused: no page faults per chunk
    qi_t = items.codes.t()
    work = _Scratch()
    s_i, g = float(items.scale), d * _EPS32 / (1 - d * _EPS32)
    for s in range(0, n, chunk):
        u = users[s:s + chunk]
        ue = user_emb.index_select(0, u)
        su = _row_scale(ue)
        block = buf[: len(u)]
        torch._int_mm(_codes(ue, su), qi_t, out=block)
        block[:, ni:] = INT32_MIN
        mask_pairs(block, u, exclude, INT32_MIN)
        # ε_u (float64): quantization error bound + float32 rounding of both compared scores, 0.1 % margin
        su64, l1u = su.squeeze(1).double(), ue.abs().sum(1).double()
        eps = (0.5 * su64 * items.l1_max + 0.5 * s_i * l1u + 0.25 * d * su64 * s_i) * 1.001 \
            + 2.0 * g * l1u * items.abs_max * 1.001
        ids, vals = torch.empty(len(u), k, dtype=torch.long), torch.empty(len(u), k)
        todo = torch.arange(len(u))
        for stage, kc in (("proved", k1), ("retried", k2)):
            if todo.numel() == 0:
                break
            cval, cand = _select(block[todo] if todo.numel() < len(u) else block, kc, work)
            i, v = _rerank(ue[todo], items, cand, cval, k, work)
            last = cval[:, -1]
            bound = su64[todo] * s_i * last.double() + eps[todo]
            ok = (last == INT32_MIN) | (bound < v[:, -1].double())
            ids[todo[ok]], vals[todo[ok]] = i[ok], v[ok]
            st[stage] += int(ok.sum())
            todo = todo[~ok]
        if todo.numel():  # not proved with k2 candidates: the float reference on these rows
            i, v = topk_ranking(user_emb, items.emb, u[todo], exclude, k)
            ids[todo], vals[todo] = i, v
            st["fallback"] += int(todo.numel())
        out_i[s:s + len(u)], out_v[s:s + len(u)] = ids, vals
        st["users"] += len(u)
    return out_i, out_v


def metrics_from_topk(users: Tensor, idx: Tensor, vals: Tensor, target: UserItemIndex, ks=(10, 20),
                      batch_users: int = 2048) -> dict[str, float]:
    """Mean Recall@K and NDCG@K of top-K lists, with ``qgnn.train.rec_metrics.rank_metrics``'s formulas and its
    summation order (per ``batch_users`` users), so equal lists give equal floats: ``users`` those with a target
    item, ``idx`` / ``vals`` their lists (score −inf: no item)."""
    kmax = max(ks)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))
    idcg_cum = torch.cumsum(disc, 0)
    for s in range(0, len(users), batch_users):
        u, i, v = users[s:s + batch_users], idx[s:s + batch_users, :kmax], vals[s:s + batch_users, :kmax]
        hits = (target.contains(u[:, None].expand_as(i), i) & torch.isfinite(v)).double()
        n_t = target.counts[u].double()
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += float((h.sum(1) / n_t).sum())
            idcg = idcg_cum[(n_t.clamp(max=min(k, h.size(1))) - 1).long()]
            sums[f"ndcg@{k}"] += float(((h * disc[: h.size(1)]).sum(1) / idcg).sum())
    n = max(len(users), 1)
    return {key: v / n for key, v in sums.items()}
