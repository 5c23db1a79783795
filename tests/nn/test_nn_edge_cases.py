"""Degenerate graphs (no edges, no nodes, isolated nodes) and the errors users can cause."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv

from qgnn.errors import ConfigError
from qgnn.nn import (
    ALL_SLOTS,
    EDGE_SLOTS,
    NODE_SLOTS,
    QUANT_LAYER_FOR,
    WEIGHT_SLOTS,
    QuantGATConv,
    QuantGCNConv,
    QuantGINConv,
    QuantLinear,
    QuantSAGEConv,
)
from qgnn.quant import UniformQuantizer
from qgnn.testing import layers as util

GRAPHS = {
    "isolated": lambda: util.graph(n=12, e=20, isolated=6),
    "no_edges": lambda: (torch.randn(7, util.IN), torch.empty(2, 0, dtype=torch.long)),
    "no_nodes": lambda: (torch.randn(0, util.IN), torch.empty(2, 0, dtype=torch.long)),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("name", sorted(util.FLOAT_LAYERS))
def test_degenerate_graphs_give_finite_outputs_of_the_right_shape(name, graph, mode):
    torch.manual_seed(0)
    x, ei = GRAPHS[graph]()
    f, q = util.quantized(name, bits=8)
    q.node_protect = None if isinstance(q, QuantLinear) else (lambda e, n: torch.arange(n) % 2 == 0)
    getattr(f, mode)(), getattr(q, mode)()
    if mode == "eval":  # calibrate on a normal graph first, as a model would
        q.train()
        util.run(q, *util.graph())
        q.eval()
        if getattr(q, "cached", False):
            q._cached_edge_index = None  # cached=True would keep the calibration graph, as PyG does
    x.requires_grad_(True)
    y, y_float = util.run(q, x, ei), util.run(f, x, ei)
    assert y.shape == y_float.shape and y.shape[0] == x.shape[0]
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", sorted(util.FLOAT_LAYERS))
def test_isolated_nodes_match_float_without_quantizers(name):
    x, ei = GRAPHS["isolated"]()
    f, q = util.quantized(name)
    f.eval(), q.eval()
    torch.testing.assert_close(util.run(q, x, ei), util.run(f, x, ei))


def test_bad_slot_name_lists_the_valid_slots():
    _, q = util.quantized("sage_mean")
    with pytest.raises(ConfigError, match="valid slots: input, weight, weight_root, message, aggr, output"):
        q.set_quantizer("xw", UniformQuantizer(8))
    with pytest.raises(ConfigError, match="no quantizer slot 'inputs'"):
        q.slot_bits("inputs")
    with pytest.raises(ConfigError, match="valid slots: input, weight, output"):
        QuantLinear.from_float(nn.Linear(2, 3), {"message": UniformQuantizer(8)})


def test_slot_vocabulary_is_consistent():
    assert NODE_SLOTS | EDGE_SLOTS | WEIGHT_SLOTS == set(ALL_SLOTS)
    for cls in QUANT_LAYER_FOR.values():
        assert set(cls.SLOTS) <= set(ALL_SLOTS) and len(set(cls.SLOTS)) == len(cls.SLOTS)
    assert QuantGATConv.SLOTS == ("input", "weight", "att", "xw", "attention", "message", "aggr", "output")
    assert QuantGCNConv.SLOTS == ("input", "weight", "xw", "edge", "message", "aggr", "output")
    assert QuantGINConv.SLOTS == ("input", "message", "aggr", "output")


def test_set_quantizer_checks_its_argument_and_none_removes():
    _, q = util.quantized("gcn", bits=8)
    with pytest.raises(ConfigError, match="needs a qgnn.quant.Quantizer"):
        q.set_quantizer("input", nn.Identity())
    with pytest.raises(ConfigError, match="per-node quantizer"):
        q.set_quantizer("message", UniformQuantizer(8, granularity="node", num_nodes=5))
    with pytest.raises(ConfigError, match="per-node quantizer"):
        q.set_quantizer("weight", UniformQuantizer(8, granularity="node", num_nodes=5))
    q.set_quantizer("input", UniformQuantizer(8, granularity="node", num_nodes=5))  # node rows: fine
    q.set_quantizer("xw", None)
    assert q.slot_bits("xw") is None and "xw" not in q.quantizers()
    assert list(q.quantizers()) == [s for s in q.SLOTS if s != "xw"]


def test_inactive_slot_is_skipped_by_from_float_and_refused_by_set_quantizer():
    f = SAGEConv(4, 5, root_weight=False)
    q = QuantSAGEConv.from_float(f, {"weight_root": UniformQuantizer(8), "weight": UniformQuantizer(4)})
    assert "weight_root" not in q.quant and q.slot_bits("weight") == 4
    with pytest.raises(ConfigError, match="unused"):
        q.set_quantizer("weight_root", UniformQuantizer(8))


def test_from_float_checks_the_type_and_unsupported_options():
    with pytest.raises(ConfigError, match="expects a GCNConv"):
        QuantGCNConv.from_float(SAGEConv(3, 4), {})
    _, q = util.quantized("gcn")
    with pytest.raises(ConfigError, match="expects a GCNConv"):
        QuantGCNConv.from_float(q, {})  # already quantized
    with pytest.raises(ConfigError, match="one in_channels"):
        QuantGATConv.from_float(GATConv((3, 4), 5), {})
    with pytest.raises(ConfigError, match="lazily initialised"):
        QuantGCNConv.from_float(GCNConv(-1, 5), {})


def test_bad_graph_inputs_raise_config_errors():
    x, ei = util.graph()
    _, q = util.quantized("sage_mean")
    with pytest.raises(ConfigError, match=r"shape \[2, num_edges\]"):
        q(x, ei.t())
    with pytest.raises(ConfigError, match="size"):
        q(x, ei, size=(3, 4))
    with pytest.raises(ConfigError, match="integer node ids"):
        q(x, ei.float())
    with pytest.raises(ConfigError, match="pair"):
        q((x, x, x), ei)
    adj = torch.sparse_coo_tensor(ei, torch.ones(ei.size(1)), (x.size(0) + 1, x.size(0) + 1))
    with pytest.raises(ConfigError, match="adj_t"):
        q(x, adj)
    q(x, ei, size=(x.size(0), x.size(0)))
    _, g = util.quantized("gcn")
    with pytest.raises(ConfigError, match="bipartite"):
        g((x, x), ei)


def test_node_protect_must_return_a_node_mask():
    x, ei = util.graph()
    _, q = util.quantized("gcn", bits=8)
    q.node_protect = lambda e, n: torch.zeros(n + 1, dtype=torch.bool)
    q.train()
    with pytest.raises(ConfigError, match="bool tensor of shape"):
        q(x, ei)
    q.node_protect = lambda e, n: torch.zeros(n)
    with pytest.raises(ConfigError, match="bool tensor of shape"):
        q(x, ei)


def test_per_node_quantizer_with_too_few_nodes_says_so():
    x, ei = util.graph(n=30)
    f = GCNConv(util.IN, util.OUT)
    q = QuantGCNConv.from_float(f, {"input": UniformQuantizer(8, granularity="node", num_nodes=10)})
    with pytest.raises(ConfigError, match="per-node quantizer has 10 nodes"):
        q(x, ei)
