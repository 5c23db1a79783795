import json
import warnings

import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv

from qgnn.errors import ConfigError, UnknownNameError
from qgnn.methods import QuantConfig, method_names, quantize_
from qgnn.methods.degree_quant import protect_probability
from qgnn.models import build_model
from qgnn.nn import QuantGCNConv, QuantLinear, QuantModule
from qgnn.testing import graph


@pytest.mark.parametrize("method", ["qat", "lsq", "dq"])
@pytest.mark.parametrize("model_name", ["gcn", "gat", "gin", "sage"])
def test_quantize_converts_every_layer_and_keeps_state_keys(method, model_name):
    torch.manual_seed(0)
    model = build_model(model_name, "node", 8, 3)
    float_keys = set(model.state_dict())
    quantize_(model, QuantConfig(method=method, bits=4))
    quant_layers = [m for m in model.modules() if isinstance(m, QuantModule)]
    assert quant_layers and all(m.quant for m in quant_layers)
    assert float_keys <= set(model.state_dict())  # a float checkpoint still loads
    x, ei = graph(40, 120, features="rand", undirected=True)
    model.train()
    out = model(x, ei)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(p.grad is not None for n, p in model.named_parameters() if "convs.0" in n and "weight" in n)


def test_int8_qat_is_close_to_float_and_int2_is_not():
    torch.manual_seed(0)
    x, ei = graph(40, 120, features="rand", undirected=True)
    ref = build_model("gcn", "node", 8, 3, dropout=0.0).eval()
    y = ref(x, ei)

    def sqnr(bits):
        m = build_model("gcn", "node", 8, 3, dropout=0.0)
        m.load_state_dict(ref.state_dict())
        quantize_(m, QuantConfig(method="qat", bits=bits))
        m.train()
        m(x, ei)  # calibrate ranges
        yq = m.eval()(x, ei)
        return 10 * torch.log10(y.pow(2).sum() / (y - yq).pow(2).sum())

    assert sqnr(8) > 30
    assert sqnr(2) < sqnr(8) - 15


def test_overrides_by_name_and_regex_and_skip():
    model = build_model("gcn", "node", 8, 3)
    cfg = QuantConfig(method="qat", bits=8, overrides={"convs.0": {"bits": 4}, r"convs\.1": {"skip": True}})
    quantize_(model, cfg)
    assert isinstance(model.convs[0], QuantGCNConv) and model.convs[0].slot_bits("weight") == 4
    assert type(model.convs[1]) is GCNConv


def test_override_naming_a_missing_module_is_an_error():
    with pytest.raises(ConfigError, match="convs.7"):
        quantize_(build_model("gcn", "node", 8, 3), QuantConfig(overrides={"convs.7": {"bits": 2}}))


def test_slot_bits_and_weight_act_bits():
    model = build_model("gcn", "node", 8, 3)
    quantize_(model, QuantConfig(bits=8, weight_bits=2, slot_bits={"edge": 4}))
    c = model.convs[0]
    assert (c.slot_bits("weight"), c.slot_bits("input"), c.slot_bits("edge")) == (2, 8, 4)


def test_config_json_round_trip_and_validation():
    cfg = QuantConfig(method="dq", bits=4, slots=("input", "weight"), overrides={"convs.0": {"bits": 8}},
                      options={"p_max": 0.3})
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    json.loads(cfg.to_json())
    with pytest.raises(ConfigError, match="bits must be an integer in 1..8"):
        QuantConfig(bits=9)
    with pytest.raises(ConfigError, match="unknown quantizer slot"):
        QuantConfig(slots=("inputs",))
    with pytest.raises(ConfigError, match="version"):
        QuantConfig(version=99)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(UnknownNameError, match="valid methods: a2q, dq, lsq, mixq, qat"):
        quantize_(build_model("gcn", "node", 8, 3), QuantConfig(method="magic"))
    assert {"fp32", "qat", "lsq", "dq"} <= set(method_names())


def test_model_without_pyg_layers_warns():
    model = nn.Sequential(nn.ReLU())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        quantize_(model, QuantConfig())
    assert any("nothing" in str(x.message) or "no layer" in str(x.message) for x in w)


def test_user_model_from_pyg_layers_is_quantized():
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.gc = GCNConv(8, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x, ei):
            return self.head(self.gc(x, ei).relu())

    m = quantize_(Mine(), QuantConfig(method="lsq", bits=4))
    assert isinstance(m.gc, QuantGCNConv) and isinstance(m.head, QuantLinear)
    x, ei = graph(40, 120, features="rand", undirected=True)
    assert m(x, ei).shape == (40, 2)


def test_degree_quant_probability_follows_the_in_degree_cdf():
    # graph 0: in-degrees [0, 1, 1, 2]; graph 1: [0, 3, ...]
    ei = torch.tensor([[1, 2, 0, 3, 5, 6, 7], [1, 2, 3, 3, 5, 5, 5]])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    p = protect_probability(ei, 8, batch, 0.1, 0.5)
    # graph 0 CDF: deg0 -> 1/4, deg1 -> 3/4, deg2 -> 4/4; graph 1: deg0 -> 3/4, deg3 -> 4/4
    expected_cdf = torch.tensor([0.25, 0.75, 0.75, 1.0, 0.75, 1.0, 0.75, 0.75])
    torch.testing.assert_close(p, 0.1 + 0.4 * expected_cdf)


def test_degree_quant_masks_high_degree_nodes_more_often_and_not_in_eval():
    torch.manual_seed(0)
    n = 20
    # node j receives edges from nodes 0..j-1: in-degree j, all degrees distinct, so CDF(j) = (j + 1) / n
    ei = torch.tensor([[i, j] for j in range(n) for i in range(j)]).t()
    model = build_model("gcn", "node", 4, 2, dropout=0.0)
    quantize_(model, QuantConfig(method="dq", bits=4, options={"p_min": 0.0, "p_max": 1.0}))
    seen = []
    conv = model.convs[0]
    orig = conv.node_protect
    conv.node_protect = lambda e, k: seen.append(orig(e, k)) or seen[-1]
    model.train()
    for _ in range(400):
        model(torch.rand(n, 4), ei)
    freq = torch.stack(seen).float().mean(0)
    expected = (torch.arange(n) + 1).float() / n
    assert freq[-1] == 1.0  # the highest in-degree: CDF = 1 -> p = p_max = 1, always protected
    assert (freq - expected).abs().max() < 0.1  # 400 draws: binomial std <= 0.025
    assert freq[: n // 4].mean() < 0.3 < 0.7 < freq[-n // 4:].mean()
    seen.clear()
    model.eval()
    model(torch.rand(n, 4), ei)
    assert not seen or not seen[-1].any()
