"""integer_aggregation on QuantGCNConv / QuantGINConv / QuantSAGEConv: in eval mode the neighbourhood sum runs
on the quantizers' integer codes (MixQ-GNN Theorem 1) and the layer output equals the fake-quant output to
float rounding; training mode, float slots and non-sum aggregations keep the fake-quant path."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv

import qgnn
from qgnn.nn import QUANT_LAYER_FOR, QuantGCNConv, QuantGINConv, QuantSAGEConv, set_integer_aggregation
from qgnn.nn import base as nn_base
from qgnn.quant import LSQQuantizer, UniformQuantizer
from qgnn.testing import layers as util

# The fake-quant path sums float32 products; the integer path is exact and rescales once. They differ by
# float32 summation error, a few ulps of Σ_j |terms|, hence a relative and an output-scale tolerance.
RTOL, ATOL_REL = 1e-5, 1e-5

# the slots a quantize_ config quantizes by default (no message / aggr / output)
DEFAULT_SLOTS = ("input", "weight", "weight_root", "xw", "edge")


def assert_same(y_int: torch.Tensor, y_fake: torch.Tensor) -> None:
    torch.testing.assert_close(y_int, y_fake, rtol=RTOL, atol=ATOL_REL * float(y_fake.detach().abs().max()))


def calibrated(name: str, bits: int, slots=DEFAULT_SLOTS, gran: str = "tensor", n: int = 200, e: int = 1000,
               seed: int = 0):
    """A quantized layer with UniformQuantizers on ``slots``, observers calibrated by one train-mode forward
    on the graph it returns, then switched to eval."""
    f = util.make_float(name, seed)
    qs = {s: q for s, q in util.uniform_quantizers(f, bits, act_granularity=gran).items() if s in slots}
    q = QUANT_LAYER_FOR[type(f)].from_float(f, qs)
    x, ei = util.graph(n=n, e=e, seed=seed, self_loops=True)
    q.train()
    util.run(q, x, ei)
    q.eval()
    return q, x, ei


def both(q, x, ei, **kw):
    """(fake-quant output, integer-aggregation output) of the same eval-mode layer."""
    q.integer_aggregation = False
    y_fake = util.run(q, x, ei, **kw)
    q.integer_aggregation = True
    y_int = util.run(q, x, ei, **kw)
    return y_fake, y_int


EXPECTED_MODE = {
    "gcn": "xw",
    "gcn_improved_cached": "xw",
    "gcn_t2s": "xw",
    "gcn_no_norm_no_bias": "xw",
    "gin": "input",
    "gin_train_eps": "input",
    "gin_mean": "input",
    "sage_mean": "input",
    "sage_sum": "input",
    "sage_norm_noroot": "input",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MODE))
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("gran", ["tensor", "channel"])
@pytest.mark.parametrize("seed", [0, 1])
def test_integer_aggregation_matches_fake_quant(name, bits, gran, seed):
    q, x, ei = calibrated(name, bits, gran=gran, seed=seed)
    y_fake, y_int = both(q, x, ei)
    assert q.integer_aggregation_mode() == EXPECTED_MODE[name]
    assert_same(y_int, y_fake)


@pytest.mark.parametrize("name", ["gcn", "gcn_no_norm_no_bias", "gin", "gin_mean", "sage_mean", "sage_sum"])
@pytest.mark.parametrize("bits", [8, 4])
def test_message_slot_is_summed_from_its_codes(name, bits):
    q, x, ei = calibrated(name, bits, slots=(*DEFAULT_SLOTS, "message"), gran="channel")
    y_fake, y_int = both(q, x, ei)
    assert q.integer_aggregation_mode() == "message"
    assert_same(y_int, y_fake)


def test_sage_projection_is_integer_only_through_the_message_slot():
    torch.manual_seed(0)
    f = SAGEConv(util.IN, util.OUT, project=True)
    x, ei = util.graph(n=100, e=500)
    for slots, mode in [(("input",), None), (("input", "message"), "message")]:
        q = QuantSAGEConv.from_float(f, {s: UniformQuantizer(8) for s in slots})
        q.train()
        q(x, ei)
        q.eval()
        y_fake, y_int = both(q, x, ei)
        assert q.integer_aggregation_mode() == mode
        assert_same(y_int, y_fake)


@pytest.mark.parametrize("bits", [8, 4])
def test_gcn_with_given_edge_weights(bits):
    q, x, ei = calibrated("gcn_no_norm_no_bias", bits, gran="channel")
    w = torch.rand(ei.size(1), generator=torch.Generator().manual_seed(3)) * 2 - 0.5  # signed weights
    q.train()
    q(x, ei, w)  # calibrate the edge quantizer on weights
    q.eval()
    y_fake, y_int = both(q, x, ei, edge_weight=w)
    assert q.integer_aggregation_mode(edge_weighted=True) == "xw"
    assert_same(y_int, y_fake)


@pytest.mark.parametrize("name", ["gcn", "gin_train_eps", "sage_mean"])
def test_lsq_quantizers_with_learned_zero_points(name):
    f = util.make_float(name)
    qs = {}
    for s in util.slots_of(f):
        if s in ("weight", "weight_root"):
            qs[s] = LSQQuantizer(4, granularity="channel", ch_axis=0)
        elif s in ("input", "xw", "edge"):
            qs[s] = LSQQuantizer(4, symmetric=False, learn_zero_point=True, init="minmax")
    q = QUANT_LAYER_FOR[type(f)].from_float(f, qs)
    x, ei = util.graph(n=150, e=800)
    q.train()
    util.run(q, x, ei)
    q.eval()
    y_fake, y_int = both(q, x, ei)
    assert q.integer_aggregation_mode() is not None
    assert_same(y_int, y_fake)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("model_name", ["GCN", "GIN", "SAGE"])
def test_quantize_qat_model_end_to_end(model_name, bits):
    from qgnn.models import node

    torch.manual_seed(0)
    model = nn.Module()
    model.net = getattr(node, model_name)(util.IN, 16, 5, num_layers=2)
    qgnn.quantize_(model, qgnn.QuantConfig(method="qat", bits=bits))
    x, ei = util.graph(n=200, e=1000)
    model.train()
    for _ in range(3):  # EMA observers see a few batches
        model.net(x, ei)
    model.eval()
    y_fake = model.net(x, ei)
    names = set_integer_aggregation(model, True)
    assert names == ["net.convs.0", "net.convs.1"]
    assert all(model.get_submodule(n).integer_aggregation_mode() is not None for n in names)
    assert_same(model.net(x, ei), y_fake)
    assert set_integer_aggregation(model, False) == names
    assert torch.equal(model.net(x, ei), y_fake)  # off again: the fake-quant path, bit for bit


@pytest.mark.parametrize("name", ["gcn", "gin", "sage_mean"])
def test_training_mode_ignores_the_flag_and_eval_dispatches_to_the_kernel(name, monkeypatch):
    q, x, ei = calibrated(name, 8)
    calls = []
    real = nn_base.integer_aggregate

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nn_base, "integer_aggregate", spy)
    q.integer_aggregation = True
    q.train()
    assert q.integer_aggregation_mode() is None
    util.run(q, x, ei)
    assert not calls
    q.eval()
    util.run(q, x, ei)
    assert calls == [1]


@pytest.mark.parametrize(
    "name,change",
    [
        ("sage_max", None),  # max aggregation
        ("sage_project_multi", None),  # multi-aggregation
        ("gcn", lambda q: q.set_quantizer("edge", None)),  # float edge weights
        ("gcn", lambda q: q.set_quantizer("xw", None)),  # float X·W
        ("gcn", lambda q: q.set_quantizer("xw", UniformQuantizer(8, granularity="node", num_nodes=200))),  # per node
        ("gcn", lambda q: setattr(q.quant["edge"], "enabled", False)),  # disabled slot
        ("gin", lambda q: q.set_quantizer("input", None)),
        ("gin", lambda q: q.set_quantizer("message", UniformQuantizer(8, granularity="channel", ch_axis=0))),
        ("sage_mean", lambda q: q.set_quantizer("input", UniformQuantizer(8, granularity="node", num_nodes=200))),
    ],
)
def test_fallback_to_the_fake_quant_path(name, change):
    q, x, ei = calibrated(name, 8)
    if change is not None:
        change(q)
        q.train()
        util.run(q, x, ei)
        q.eval()
    y_fake, y_int = both(q, x, ei)
    assert q.integer_aggregation_mode() is None
    assert torch.equal(y_int, y_fake)


@pytest.mark.parametrize("kind", ["declared", "relaxed"])
def test_quantizer_not_integer_exact_keeps_the_fake_quant_path(kind):
    """A quantizer whose output is not dequantize(quant_int(x)) (``integer_exact = False``, e.g. the relaxed
    mixture of widths) keeps the fake-quant path; the same layer with an exact quantizer switches."""
    from qgnn.quant import RelaxedQuantizer

    class Custom(UniformQuantizer):
        integer_exact = False

    q, x, ei = calibrated("gin", 8)
    q.set_quantizer("input", Custom(8) if kind == "declared" else RelaxedQuantizer((4, 8)))
    q.train()
    util.run(q, x, ei)
    q.eval()
    q.integer_aggregation = True
    assert q.integer_aggregation_mode() is None
    q.set_quantizer("input", UniformQuantizer(8))
    q.train()
    util.run(q, x, ei)
    q.eval()
    assert q.integer_aggregation_mode() == "input"


@pytest.mark.parametrize("name", ["gcn", "gin_train_eps", "sage_mean"])
def test_every_slot_quantized(name):
    """With ``aggr`` (and ``output``) quantized too, the value entering the aggr quantizer matches to float
    rounding, but re-quantizing it can turn that rounding into one aggr step where the value sits on a
    rounding boundary (a tie flip): the fake-quant sum is the inexact one there. Rows without a flip agree
    exactly; flips are rare and one code apart."""
    q, x, ei = calibrated(name, 8, slots=util.slots_of(util.make_float(name)), gran="channel")
    seen = []
    hook = q.quant["aggr"].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    y_fake, y_int = both(q, x, ei)
    hook.remove()
    assert q.integer_aggregation_mode() == "message"
    a_fake, a_int = seen
    assert_same(a_int, a_fake)
    c_fake, c_int = q.quant["aggr"].quant_int(a_fake)[0].int(), q.quant["aggr"].quant_int(a_int)[0].int()
    flips = c_fake != c_int
    assert bool(((c_fake - c_int).abs() <= 1).all())
    assert float(flips.float().mean()) < 0.01
    rows = ~flips.any(dim=1)
    assert torch.equal(y_int[rows], y_fake[rows])


@pytest.mark.parametrize("name", ["gcn", "gcn_no_norm_no_bias", "gin", "sage_mean", "sage_sum"])
def test_empty_graph_and_isolated_nodes(name):
    q, x, ei = calibrated(name, 8)
    empty = ei[:, :0]
    for edges in (empty, ei):
        y_fake, y_int = both(q, x, edges)
        assert torch.isfinite(y_int).all()
        assert_same(y_int, y_fake)
    for slots in ((*DEFAULT_SLOTS, "message"),):
        q2, x2, ei2 = calibrated(name, 8, slots=slots)
        y_fake, y_int = both(q2, x2, ei2[:, :0])
        assert torch.isfinite(y_int).all()
        assert_same(y_int, y_fake)


def test_flag_defaults_and_to_float():
    for name in ("gcn", "gin", "sage_mean"):
        f = util.make_float(name)
        q = QUANT_LAYER_FOR[type(f)].from_float(f, {})
        assert q.integer_aggregation is False and q.SUPPORTS_INTEGER_AGGREGATION
        q.integer_aggregation = True
        back = q.to_float()
        assert "integer_aggregation" not in back.__dict__
        assert "integer_aggregation" not in q.state_dict()
    assert QuantGCNConv(4, 4).integer_aggregation is False
    assert QuantGINConv(nn.Linear(4, 4)).integer_aggregation is False


def test_set_integer_aggregation_skips_layers_without_support():
    model = nn.Module()
    model.a = QuantGCNConv.from_float(GCNConv(4, 4), {})
    model.b = QUANT_LAYER_FOR[GATConv].from_float(GATConv(4, 4), {})
    model.c = QUANT_LAYER_FOR[nn.Linear].from_float(nn.Linear(4, 4), {})
    assert set_integer_aggregation(model) == ["a"]
    assert model.a.integer_aggregation is True
    assert "integer_aggregation" not in model.b.__dict__ and model.b.integer_aggregation_mode() is None
