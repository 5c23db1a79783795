"""Node prompts after the input quantizer (PromptConfig.node_after_quant) and the slot hooks they use
(QuantLayer.register_slot_hook): the prompt acts on the quantized input, so the input quantizer sees (and
fits its range to) the raw features only; zero-initialised, the model is the host; hooks come off again."""

from __future__ import annotations

import copy

import pytest
import torch

from qgnn import QuantConfig, quantize_
from qgnn.data.synthetic import random_node_dataset
from qgnn.errors import ConfigError
from qgnn.models import build_model
from qgnn.prompts import PromptConfig, inject_prompts, prompted_layers

DS = random_node_dataset(40, 10, 3, seed=0)


def _host(name, method):
    torch.manual_seed(0)
    m = build_model(name, "node", DS.num_features, DS.num_classes)
    quantize_(m, QuantConfig(method=method, bits=4))
    return m


def _first_quant_layer(model):
    return next(m for m in model.modules() if hasattr(m, "register_slot_hook") and "input" in m.quant)


def test_slot_hook_replaces_the_quantized_input_and_comes_off():
    model = _host("gcn", "qat").eval()
    model(DS.data.x, DS.data.edge_index)
    layer = _first_quant_layer(model)
    seen = []
    handle = layer.register_slot_hook("input", lambda mod, xq: seen.append(xq.detach()) or xq * 0)
    out_hooked = model(DS.data.x, DS.data.edge_index)
    handle.remove()
    out_plain = model(DS.data.x, DS.data.edge_index)
    # the hook saw the fake-quantized features: on the quantizer's grid, not the raw ones
    xq = layer.quant["input"](DS.data.x)
    torch.testing.assert_close(seen[0], xq.detach())
    assert not torch.equal(seen[0], DS.data.x)
    assert not torch.allclose(out_hooked, out_plain)  # zeroed input: another output
    assert not layer.__dict__["_slot_hooks"]["input"]  # removed
    with pytest.raises(ConfigError, match="no quantizer slot 'colour'"):
        layer.register_slot_hook("colour", lambda mod, x: x)


def test_slot_hook_turns_off_the_integer_path():
    model = _host("gin", "qat").eval()
    model(DS.data.x, DS.data.edge_index)
    layer = _first_quant_layer(model)
    layer.integer_aggregation = True
    assert layer.integer_aggregation_mode() == "input"
    handle = layer.register_slot_hook("input", lambda mod, x: x)
    assert layer.integer_aggregation_mode() is None
    handle.remove()
    assert layer.integer_aggregation_mode() == "input"


@pytest.mark.parametrize("name", ["gcn", "gin", "sage", "gat"])
@pytest.mark.parametrize("method", ["qat", "dq", "a2q"])
def test_zero_prompt_after_quant_is_the_host(name, method):
    host = _host(name, method).eval()
    host(DS.data.x, DS.data.edge_index)  # calibrate
    prompted = inject_prompts(copy.deepcopy(host), PromptConfig(kind="gpf-lorap", k=4, node_after_quant=True))
    torch.testing.assert_close(prompted(DS.data.x, DS.data.edge_index), host(DS.data.x, DS.data.edge_index),
                               rtol=0, atol=0)


@pytest.mark.parametrize("method", ["qat", "dq"])
def test_prompt_after_quant_leaves_the_input_range_to_the_features(method):
    """Before the quantizer a dense prompt widens the min / max range it fits; after it, the range is the
    host's, and the prompt still changes the output and gets a gradient."""
    ranges, outs = {}, {}
    for after in (False, True):
        model = inject_prompts(_host("gcn", method), PromptConfig(kind="gpf", node_after_quant=after))
        layer = prompted_layers(model)["convs.0"]
        with torch.no_grad():
            layer.node_prompt.p.fill_(3.0)  # larger than any feature
        model.train()
        torch.manual_seed(1)
        out = model(DS.data.x, DS.data.edge_index)
        out.sum().backward()
        assert layer.node_prompt.p.grad.abs().sum() > 0
        obs = layer.base_layer.quant["input"].observer
        ranges[after], outs[after] = float(obs.max_val), out.detach()
    host = _host("gcn", method).train()
    torch.manual_seed(1)
    host_out = host(DS.data.x, DS.data.edge_index)
    host_max = float(_first_quant_layer(host).quant["input"].observer.max_val)
    assert ranges[False] > host_max + 2.5   # the prompt moved the range
    assert ranges[True] == pytest.approx(host_max)
    assert not torch.allclose(outs[True], host_out.detach())


def test_bad_node_after_quant_is_named():
    with pytest.raises(ConfigError, match="node_after_quant must be true or false"):
        PromptConfig(kind="gpf-plus", node_after_quant="yes")
