"""The FP32 PyG reference of an export file (qgnn.export.fp32_reference) and `qgnn eval --fp32-reference`.

The reference must be exactly the fake-quant model with its activation quantizers switched off (the same
dequantized weights, no other rounding), built from plain PyG / torch layers, on a graph prepared once; the
integer runtime must predict like it on a trained 8-bit model; the CLI reports both sides.
"""

from __future__ import annotations

import json

import pytest
import torch
from qgnn_export_testutil import NODE_DATA, graph_batches, graph_model, node_model

from conftest import needs_data
from qgnn.cli import main
from qgnn.errors import ConfigError
from qgnn.export import IntModel, export_model, write_file
from qgnn.export import fp32_reference as fr
from qgnn.export.fp32_reference import FP32Graph, FP32Reference, build_fp32_reference, from_file
from qgnn.nn import QuantModule

WEIGHT_SLOTS = ("weight", "weight_root", "att")


def weights_only(model):
    """The fake-quant model with every activation quantizer off: float compute on the fake-quant weights (and
    GCN's cached normalisation of the training graph dropped, so that it sees the test graph)."""
    for m in model.modules():
        if getattr(m, "cached", False):
            m.cached, m._cached_edge_index = False, None
            m.__dict__.pop("_cached_graph", None)
        if isinstance(m, QuantModule):
            for slot, q in m.quantizers().items():
                if slot not in WEIGHT_SLOTS:
                    q.enabled = False
    return model


def directed_graph():
    """NODE_DATA made directed (a transposed adjacency gives other sums), with five self-loops (GCN adds only
    the missing ones, GAT replaces them) and node 0 without in-edges (mean over no neighbours)."""
    ei = NODE_DATA.data.edge_index
    ei = ei[:, ei[0] < ei[1]]
    ei = ei[:, ei[1] != 0]
    loops = torch.arange(5, 10).repeat(2, 1)
    return torch.cat([ei, loops], 1)


def close(out, ref, rel=1e-4):
    scale = ref.abs().max().clamp(min=1e-6)
    assert float((out - ref).abs().max() / scale) < rel


def only_pyg_and_torch(model):
    for m in model.modules():
        assert type(m).__module__.split(".")[0] in ("torch", "torch_geometric") or m is model, type(m)


@pytest.mark.parametrize("name,method", [("gcn", "qat"), ("sage", "qat"), ("gin", "qat"), ("gat", "qat"),
                                         ("gcn", "a2q"), ("sage", "lsq")])
def test_node_reference_is_the_fake_quant_model_without_activation_quantizers(tmp_path, name, method):
    m = node_model(name, method, 4)
    path = tmp_path / "m.qgnn.safetensors"
    write_file(path, *export_model(m))
    ref = from_file(path)
    assert isinstance(ref, FP32Reference)
    only_pyg_and_torch(ref)
    x, ei = NODE_DATA.data.x, directed_graph()
    out = ref(x, ref.graph(ei, x.size(0)))
    with torch.no_grad():
        expect = weights_only(m)(x, ei)
        for q in (q for mod in m.modules() if isinstance(mod, QuantModule) for q in mod.quantizers().values()):
            q.enabled = False  # now the weights too: the float model the codes were quantized from
        float_weights = m(x, ei)
    close(out, expect)
    # the weights are the dequantized ones, not the float weights the codes came from
    assert float((out - float_weights).abs().max()) > 1e-3
    # an edge_index instead of a prepared graph: the same result (built inside the call)
    assert torch.equal(ref(x, ei), out)


@pytest.mark.parametrize("name,readout_norm", [("gin", True), ("gcn", False)])
def test_graph_reference_is_the_fake_quant_model_without_activation_quantizers(name, readout_norm):
    m = weights_only(graph_model(name, "qat", 4, readout_norm=readout_norm))
    ref = build_fp32_reference(*export_model(m))
    only_pyg_and_torch(ref)
    for b in graph_batches():
        with torch.no_grad():
            expect = m(b.x, b.edge_index, b.batch)
        close(ref(b.x, ref.graph(b.edge_index, b.num_nodes), b.batch), expect)


@pytest.mark.parametrize("name", ["gcn", "sage", "gin", "gat", "graphconv"])
def test_integer_runtime_predicts_like_the_reference_on_a_trained_8bit_model(name):
    m = node_model(name, "qat", 8, steps=60)
    tensors, desc = export_model(m)
    ref = build_fp32_reference(tensors, desc)
    d = NODE_DATA.data
    fp32 = ref(d.x, ref.graph(d.edge_index, d.num_nodes)).argmax(-1)
    integer = IntModel(tensors, desc)(d.x, d.edge_index).argmax(-1)
    assert float((fp32 == integer).float().mean()) >= 0.95
    assert float((fp32 == d.y).float().mean()) > 0.8  # trained: far above the 25 % of chance


