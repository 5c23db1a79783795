"""Prompt injection: zero-initialised and disabled prompts reproduce the host exactly on every layer type and
host method; unload restores the original modules and state-dict keys; float and quantized layers apply the
prompt at the same point; a frozen backbone leaves everything but the prompts unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv

from qgnn import QuantConfig, quantize_
from qgnn.data.synthetic import random_node_dataset
from qgnn.errors import ConfigError, UnknownNameError
from qgnn.models import build_model
from qgnn.nn import QUANT_LAYER_FOR, QuantModule
from qgnn.prompts import (
    GPFPlus,
    LoRAP,
    PromptConfig,
    PromptedLayer,
    disable_prompts,
    freeze_backbone,
    inject_prompts,
    load_prompt_state_dict,
    prompt_parameters,
    prompt_report,
    prompt_state_dict,
    unload_prompts,
)

KINDS = ["gpf", "gpf-plus", "lorap", "gpf-lorap"]
DS = random_node_dataset(40, 10, 3, seed=0)


def _model(name, method=None, seed=0):
    torch.manual_seed(seed)
    m = build_model(name, "node", DS.num_features, DS.num_classes)
    if method:
        quantize_(m, QuantConfig(method=method, bits=4))
    m(DS.data.x, DS.data.edge_index)  # calibrate observers / initialise LSQ and A2Q on one training forward
    return m.eval()


def _fwd(m):
    return m(DS.data.x, DS.data.edge_index)


def _perturb(m, value=0.3):
    with torch.no_grad():
        for p in prompt_parameters(m).values():
            p.add_(value)


@pytest.mark.parametrize("model", ["gcn", "gin", "gat", "sage"])
@pytest.mark.parametrize("method", [None, "qat", "lsq", "dq", "a2q", "mixq"])
def test_zero_init_and_disable_reproduce_the_host_and_unload_restores_it(model, method):
    m = _model(model, method)
    ref = _fwd(m)
    keys = list(m.state_dict())
    convs = [type(c) for c in m.convs]
    for kind in KINDS:
        inject_prompts(m, kind)
        assert all(isinstance(c, PromptedLayer) for c in m.convs)
        assert torch.equal(_fwd(m), ref), kind  # zero-initialised: bit for bit
        _perturb(m)
        assert not torch.allclose(_fwd(m), ref), kind  # the prompts do act once they are not zero
        with disable_prompts(m):
            assert torch.equal(_fwd(m), ref), kind
        assert not torch.allclose(_fwd(m), ref)  # re-enabled when the context exits
        unload_prompts(m)
        assert [type(c) for c in m.convs] == convs and list(m.state_dict()) == keys
        assert torch.equal(_fwd(m), ref)


@pytest.mark.parametrize("layer", [lambda: GCNConv(10, 6), lambda: GINConv(torch.nn.Sequential(
    torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6))), lambda: SAGEConv(10, 6),
    lambda: GATConv(10, 3, heads=2, dropout=0.0)])
def test_float_and_quantized_layers_prompt_at_the_same_point(layer):
    torch.manual_seed(0)
    fl = layer()
    q = QUANT_LAYER_FOR[type(fl)].from_float(fl, {})  # no quantizer: the same computation as the float layer
    x, ei = DS.data.x, DS.data.edge_index
    wf, wq = PromptedLayer(fl, aggr_prompt=LoRAP(_dim(fl), k=5, rank=2)), None
    _perturb(wf, 0.5)
    wq = PromptedLayer(q, aggr_prompt=copy.deepcopy(wf.aggr_prompt))
    with torch.no_grad():
        ref_plain = fl(x, ei)
        out_f, out_q = wf(x, ei), wq(x, ei)
    torch.testing.assert_close(out_q, out_f, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out_f, ref_plain)
    assert not fl._aggregate_forward_hooks and not q._aggregate_forward_hooks  # only during the forward


def _dim(layer):
    from qgnn.prompts import aggregation_dim

    return aggregation_dim(layer)


def test_lorap_is_applied_after_aggregation_before_the_bias():
    # GCN: out = s + prompt(s) + b, with s the aggregate; checked by subtracting the plain layer's output.
    torch.manual_seed(0)
    conv = GCNConv(10, 4)
    lp = LoRAP(4, k=3, rank=1)
    _perturb(PromptedLayer(conv, aggr_prompt=lp), 0.7)
    x, ei = DS.data.x, DS.data.edge_index
    with torch.no_grad():
        plain = conv(x, ei)
        s = plain - conv.bias
        expected = lp(s) + conv.bias
        got = PromptedLayer(conv, aggr_prompt=lp)(x, ei)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_prompt_sizes_follow_the_layers_and_are_reported():
    m = _model("gat", "qat")
    inject_prompts(m, PromptConfig(kind="gpf-lorap", k=7, rank=3))
    c0, c1 = m.convs
    assert isinstance(c0.node_prompt, GPFPlus) and c0.node_prompt.dim == DS.num_features
    assert c1.node_prompt is None
    assert c0.aggr_prompt.dim == 8 * 8 and c1.aggr_prompt.dim == DS.num_classes  # heads * channels
    rep = prompt_report(m)
    expected = sum(p.numel() for p in prompt_parameters(m).values())
    assert rep["params"] == expected == (2 * 7 * 10) + sum(7 * d + 7 * 3 + 3 * d for d in (64, 3))
    assert rep["bytes"] == 4 * expected and rep["kind"] == "gpf-lorap" and rep["layers"] == ["convs.0", "convs.1"]


def test_prompts_stay_outside_the_quantizers():
    m = _model("gin", "qat")
    inject_prompts(m, "gpf-lorap")
    quant_params = {id(p) for mod in m.modules() if isinstance(mod, QuantModule) for p in mod.quant.parameters()}
    assert not any(id(p) in quant_params for p in prompt_parameters(m).values())
    before = {n for n, mod in m.named_modules() if isinstance(mod, QuantModule)}
    with pytest.warns(UserWarning, match="unchanged"):  # prompts hold no nn.Linear: nothing new to convert
        quantize_(m, QuantConfig(method="qat", bits=4))
    assert {n for n, mod in m.named_modules() if isinstance(mod, QuantModule)} == before
    assert not any("prompt" in n for n in before)


def test_prompt_state_dict_round_trip():
    a = _model("gcn", "dq")
    inject_prompts(a, "gpf-lorap")
    _perturb(a)
    sd = prompt_state_dict(a)
    assert sd and all(".node_prompt." in k or ".aggr_prompt." in k for k in sd)
    b = _model("gcn", "dq")
    inject_prompts(b, "gpf-lorap")
    load_prompt_state_dict(b, sd)
    assert torch.equal(_fwd(a), _fwd(b))
    with pytest.raises(ConfigError, match="does not fit"):
        load_prompt_state_dict(b, {k: v for k, v in list(sd.items())[1:]})


def test_frozen_backbone_changes_only_the_prompts():
    m = _model("gin", "dq")
    inject_prompts(m, "gpf-lorap")
    trainable = set(freeze_backbone(m))
    assert trainable == set(prompt_parameters(m))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=0.05)
    d = DS.data
    for _ in range(3):
        m.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(d.x, d.edge_index)[d.train_mask], d.y[d.train_mask]).backward()
        opt.step()
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(prompt_state_dict(m))  # observer ranges and BatchNorm stats fixed too


def test_errors_name_the_problem():
    m = _model("gcn")
    with pytest.raises(UnknownNameError, match="prompt"):
        inject_prompts(m, "lora")
    with pytest.raises(ConfigError, match="match no message-passing layer"):
        inject_prompts(m, PromptConfig(kind="lorap", targets=["convs.9"]))
    with pytest.raises(ConfigError, match="rank"):
        PromptConfig(kind="lorap", rank=0)
    inject_prompts(m, PromptConfig(kind="lorap", targets=["convs.1"]))
    assert isinstance(m.convs[1], PromptedLayer) and not isinstance(m.convs[0], PromptedLayer)
    with pytest.raises(ConfigError, match="already has prompts"):
        inject_prompts(m, "lorap")


def test_gpf_plus_formula():
    torch.manual_seed(0)
    g = GPFPlus(5, k=3)
    with torch.no_grad():
        g.basis.normal_()
    x = torch.randn(4, 5)
    alpha = torch.softmax(x @ g.w_a.t(), dim=-1)
    expected = torch.stack([x[i] + sum(alpha[i, j] * g.basis[j] for j in range(3)) for i in range(4)])
    torch.testing.assert_close(g(x), expected)


def test_graph_model_zero_init_with_batches():
    from torch_geometric.loader import DataLoader

    from qgnn.data.synthetic import random_graph_dataset

    gds = random_graph_dataset(num_graphs=6, seed=0)
    batch = next(iter(DataLoader(gds.dataset, batch_size=6)))
    torch.manual_seed(0)
    m = build_model("gin", "graph", gds.num_features, gds.num_classes, num_layers=2)
    quantize_(m, QuantConfig(method="dq", bits=4))
    m(batch.x, batch.edge_index, batch.batch)
    m.eval()
    ref = m(batch.x, batch.edge_index, batch.batch)
    inject_prompts(m, "gpf-lorap")
    assert torch.equal(m(batch.x, batch.edge_index, batch.batch), ref)


def test_lorap_normalised_logits_formula_zero_init_and_zero_rows():
    torch.manual_seed(0)
    lp = LoRAP(6, k=4, rank=2, normalize=True)
    s = torch.randn(5, 6) * 0.01
    s[3] = 0.0  # an isolated node's aggregate
    assert torch.equal(lp(s), s)  # V = 0: exactly the input
    with torch.no_grad():
        lp.v.normal_()
    rms = s.pow(2).mean(1, keepdim=True).clamp_min(1e-24).sqrt()
    expected = s + torch.softmax((s / rms) @ lp.w_a.T, dim=1) @ lp.u @ lp.v
    assert torch.allclose(lp(s), expected, atol=1e-5)
    assert torch.isfinite(lp(s)).all()
    x = s.clone().requires_grad_(True)
    lp(x).sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in lp.parameters())
    # scale-free mixing: the correction depends on the direction of s only
    assert torch.allclose(lp(10 * s) - 10 * s, lp(s) - s, atol=1e-5)
    with pytest.raises(ConfigError, match="normalize"):
        PromptConfig(kind="lorap", normalize="yes")
