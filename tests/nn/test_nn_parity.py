"""With no quantizer set, every Quant layer is its float PyG layer: same outputs, parameters and options."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv

from qgnn.nn import QUANT_LAYER_FOR, QuantGCNConv, QuantLinear, QuantModule
from qgnn.testing import layers as util


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", sorted(util.FLOAT_LAYERS))
def test_no_slot_layer_equals_float_layer(name, mode):
    f, q = util.quantized(name)
    assert type(q) is QUANT_LAYER_FOR[type(f)] and isinstance(q, type(f)) and isinstance(q, QuantModule)
    x, ei = util.graph()
    getattr(f, mode)()
    getattr(q, mode)()
    for _ in range(2):  # the second call uses GCN's cache when cached=True
        torch.testing.assert_close(util.run(q, x, ei), util.run(f, x, ei))


@pytest.mark.parametrize("name", ["gcn", "gcn_no_norm_no_bias", "gcn_t2s"])
def test_gcn_with_edge_weights_equals_float(name):
    f, q = util.quantized(name)
    x, ei = util.graph()
    w = torch.rand(ei.size(1))
    torch.testing.assert_close(q(x, ei, w), f(x, ei, w))


@pytest.mark.parametrize("name", ["gat_h1", "gat_h4_mean", "gat_edge_res_noloops"])
def test_gat_attention_weights_equal_float(name):
    f, q = util.quantized(name)
    x, ei = util.graph()
    f.train(), q.train()  # dropout on: the same RNG stream must give the same masks
    out_f, (ei_f, a_f) = util.run(f, x, ei, return_attention_weights=True)
    out_q, (ei_q, a_q) = util.run(q, x, ei, return_attention_weights=True)
    torch.testing.assert_close(out_q, out_f)
    assert torch.equal(ei_q, ei_f)
    torch.testing.assert_close(a_q, a_f)


@pytest.mark.parametrize("name", sorted(util.FLOAT_LAYERS))
def test_from_float_shares_parameters_and_keeps_state_dict_keys(name):
    f = util.make_float(name)
    qs = util.uniform_quantizers(f, 8)
    q = QUANT_LAYER_FOR[type(f)].from_float(f, qs)
    fkeys, qkeys = set(f.state_dict()), set(q.state_dict())
    assert fkeys <= qkeys
    assert {k.split(".")[1] for k in qkeys - fkeys} == set(qs)  # the rest is quant.<slot>.*
    assert all(k.startswith("quant.") for k in qkeys - fkeys)
    fparams = dict(f.named_parameters())
    for k, p in q.named_parameters():
        if not k.startswith("quant."):
            assert p is fparams[k]  # shared, not copied: an optimizer of the float model still trains it
    assert q.quantizers() == {s: qs[s] for s in q.SLOTS if s in qs}


@pytest.mark.parametrize("name", sorted(util.FLOAT_LAYERS))
def test_to_float_round_trips(name):
    f, q = util.quantized(name, bits=4)
    x, ei = util.graph()
    q.train()
    util.run(q, x, ei)  # the quantized layer differs ...
    back = q.to_float()
    assert type(back) is type(f) and not isinstance(back, QuantModule)
    assert set(back.state_dict()) == set(f.state_dict())
    assert not hasattr(back, "quant") and not hasattr(back, "node_protect")
    for mode in ("train", "eval"):
        getattr(f, mode)(), getattr(back, mode)()
        torch.testing.assert_close(util.run(back, x, ei), util.run(f, x, ei))  # ... its float layer does not
    for k, p in back.named_parameters():
        assert p is dict(f.named_parameters())[k]


def test_constructor_options_survive_conversion():
    torch.manual_seed(0)
    floats = [
        GCNConv(4, 5, improved=True, cached=True, bias=False),
        GATConv(4, 5, heads=3, concat=False, negative_slope=0.1, dropout=0.4),
        GINConv(nn.Linear(4, 4), eps=0.5, train_eps=True),
        SAGEConv(4, 5, aggr="max", normalize=True, root_weight=False),
    ]
    gcn, gat, gin, sage = (QUANT_LAYER_FOR[type(m)].from_float(m, {}) for m in floats)
    assert (gcn.improved, gcn.cached, gcn.bias, gcn.normalize, gcn.add_self_loops) == (True, True, None, True, True)
    assert (gat.heads, gat.concat, gat.negative_slope, gat.dropout, gat.fill_value) == (3, False, 0.1, 0.4, "mean")
    assert isinstance(gin.eps, nn.Parameter) and gin.initial_eps == 0.5 and gin.aggr == "add"
    assert (sage.aggr, sage.normalize, sage.root_weight) == ("max", True, False)
    for layer, original in zip((gcn, gat, gin, sage), floats, strict=True):
        assert layer.aggr_module is original.aggr_module
        back = layer.to_float()
        assert type(back) is type(original) and back.__dict__.keys() == original.__dict__.keys()
        assert set(layer.__dict__) - set(original.__dict__) == {"node_protect", "_last_stats"}


def test_direct_construction_takes_quantizers():
    from qgnn.quant import UniformQuantizer

    layer = QuantGCNConv(util.IN, util.OUT, cached=False, quantizers={"weight": UniformQuantizer(4, symmetric=True)})
    assert layer.slot_bits("weight") == 4 and layer.slot_bits("input") is None
    lin = QuantLinear(3, 2, bias=False, quantizers={"input": UniformQuantizer(6)})
    assert lin.bias is None and lin.slot_bits("input") == 6
    x, ei = util.graph()
    assert layer(x, ei).shape == (x.size(0), util.OUT)


def test_gcn_cache_is_used_like_pyg():
    f, q = util.quantized("gcn_improved_cached")
    x, ei = util.graph()
    other = util.graph(seed=5)[1]
    y_f, y_q = f(x, ei), q(x, ei)
    torch.testing.assert_close(y_q, y_f)
    # the normalised graph of the first call is cached and reused, as PyG does with cached=True
    torch.testing.assert_close(q(x, other), y_q)
    torch.testing.assert_close(q(x, other), f(x, other))
    assert q._cached_edge_index is not None


def test_disabled_quantizers_are_float():
    f, q = util.quantized("gat_h4_concat", bits=2)
    for quantizer in q.quant.values():
        quantizer.enabled = False
    x, ei = util.graph()
    f.eval(), q.eval()
    torch.testing.assert_close(util.run(q, x, ei), util.run(f, x, ei))
    assert all(q.slot_bits(s) is None for s in q.SLOTS)


@pytest.mark.parametrize("name", util.MAIN)
def test_deepcopy_and_state_dict_reload(name):
    f, q = util.quantized(name, bits=4)
    x, ei = util.graph()
    q.train()
    util.run(q, x, ei)
    q.eval()
    y = util.run(q, x, ei)
    torch.testing.assert_close(util.run(copy.deepcopy(q), x, ei), y)
    f2 = util.make_float(name, seed=3)
    q2 = type(q).from_float(f2, util.uniform_quantizers(f2, 4))
    q2.load_state_dict(q.state_dict())
    q2.eval()
    torch.testing.assert_close(util.run(q2, x, ei), y)
    # a float checkpoint loads into the quantized layer (its quantizer entries stay as they are)
    missing, unexpected = q2.load_state_dict(f.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("quant.") for k in missing)