def test_forward_does_no_graph_preprocessing(monkeypatch):
    """Normalisation and CSR conversion happen in graph() ("load"), never in the timed forward."""
    m = node_model("gcn", "qat", 4)
    ref = build_fp32_reference(*export_model(m))
    d = NODE_DATA.data
    g = ref.graph(d.edge_index, d.num_nodes)
    assert isinstance(g, FP32Graph) and set(g.adj) == {("gcn", "source_to_target", False, True)}
    assert all(a.layout == torch.sparse_csr for a in g.adj.values())
    expect = ref(d.x, g)

    def boom(*a, **k):
        raise AssertionError("graph preprocessing inside forward")

    for f in ("gcn_norm", "to_torch_csr_tensor", "add_self_loops", "remove_self_loops"):
        monkeypatch.setattr(fr, f, boom)
    assert torch.equal(ref(d.x, g), expect)
    with pytest.raises(ConfigError, match="nodes"):
        ref(d.x[:10], g)


def test_unbuildable_kinds_are_refused_with_one_line():
    with pytest.raises(ConfigError, match="LightGCN"):
        build_fp32_reference({}, {"task": "rec", "model": {}})
    tensors, desc = export_model(node_model("gcn", "qat", 4))
    desc["model"]["convs"][0]["type"] = "cheb"
    with pytest.raises(ConfigError, match="'cheb' has no FP32 PyG reference"):
        build_fp32_reference(tensors, desc)
    with pytest.raises(ConfigError, match="outside"):
        fr.fp32_graph(torch.tensor([[0, 5], [1, 0]]), 3)


def _train_export(tmp_path, capsys, args):
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "m.qgnn.safetensors"
    assert main(["train", *args, "--out", str(tmp_path / "run.json"), "--save", str(ckpt), "--quiet"]) == 0
    assert main(["export", str(ckpt), str(out)]) == 0
    capsys.readouterr()
    return out


def _check_report(path, res, screen):
    r = json.loads(res.read_text())
    for k in ("latency_ms", "peak_memory_bytes", "fp32", "speedup", "memory_ratio"):
        assert k in r
    assert set(r["fp32"]) == {"latency_ms", "peak_memory_bytes", "accuracy", "agreement"}
    f = r["fp32"]
    assert r["latency_ms"] > 0 and f["latency_ms"] > 0
    assert r["speedup"] == pytest.approx(f["latency_ms"] / r["latency_ms"])
    assert 0 <= f["accuracy"] <= 1 and 0 < f["agreement"] <= 1
    for word in ("FP32 PyG", "speedup", "memory (integer / FP32)", "predictions agree"):
        assert word in screen
    # fp32.accuracy is the reference's own accuracy on the same examples
    from qgnn.export.evaluate import _accuracy, eval_inputs, run_all

    ref = from_file(path)
    _, inputs = eval_inputs(ref.desc)
    assert f["accuracy"] == pytest.approx(_accuracy(run_all(ref, inputs), inputs)[0], abs=1e-12)
    return r


@needs_data
def test_cli_fp32_reference_on_cora(tmp_path, capsys):
    out = _train_export(tmp_path, capsys, ["--dataset", "Cora", "--model", "gcn", "--method", "qat", "--bits",
                                           "8", "--epochs", "20", "--seeds", "1"])
    res = tmp_path / "eval.json"
    assert main(["eval", str(out), "--fp32-reference", "--repeats", "2", "--out", str(res)]) == 0
    r = _check_report(out, res, capsys.readouterr().out)
    assert r["peak_memory_bytes"] > 0 and r["fp32"]["peak_memory_bytes"] > 0
    assert r["speedup"] > 0 and r["memory_ratio"] == pytest.approx(r["peak_memory_bytes"] /
                                                                   r["fp32"]["peak_memory_bytes"])
    assert r["fp32"]["agreement"] >= 0.95


def test_cli_fp32_reference_graph_task(tmp_path, capsys):
    out = _train_export(tmp_path, capsys, ["--dataset", "synthetic-graph", "--model", "gin", "--method", "qat",
                                           "--bits", "8", "--epochs", "3", "--folds", "1"])
    res = tmp_path / "eval.json"
    assert main(["eval", str(out), "--fp32-reference", "--repeats", "2", "--out", str(res)]) == 0
    r = _check_report(out, res, capsys.readouterr().out)
    f = r["fp32"]
    assert f["peak_memory_bytes"] >= 0  # tiny graphs may need no new pages: the ratio is then null
    assert r["memory_ratio"] is None if f["peak_memory_bytes"] == 0 else r["memory_ratio"] >= 0


def test_cli_refuses_fp32_reference_for_rec_models(tmp_path, capsys):
    out = _train_export(tmp_path, capsys, ["--dataset", "synthetic-rec", "--model", "lightgcn", "--method", "qat",
                                           "--bits", "4", "--epochs", "1", "--seeds", "1", "--hidden", "5",
                                           "--batch-size", "64"])
    assert main(["eval", str(out), "--fp32-reference"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fp32-reference" in err[0] and "LightGCN" in err[0]
