"""A layer owns its facts (qgnn.nn.registry): every registered kind has what quantize_, the cost model, the
exporter, the prompts and the runtime ask for, and GraphConv, the layer added through the registry alone,
goes end to end: quantize_, cost, export, the packed and per-layer runtimes, the FP32 twin, prompts."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GraphConv

from qgnn.errors import ConfigError
from qgnn.export import export_model
from qgnn.export.fp32_reference import FP32_OPS, build_fp32_reference
from qgnn.export.packed import PACKED_OPS
from qgnn.export.runtime import RUNTIME_OPS, IntModel
from qgnn.methods import QuantConfig, quantize_
from qgnn.models import build_model
from qgnn.nn import QUANT_LAYER_FOR, QuantGraphConv
from qgnn.nn.registry import LAYERS, facts_for, quant_class_for
from qgnn.prompts import PromptConfig, inject_prompts
from qgnn.prompts.inject import aggregation_dim
from qgnn.search.cost import cost_report
from qgnn.testing.graphs import graph

GRAPH_KINDS = sorted(k for k in LAYERS if k != "linear")


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_kind_declares_its_facts(kind):
    f = LAYERS[kind]
    assert f.quant_cls.KIND == kind and issubclass(f.quant_cls, f.float_cls)
    assert QUANT_LAYER_FOR[f.float_cls] is f.quant_cls
    assert f.cost is not None and kind in RUNTIME_OPS
    if kind != "linear":  # message-passing kinds: exported, prompted, and run packed and in FP32
        assert f.export is not None and f.aggregation_dim is not None
        assert kind in PACKED_OPS and kind in FP32_OPS


def test_lookups_follow_subclasses_and_exact_types():
    layer = GraphConv(4, 3)
    assert facts_for(layer).kind == "graphconv" and quant_class_for(layer) is QuantGraphConv

    class Custom(GraphConv):  # other behaviour: not converted, but still counted as a GraphConv
        pass

    assert quant_class_for(Custom(4, 3)) is None and facts_for(Custom(4, 3)).kind == "graphconv"
    assert facts_for(torch.nn.ReLU()) is None


def _trained_graphconv(bits: int):
    x, ei = graph(40, 160, 6, seed=1, isolated=2)
    y = torch.arange(40) % 3
    torch.manual_seed(0)
    m = build_model("graphconv", "node", 6, 3, hidden=16)
    quantize_(m, QuantConfig(method="qat", bits=bits))
    opt = torch.optim.Adam(m.parameters(), 0.01)
    m.train()
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x, ei), y).backward()
        opt.step()
    return m.eval(), x, ei


@pytest.mark.parametrize("bits", [8, 4])
def test_graphconv_end_to_end(bits):
    m, x, ei = _trained_graphconv(bits)
    assert all(isinstance(c, QuantGraphConv) for c in m.convs)
    assert all("aggr" in c.quant for c in m.convs)  # the aggregate is lin_rel's operand: quantized by default
    from torch_geometric.data import Data

    r = cost_report(m, Data(x=x, edge_index=ei))
    assert not r.unsupported
    # every matmul on b-bit operands: (32 / b)^2 fewer BitOPs; the 0/1-adjacency sums 32 / b (one 1-bit operand)
    for layer in r.layers:
        for op in layer["ops"]:
            expect = 32 / bits if op["op"] == "aggregate" else (32 / bits) ** 2
            assert op["bitops_fp32"] / op["bitops"] == pytest.approx(expect), op
    with torch.no_grad():
        ref = m(x, ei)
    tensors, desc = export_model(m)
    assert [c["type"] for c in desc["model"]["convs"]] == ["graphconv", "graphconv"]
    packed, per_layer = IntModel(tensors, desc), IntModel(tensors, desc, packed=False)
    assert packed.packed is not None
    for im in (packed, per_layer):
        out = im(x, ei)
        assert torch.equal(out.argmax(1), ref.argmax(1))
        assert float(((out - ref).abs() / ref.abs().max()).max()) < 2e-2
        assert set(im.paths.values()) == {"int8 x int8 -> int32", "integer"}, im.paths
    fp32 = build_fp32_reference(tensors, desc)
    assert isinstance(fp32.convs[0], GraphConv) and fp32(x, ei).shape == ref.shape


def test_graphconv_takes_prompts_and_refuses_edge_weights():
    m, x, ei = _trained_graphconv(8)
    assert aggregation_dim(m.convs[0]) == 6 and aggregation_dim(m.convs[1]) == 16
    inject_prompts(m, PromptConfig(kind="lorap"))
    with torch.no_grad():
        assert m(x, ei).shape == (40, 3)
    with pytest.raises(ConfigError, match="edge weights"):
        QuantGraphConv(4, 3)(torch.randn(5, 4), torch.tensor([[0, 1], [1, 2]]), torch.ones(2))
