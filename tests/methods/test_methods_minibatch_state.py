"""Per-node method state under mini-batches: looked up by global node id (qgnn.nn.context)."""

from __future__ import annotations

import pytest
import torch

from qgnn import quantize_
from qgnn.methods.degree_quant import DegreeMask, protect_probability
from qgnn.models.node import GCN, SAGE
from qgnn.nn.context import attach_graph, node_ids
from qgnn.quant.a2q import A2QQuantizer
from qgnn.testing.graphs import graph
from qgnn.train.tasks import penalty, penalty_modules


def _subgraph(ei, keep, n):
    local = torch.full((n,), -1)
    local[keep] = torch.arange(keep.numel())
    sub = local[ei]
    return sub[:, (sub >= 0).all(0)]


def test_degree_quant_draws_with_the_whole_graphs_probabilities():
    n = 60
    x, ei = graph(n, 400, 8, 0, isolated=0)
    model = GCN(8, 16, 3, cached=False)
    quantize_(model, {"method": "dq", "bits": 4})
    mask = next(m.node_protect for m in model.modules() if getattr(m, "node_protect", None) is not None)
    assert isinstance(mask, DegreeMask)
    assert attach_graph(model, ei, n) == 1  # the one shared mask object
    full = protect_probability(ei, n, None, mask.p_min, mask.p_max)
    keep = torch.tensor([0, 5, 9, 33, 41, 59])
    model.train()
    with node_ids(model, keep):
        model(x[keep], _subgraph(ei, keep, n))
    torch.testing.assert_close(mask.prob, full[keep])
    # without ids (a plain full-batch forward) the batch's own graph decides, as before
    model(x, ei)
    torch.testing.assert_close(mask.prob, full)
    # the subgraph's own CDF would differ: the lookup matters
    own = protect_probability(_subgraph(ei, keep, n), keep.numel(), None, mask.p_min, mask.p_max)
    assert not torch.allclose(own, full[keep])


@pytest.mark.parametrize("model_cls", [GCN, SAGE])
def test_a2q_per_node_tables_span_the_whole_graph_and_train_only_batch_rows(model_cls):
    n = 50
    x, ei = graph(n, 300, 8, 1, isolated=0)
    model = model_cls(8, 16, 3, dropout=0.0, **({"cached": False} if model_cls is GCN else {}))
    quantize_(model, {"method": "a2q", "bits": 4})
    attach_graph(model, ei, n)
    keep = torch.tensor([2, 3, 10, 11, 12, 30])
    model.train()
    with node_ids(model, keep):
        out = model(x[keep], _subgraph(ei, keep, n))
    # A2Q's local gradient trains per-node steps and widths through the penalty term
    (out.square().sum() + penalty(penalty_modules(model))).backward()
    per_node = [q for q in model.modules() if isinstance(q, A2QQuantizer) and q.layout.granularity == "node"]
    assert per_node
    with_grad = 0
    for q in per_node:
        assert q.step_log.numel() == n  # one entry per node of the whole graph, not per batch row
        # steps learn from the batch rows only (b also feels the memory penalty, an average over every node)
        for p in (q.step_log,):
            if p.grad is not None:
                with_grad += 1
                touched = (p.grad != 0).nonzero().view(-1)
                assert set(touched.tolist()) <= set(keep.tolist())
    assert with_grad > 0
    # a later batch with other nodes indexes the same table (no resize, no error)
    other = torch.tensor([0, 1, 45, 49])
    with node_ids(model, other):
        model(x[other], _subgraph(ei, other, n))
    assert all(q.step_log.numel() == n for q in per_node)
