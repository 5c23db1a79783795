"""Aggregation alignment (PromptConfig.align): an extra float pass of each prompted layer gives the target
aggregate; the penalty is λ‖s_q + P(s_q) − s*‖² / ‖s*‖², reaches only the prompts, leaves the output, the
quantizer ranges and BatchNorm statistics as a plain forward leaves them, and is off in eval mode."""

from __future__ import annotations

import copy

import pytest
import torch

from qgnn import QuantConfig, quantize_
from qgnn.data.synthetic import random_node_dataset
from qgnn.errors import ConfigError
from qgnn.models import build_model
from qgnn.prompts import PromptConfig, PromptedLayer, inject_prompts, prompt_parameters, prompted_layers
from qgnn.train.tasks import penalty, penalty_modules

DS = random_node_dataset(40, 10, 3, seed=0)


def _pair(name, method, align=0.5):
    torch.manual_seed(0)
    m = build_model(name, "node", DS.num_features, DS.num_classes)
    quantize_(m, QuantConfig(method=method, bits=4))
    m.train()
    m(DS.data.x, DS.data.edge_index)  # calibrate the observers once
    plain, aligned = copy.deepcopy(m), copy.deepcopy(m)
    inject_prompts(plain, PromptConfig(kind="lorap", k=4, rank=2))
    inject_prompts(aligned, PromptConfig(kind="lorap", k=4, rank=2, align=align))
    aligned.load_state_dict(plain.state_dict())
    return plain, aligned


@pytest.mark.parametrize("name", ["gcn", "gin", "sage", "gat"])
@pytest.mark.parametrize("method", ["qat", "dq", "a2q"])
def test_alignment_changes_nothing_but_the_loss(name, method):
    plain, aligned = _pair(name, method)
    torch.manual_seed(1)
    a = plain(DS.data.x, DS.data.edge_index)
    torch.manual_seed(1)
    b = aligned(DS.data.x, DS.data.edge_index)
    assert torch.allclose(a, b, atol=1e-6)  # the float pass leaves the output (and the random draws) alone
    for (k, u), (_, v) in zip(plain.state_dict().items(), aligned.state_dict().items(), strict=True):
        assert torch.allclose(u.float(), v.float(), atol=1e-6), k  # ranges, BatchNorm statistics
    pen = sum(layer.penalty() for layer in prompted_layers(aligned).values())
    assert torch.is_tensor(pen) and pen.item() > 0
    assert all(layer.penalty() == 0.0 for layer in prompted_layers(plain).values())
    # the runner's loss picks it up beside the method's own terms (A2Q's memory penalty)
    total = penalty(penalty_modules(aligned)) - penalty(penalty_modules(plain))
    assert torch.allclose(total, pen, rtol=1e-4, atol=1e-5)
    # the term's gradient reaches only the prompts, and all of them that shape the correction
    grads = torch.autograd.grad(pen, [p for p in aligned.parameters() if p.requires_grad], allow_unused=True)
    named = dict(zip([n for n, p in aligned.named_parameters() if p.requires_grad], grads, strict=True))
    prompts = set(prompt_parameters(aligned))
    assert all(g is None or not g.abs().sum() for n, g in named.items() if n not in prompts)
    assert all(named[n] is not None for n in prompts if n.endswith(".v"))


def test_alignment_penalty_formula_and_eval_mode():
    plain, aligned = _pair("gcn", "qat", align=2.0)
    layer = aligned.convs[0]
    assert isinstance(layer, PromptedLayer)
    with torch.no_grad():
        layer.aggr_prompt.v.fill_(0.1)
    seen = []

    def grab(module, inputs, out):
        seen.append(out.detach())
        return out

    h = layer.base_layer.register_aggregate_forward_hook(grab)
    layer(DS.data.x, DS.data.edge_index)  # fires grab twice: the float pass, then the quantized one
    h.remove()
    target, s_q = seen
    assert torch.allclose(target, layer._float_aggregate(DS.data.x, DS.data.edge_index))
    assert not torch.allclose(target, s_q)  # 4-bit: the aggregates differ
    expected = 2.0 * (layer.aggr_prompt(s_q) - target).pow(2).sum() / target.pow(2).sum()
    assert torch.allclose(layer.penalty(), expected, rtol=1e-5)
    aligned.eval()
    aligned(DS.data.x, DS.data.edge_index)
    assert layer.penalty() == 0.0


def test_bad_align_is_named():
    with pytest.raises(ConfigError, match="prompt align"):
        PromptConfig(kind="lorap", align=-1)
