"""Full-ranking Recall / NDCG: against hand-computed rankings and the per-user reference; exclusion."""

import math

import pytest
import torch

from qgnn.train.rec_losses import lambda_weights
from qgnn.train.rec_metrics import UserItemIndex, rank_metrics, rank_metrics_reference


def _idx(pairs, nu, ni):
    return UserItemIndex(torch.tensor(pairs, dtype=torch.long).T.reshape(2, -1), nu, ni)


def test_metrics_on_a_hand_computed_ranking():
    # one user, 5 items; identity item embeddings make the scores the user vector itself
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]])
    items = torch.eye(5)
    train = _idx([(0, 0)], 1, 5)          # item 0 (best score) is a training item: excluded
    test = _idx([(0, 2), (0, 4)], 1, 5)   # ranking after exclusion: 1, 2, 3, 4 -> hits at ranks 2 and 4
    m = rank_metrics(scores, items, test, [train], ks=(1, 2, 4))
    assert m["recall@1"] == 0.0 and m["recall@2"] == pytest.approx(0.5) and m["recall@4"] == pytest.approx(1.0)
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / idcg2)
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg2)


def test_training_items_are_never_hits():
    scores = torch.tensor([[5.0, 4.0, 3.0]])
    train = _idx([(0, 0), (0, 1)], 1, 3)
    # a pair in both the exclusion list and the targets still must not count, even with K > remaining items
    test = _idx([(0, 0), (0, 1)], 1, 3)
    m = rank_metrics(scores, torch.eye(3), test, [train], ks=(3,))
    assert m["recall@3"] == 0.0 and m["ndcg@3"] == 0.0


def test_batched_metrics_match_the_reference_loop():
    g = torch.Generator().manual_seed(0)
    nu, ni, d = 23, 31, 6
    ue, ie = torch.randn(nu, d, generator=g), torch.randn(ni, d, generator=g)
    pairs = torch.randint(0, ni, (nu, 8), generator=g)
    train = [(u, int(i)) for u in range(nu) for i in pairs[u, :5]]
    test = [(u, int(i)) for u in range(nu) for i in pairs[u, 5:] if (u, int(i)) not in set(train)]
    test = [p for p in test if p[0] % 4]  # some users without targets
    got = rank_metrics(ue, ie, _idx(test, nu, ni), [_idx(train, nu, ni)], ks=(3, 10), batch_users=4)
    ref = rank_metrics_reference(ue @ ie.T, _group(test), _group(train), ks=(3, 10))
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-9)


def _group(pairs):
    out = {}
    for u, i in pairs:
        out.setdefault(u, set()).add(i)
    return out


def test_lambda_weights_equal_delta_ndcg_of_swapping_the_pair():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    rel = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    w = lambda_weights(scores, rel)[0]

    def ndcg(order):
        dcg = sum((2 ** float(rel[0, c]) - 1) / math.log2(r + 2) for r, c in enumerate(order))
        ideal = sorted((2 ** float(x) - 1 for x in rel[0]), reverse=True)
        return dcg / sum(gn / math.log2(r + 2) for r, gn in enumerate(ideal))

    order = sorted(range(4), key=lambda c: -float(scores[0, c]))
    for a in range(4):
        for b in range(4):
            if rel[0, a] > rel[0, b]:
                sw = [b if c == a else a if c == b else c for c in order]
                assert float(w[a, b]) == pytest.approx(abs(ndcg(order) - ndcg(sw)), abs=1e-6)
            else:
                assert float(w[a, b]) == 0.0
