"""Quantized layers: INT8 is close to float, INT4 is worse, every slot quantizes, gradients reach
weights and LSQ steps."""

from __future__ import annotations

import pytest
import torch

from qgnn.nn import QUANT_LAYER_FOR, QuantGCNConv
from qgnn.quant import UniformQuantizer
from qgnn.testing import layers as util


def _calibrated_sqnr(name: str, bits: int) -> float:
    f, q = util.quantized(name, bits=bits, act_granularity="channel")
    if hasattr(f, "dropout") and isinstance(f.dropout, float):
        f.dropout = q.dropout = 0.0  # compare the layers, not two dropout draws
    x, ei = util.graph(n=200, e=1000)
    q.train()
    util.run(q, x, ei)  # calibrate every observer on this input
    f.eval(), q.eval()
    return util.sqnr(util.run(f, x, ei), util.run(q, x, ei))


@pytest.mark.parametrize("name", sorted(util.FLOAT_LAYERS))
def test_int8_every_slot_is_close_to_float_and_int4_is_worse(name):
    """Every slot quantized at once. Activations are per feature column: with one scale per tensor the
    message slot alone sits near 31-33 dB at INT8 (the few largest messages, self-loops of low-degree
    nodes, set the range that every small message shares), so all slots together hover around 30 dB."""
    s8, s4 = _calibrated_sqnr(name, 8), _calibrated_sqnr(name, 4)
    assert s8 > 30, f"INT8 SQNR {s8:.1f} dB"
    assert s4 < s8 - 12, f"INT4 {s4:.1f} dB vs INT8 {s8:.1f} dB"


@pytest.mark.parametrize("name", [n for n in util.MAIN if n != "linear"])
def test_each_slot_alone_changes_the_output(name):
    """A quantizer in any one slot is applied (a 2-bit grid moves the output)."""
    f = util.make_float(name)
    f.eval()
    x, ei = util.graph()
    y = util.run(f, x, ei)
    for slot in util.slots_of(f):
        q = QUANT_LAYER_FOR[type(f)].from_float(f, {slot: util.uniform_quantizers(f, 2)[slot]})
        q.eval()
        assert q.slot_bits(slot) == 2
        assert not torch.allclose(util.run(q, x, ei), y), slot


@pytest.mark.parametrize("name", util.MAIN + ["sage_max", "gat_edge_res_noloops", "gcn_no_norm_no_bias"])
def test_gradients_reach_weights_and_every_lsq_step(name):
    f = util.make_float(name)
    qs = util.lsq_quantizers(f, 4)
    q = QUANT_LAYER_FOR[type(f)].from_float(f, qs)
    q.train()
    x, ei = util.graph()
    x.requires_grad_(True)
    kw = {"edge_weight": torch.rand(ei.size(1))} if name == "gcn_no_norm_no_bias" else {}
    util.run(q, x, ei, **kw).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in q.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    for slot, quantizer in qs.items():
        assert quantizer.step.grad is not None and quantizer.step.grad.abs().sum() > 0, slot


def test_weight_quantizer_quantizes_the_weight_not_a_copy_of_the_module():
    f = util.make_float("gcn")
    wq = UniformQuantizer(3, symmetric=True, granularity="channel", ch_axis=0)
    q = QuantGCNConv.from_float(f, {"weight": wq})
    q.eval()
    x, ei = util.graph()
    ref = util.make_float("gcn")
    with torch.no_grad():
        ref.lin.weight.copy_(wq(f.lin.weight))
    ref.eval()
    torch.testing.assert_close(q(x, ei), ref(x, ei))
    assert not torch.equal(wq(f.lin.weight), f.lin.weight)  # 3 bits do change it


def test_last_stats_record_graph_and_feature_sizes():
    x, ei = util.graph(n=30, e=90)
    n, e = x.size(0), ei.size(1)  # no self-loops in the input
    keys = ("num_nodes", "num_edges", "in_channels", "out_channels", "heads", "message_channels")
    expect = {  # GCN and GAT aggregate over the self-loops they add
        "gcn": (n, e + n, util.IN, util.OUT, 1, util.OUT),
        "gin": (n, e, util.IN, util.OUT, 1, util.IN),
        "sage_mean": (n, e, util.IN, util.OUT, 1, util.IN),
        "gat_h4_concat": (n, e + n, util.IN, 4, 4, 16),
        "linear": (n, 0, util.IN, util.OUT, 1, 0),
    }
    for name, stats in expect.items():
        _, q = util.quantized(name, bits=8)
        util.run(q, x, ei)
        assert q._last_stats == dict(zip(keys, stats, strict=True)), name
        assert all(type(v) is int for v in q._last_stats.values())
