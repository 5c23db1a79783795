"""Quantizer ranges gathered on sampled mini-batches converge to the ranges of the whole graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.data import Data

from qgnn import quantize_
from qgnn.data.sampler import make_neighbor_loader
from qgnn.models.node import SAGE
from qgnn.nn import QuantModule
from qgnn.nn.context import attach_graph, node_ids
from qgnn.testing.graphs import graph


def _ranges(model):
    return {f"{name}.{slot}": q.observer.range() for name, m in model.named_modules() if isinstance(m, QuantModule)
            for slot, q in m.quantizers().items() if slot in ("input", "xw", "aggr") and hasattr(q, "observer")}


@pytest.mark.parametrize("method,bits,tol", [("dq", 4, 0.05), ("qat", 8, 0.15)])
def test_minibatch_ranges_converge_to_full_batch_ranges(method, bits, tol):
    """A fixed model (no optimizer step) sees 150 sampled batches in training mode: every activation range
    (input, aggregate) ends within ``tol`` of its width from the full-batch range. Degree-Quant's percentile
    ranges are estimates of a quantile, which a batch estimates without bias; QAT's EMA of batch extremes can
    only fall short of the whole graph's extremes (a batch is a subset), by the gap between the expected
    maximum of a batch and of the graph."""
    torch.manual_seed(0)
    n = 3000
    x, ei = graph(n, 30000, 16, 0, isolated=0)
    model = SAGE(16, 32, 4, dropout=0.0)
    quantize_(model, {"method": method, "bits": bits})
    full = copy.deepcopy(model)
    for q in full.modules():  # the whole graph's ranges: one batch, nothing averaged
        if hasattr(q, "momentum"):
            q.momentum = 0.0
    for m in full.modules():
        if isinstance(m, QuantModule):
            m.node_protect = None  # every node quantized, so the observers see the whole graph
    full.train()
    with torch.no_grad():
        full(x, ei)
    want = _ranges(full)

    for m in model.modules():
        if isinstance(m, QuantModule):
            m.node_protect = None
    attach_graph(model, ei, n)
    loader = make_neighbor_loader(Data(x=x, edge_index=ei, num_nodes=n), None, [10, 10], 256, shuffle=True,
                                  generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.no_grad():
        for step, batch in enumerate(loader):
            with node_ids(model, batch.n_id):
                model(batch.x, batch.edge_index)
            if step == 150:
                break
    got = _ranges(model)
    assert want.keys() == got.keys() and want
    for key, (lo, hi) in want.items():
        width = float(hi - lo)
        glo, ghi = got[key]
        assert abs(float(glo - lo)) <= tol * width and abs(float(ghi - hi)) <= tol * width, (key, (lo, hi), got[key])
        if method == "qat":
            assert float(glo) >= float(lo) - 1e-6 and float(ghi) <= float(hi) + 1e-6  # a subset's extremes
