"""The packed GIN op's two shortcuts (qgnn.export.packed_ops.PackedGIN): a Linear without an output quantizer and
the BatchNorm after it run as one folded GEMM, and the self term ``(1 + ε) x̂_i`` joins the neighbour sum as a
self loop of the plan. Both give the per-layer runtime's result up to float32 rounding (the same tolerance as
the other packed tests), with a negative BatchNorm weight, ε ≠ 0, isolated nodes and a prompt (which keeps
the self term apart)."""

from __future__ import annotations

import pytest
import torch
from qgnn_export_testutil import NODE_DATA, graph_batches, graph_model, node_model

from qgnn.export import IntModel, export_model
from qgnn.export.packed_ops import PackedGIN, _Lin

D = NODE_DATA.data
ISOLATED = 3


def _graph_with_an_isolated_node() -> torch.Tensor:
    ei = D.edge_index
    return ei[:, (ei[0] != ISOLATED) & (ei[1] != ISOLATED)]


GRAPH = _graph_with_an_isolated_node()


def assert_agrees(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert float((out.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.999
    rel = (out - ref).abs() / ref.abs().max().clamp(min=1e-6)
    assert float(rel.median()) < 1e-6 and float(rel.max()) < 2e-2


def _both(tensors, desc):
    return IntModel(tensors, desc), IntModel(tensors, desc, packed=False)


def _compare_graph(im, ref):
    outs, refs = [], []
    for b in graph_batches(20):
        outs.append(im(b.x, b.edge_index, b.batch))
        refs.append(ref(b.x, b.edge_index, b.batch))
    out, r = torch.cat(outs), torch.cat(refs)
    assert float((out.argmax(1) == r.argmax(1)).float().mean()) >= 0.999
    rel = (out - r).abs() / r.abs().max()
    assert float(rel.median()) < 1e-5 and float(rel.max()) < 2e-2


@pytest.mark.parametrize(("method", "bits"), [("qat", 8), ("qat", 4), ("dq", 4), ("lsq", 4)])
def test_mlp_norm_folds_into_the_linear_before_it(method, bits):
    tensors, desc = export_model(graph_model("gin", method, bits))
    # a negative weight on half the channels: the folded per-channel scales change sign
    for k, t in tensors.items():
        if k.endswith("nn.1.weight"):
            t[::2] *= -1
    im, ref = _both(tensors, desc)
    for layer in im.packed.layers:
        assert isinstance(layer, PackedGIN)
        kinds = [type(m).__name__ for m, _, _ in layer.steps]
        assert kinds == ["Linear", "ReLU", "Linear"], kinds  # Linear · BatchNorm as one step
        # the last Linear took the graph model's norm after the layer (norms[i])
        assert [folded for _, _, folded in layer.steps] == [True, False, True]
    assert im.packed.norms == [None] * len(im.packed.layers)
    _compare_graph(im, ref)


def test_fold_is_the_linear_then_the_norm():
    # the folded layer's float output against the two ops, on every backend path of _Lin
    from qgnn.export.runtime import BatchNorm

    tensors, desc = export_model(graph_model("gin", "qat", 8))
    im = IntModel(tensors, desc)
    layer = im.packed.layers[1]
    (lin_m, lin), (bn, _) = layer.mlp[0], layer.mlp[1]
    assert isinstance(bn, BatchNorm)
    bn.weight[1::3] *= -2.0
    folded = lin.fold(bn)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(57, lin_m.weight.shape[1], generator=g) * 3
    for q in (lin_m.input, None):
        want = bn(lin(q, x.clone(), 0), None)
        got = folded(q, x.clone(), 0)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert folded.prep is not lin.prep and torch.equal(folded.prep.w, lin.prep.w)  # the codes are shared


def test_an_output_quantizer_keeps_the_norm_apart():
    tensors, desc = export_model(graph_model("gin", "qat", 8))
    lin0 = desc["model"]["convs"][0]["nn"][0]
    lin0["slots"]["output"] = dict(lin0["slots"]["input"], signed=True, qmin=-128, qmax=127)
    im, ref = _both(tensors, desc)
    assert [f for _, _, f in im.packed.layers[0].steps] == [False, False, False, True]
    assert [f for _, _, f in im.packed.layers[1].steps] == [True, False, True]
    # an output quantizer on the layer keeps the model's norm after it apart
    desc["model"]["convs"][1]["slots"]["output"] = dict(lin0["slots"]["output"])
    im, ref = _both(tensors, desc)
    assert [f for _, _, f in im.packed.layers[1].steps] == [True, False, False]
    assert im.packed.norms[1] is not None and im.packed.norms[0] is None
    _compare_graph(im, ref)


@pytest.mark.parametrize("eps", [0.0, 0.375, -0.5])
def test_self_term_as_a_self_loop(eps):
    tensors, desc = export_model(node_model("gin", "qat", 8))
    for conv in desc["model"]["convs"]:
        conv["eps"] = eps
    im, ref = _both(tensors, desc)
    n, e = D.num_nodes, GRAPH.size(1)
    prepared = im.prepare(D.x, GRAPH)
    layer = im.packed.layers[0]
    assert layer.form() == ("gin", eps)
    plan = prepared["plans"][layer.form()]
    assert plan.indices.numel() == e + n  # one loop per node, the isolated one included
    assert (plan.values is None) == (eps == 0.0)
    # each target's loop is its last entry (the self term is added last, as in Σ_j x̂_j + (1 + ε) x̂_i)
    assert torch.equal(plan.indices[(plan.indptr[1:] - 1).long()].long(), torch.arange(n))
    assert plan.deg[ISOLATED] == 1
    out = im.run(prepared)
    assert_agrees(out, ref(D.x, GRAPH))
    if eps == 0.0:
        assert im.paths[f"{layer.name}.aggregate"] == "integer"


def test_a_prompt_keeps_the_self_term_apart():
    tensors, desc = export_model(node_model("gin", "qat", 8))
    im = IntModel(tensors, desc)
    layer = im.packed.layers[0]
    layer.prompt = lambda s: s  # what a LoRAP prompt's presence does: it reads the neighbour sum alone
    assert layer.form() == ("raw",)
    prepared = im.prepare(D.x, GRAPH)
    assert prepared["plans"][("raw",)].indices.numel() == GRAPH.size(1)


def test_lin_fold_without_bias_or_affine():
    # a bias-free Linear before a norm without weight / bias: g = 1 / sqrt(var + eps), bias −μ g
    from qgnn.export.runtime import BatchNorm

    w = torch.randn(5, 3)
    lin = _Lin(w, None, "auto")
    bn = BatchNorm.__new__(BatchNorm)
    bn.weight = bn.bias = None
    bn.mean, bn.var, bn.eps = torch.randn(5), torch.rand(5) + 0.1, 1e-5
    x = torch.randn(4, 3)
    assert torch.allclose(lin.fold(bn)(None, x, 0), bn(lin(None, x, 0), None), atol=1e-5)


@pytest.mark.parametrize(("task", "name", "method", "bits"),
                         [("graph", "gin", "qat", 8), ("graph", "gin", "dq", 4), ("node", "sage", "qat", 8),
                          ("node", "gin", "lsq", 4)])
def test_small_layers_run_exact_float_gemms(task, name, method, bits, monkeypatch):
    # a layer of at most SMALL_ROWS rows (graph batches, pooled rows, a small graph) runs its float-input GEMMs as
    # exact float32 GEMMs on the codes; above it, fbgemm's kernel: both agree with the per-layer runtime
    from qgnn.kernels import intops

    calls = []
    real = intops._float_exact_from_float

    def counted(*a, **k):
        calls.append(a[0].size(0))
        return real(*a, **k)

    monkeypatch.setattr(intops, "_float_exact_from_float", counted)
    model = graph_model(name, method, bits) if task == "graph" else node_model(name, method, bits)
    im, ref = _both(*export_model(model))

    def check():
        if task == "graph":
            _compare_graph(im, ref)
        else:
            assert_agrees(im(D.x, GRAPH), ref(D.x, GRAPH))

    check()
    assert calls, "no GEMM took the small-layer path"
    calls.clear()
    monkeypatch.setattr(intops, "SMALL_ROWS", 0)
    # no small layers: fbgemm, or (codes that saturate it on a CPU without AVX512-VNNI) the exact fallback,
    # here int_mm so that the float path's calls count the small layers alone
    monkeypatch.setattr(intops, "int_mm_fast", lambda: (True, "test"))
    check()
    assert calls == []
