"""ONNX export (``qgnn export --format onnx``, ``qgnn.export.onnx_export.to_onnx``): onnxruntime runs the model
and its predictions equal the integer runtime's (``load_int_model`` / ``IntModel``) on >= 99.9 % of nodes /
graphs; logits agree up to float rounding (median relative difference < 1e-6; a tie flip of one code of a
later quantizer may move some logits by about one quantization step: max relative difference < 2e-2).
Skipped where onnx / onnxruntime (the ``onnx`` extra) are missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from qgnn_export_testutil import (  # noqa: E402
    NODE_DATA,
    graph_batches,
    graph_model,
    node_model,
    scramble_a2q_widths,
)

from conftest import needs_data  # noqa: E402
from qgnn.cli import main  # noqa: E402
from qgnn.errors import ConfigError  # noqa: E402
from qgnn.export import IntModel, export_model, load_int_model, write_file  # noqa: E402
from qgnn.export.onnx_export import build_onnx, to_onnx  # noqa: E402

D = NODE_DATA.data
MIN_AGREEMENT = 0.999


def session(model, level=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(sess, x, edge_index, batch=None) -> torch.Tensor:
    feeds = {"x": x.numpy(), "edge_index": edge_index.numpy()}
    if batch is not None:
        feeds["batch"] = batch.numpy()
    return torch.from_numpy(sess.run(["logits"], feeds)[0])


def check_close(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Prediction agreement (asserted >= 99.9 %) and logits equal up to float rounding; returns the agreement."""
    assert out.shape == ref.shape
    agree = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    assert agree >= MIN_AGREEMENT, agree
    rel = (out - ref).abs() / ref.abs().max().clamp(min=1e-6)
    assert float(rel.median()) < 1e-6
    assert float(rel.max()) < 2e-2
    return agree


def ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


def onnx_and_runtime(m):
    tensors, desc = export_model(m)
    model, paths = build_onnx(tensors, desc)
    return model, paths, IntModel(tensors, desc)


# --------------------------------------------------------------------------------------------------
# agreement with the integer runtime
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gcn", "gin", "sage", "gat"])
@pytest.mark.parametrize("bits", [8, 4])
def test_node_models_agree_with_runtime(name, bits):
    m = node_model(name, "qat", bits)
    model, paths, im = onnx_and_runtime(m)
    out = run(session(model), D.x, D.edge_index)
    check_close(out, im(D.x, D.edge_index))
    # onnxruntime's graph optimisations (fusions) change nothing
    assert torch.equal(run(session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL), D.x, D.edge_index), out)
    # integer matmuls and integer neighbourhood sums: QuantizeLinear codes, ScatterND aggregation
    assert set(paths.values()) == {"MatMulInteger", "integer"}, paths
    assert {"MatMulInteger", "QuantizeLinear", "ScatterND"} <= ops(model)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # standard operators only
    # weights as uint8: onnxruntime's uint8 x int8 kernel saturates int16 pair sums without AVX512-VNNI
    inits = {t.name: t for t in model.graph.initializer}
    weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert weights and all(t.data_type == onnx.TensorProto.UINT8 for t in weights)
    if bits < 8:
        assert "Clip" in ops(model)  # codes clamped to the narrower grid


@pytest.mark.parametrize("name", ["gcn", "sage"])
@pytest.mark.parametrize("method", ["lsq", "dq"])
def test_other_methods(name, method):
    m = node_model(name, method, 4)
    model, _, im = onnx_and_runtime(m)
    check_close(run(session(model), D.x, D.edge_index), im(D.x, D.edge_index))


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_very_low_bits(bits):
    m = node_model("gcn", "qat", bits)  # 1 bit: binary weights {-1, +1}, unsigned {0, 1} activations
    model, _, im = onnx_and_runtime(m)
    check_close(run(session(model), D.x, D.edge_index), im(D.x, D.edge_index))


@pytest.mark.parametrize("name", ["gin", "gcn"])
@pytest.mark.parametrize("bits,readout_norm", [(8, True), (4, False)])
def test_graph_models_agree_with_runtime(name, bits, readout_norm):
    m = graph_model(name, "qat", bits, readout_norm=readout_norm)
    model, _, im = onnx_and_runtime(m)
    assert [i.name for i in model.graph.input] == ["x", "edge_index", "batch"]
    sess = session(model)
    outs, refs = [], []
    for b in graph_batches(20):
        outs.append(run(sess, b.x, b.edge_index, b.batch))
        refs.append(im(b.x, b.edge_index, b.batch))
    check_close(torch.cat(outs), torch.cat(refs))


def _train(m, batches, graph: bool):
    import torch.nn.functional as F

    from qgnn import QuantConfig, quantize_

    quantize_(m, QuantConfig(method="qat", bits=4))
    opt = torch.optim.Adam(m.parameters(), 0.01)
    m.train()
    for b in batches:
        opt.zero_grad()
        out = m(b.x, b.edge_index, b.batch) if graph else m(b.x, b.edge_index)
        F.cross_entropy(out, b.y).backward()
        opt.step()
    return m.eval()


def test_other_options():
    """Max pooling, a trained GIN ε (the self term (1 + ε) x̂_i), SAGE with sum aggregation."""
    from qgnn.models import build_model

    torch.manual_seed(0)
    batches = graph_batches()
    b0 = batches[0]
    m = _train(build_model("gin", "graph", b0.x.size(1), 2, num_layers=2, pooling="max", train_eps=True),
               batches, graph=True)
    model, _, im = onnx_and_runtime(m)
    assert any(abs(conv["eps"]) > 0 for conv in im.desc["model"]["convs"])
    sess = session(model)
    check_close(torch.cat([run(sess, b.x, b.edge_index, b.batch) for b in batches]),
                torch.cat([im(b.x, b.edge_index, b.batch) for b in batches]))
    m = _train(build_model("sage", "node", D.x.size(1), NODE_DATA.num_classes, aggr="sum"), [D] * 4, graph=False)
    model, _, im = onnx_and_runtime(m)
    assert im.desc["model"]["convs"][0]["options"]["aggr"] == "sum"
    check_close(run(session(model), D.x, D.edge_index), im(D.x, D.edge_index))


@pytest.mark.parametrize("name", ["gcn", "gin", "sage", "gat"])
def test_a2q_per_node_tables(name):
    # a step and a width per node: the ONNX model is tied to the training graph's node count
    m = node_model(name, "a2q", 4, steps=2)
    scramble_a2q_widths(m)
    model, _, im = onnx_and_runtime(m)
    check_close(run(session(model), D.x, D.edge_index), im(D.x, D.edge_index))


@pytest.mark.parametrize("name", ["gcn", "gin", "sage"])
def test_uniform_per_node_tables(name):
    # per-node scales and zero-points: QuantizeLinear along axis 0, MatMulInteger with the per-row zero-points
    # subtracted as z_x · Σ_k (q_w − z_w) (onnxruntime takes a scalar a_zero_point only)
    from qgnn.quant import UniformQuantizer

    m = node_model(name, "qat", 8, steps=0)
    for conv, bits in zip(m.convs, (8, 4), strict=True):
        conv.set_quantizer("input", UniformQuantizer(bits, granularity="node", num_nodes=D.num_nodes, signed=True))
    m.train()
    m(D.x, D.edge_index)  # calibrate the new quantizers
    m.eval()
    model, paths, im = onnx_and_runtime(m)
    zp = im.desc["model"]["convs"][0]["slots"]["input"]["zero_point"]
    assert isinstance(zp, str) and bool(export_model(m)[0][zp].any())  # non-zero per-row zero-points
    check_close(run(session(model), D.x, D.edge_index), im(D.x, D.edge_index))
    assert "MatMulInteger" in paths.values()


def test_a2q_nearest_neighbour_groups_under_every_optimisation_level():
    # per-row groups picked at run time (and per-row scales inside MatMulInteger): onnxruntime's fusions
    # (MatMulIntegerToFloat at the extended level) must not change the result
    m = graph_model("gin", "a2q", 4, options={"node_strategy": "nn"})
    scramble_a2q_widths(m, seed=1)
    model, _, im = onnx_and_runtime(m)
    levels = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
    sessions = [session(model, lv) for lv in levels]
    for b in graph_batches(20):
        ref = im(b.x, b.edge_index, b.batch)
        outs = [run(s, b.x, b.edge_index, b.batch) for s in sessions]
        check_close(outs[1], ref)
        assert torch.equal(outs[0], outs[1])


def test_per_channel_activations_and_float_slots():
    from qgnn.quant import UniformQuantizer

    # per-channel input scales sit inside Σ_k: the float MatMul on dequantized codes (the fake-quant path);
    # compared with the runtime and with the fake-quant model itself, the specification of both
    m = node_model("gcn", "qat", 8, steps=0)
    m.convs[0].set_quantizer("input", UniformQuantizer(8, granularity="channel"))
    m.train()
    m(D.x, D.edge_index)  # calibrate the new quantizer
    m.eval()
    model, paths, im = onnx_and_runtime(m)
    with torch.no_grad():
        ref = m(D.x, D.edge_index)
    out = run(session(model), D.x, D.edge_index)
    check_close(out, ref)
    check_close(out, im(D.x, D.edge_index))
    assert paths["convs.0.xw"] == "float MatMul" and paths["convs.0.aggregate"] == "integer"
    # edge weights left float: the float neighbourhood sum
    m = node_model("gcn", "qat", 8, steps=1, slots=("input", "weight", "xw"))
    model, paths, im = onnx_and_runtime(m)
    check_close(run(session(model), D.x, D.edge_index), im(D.x, D.edge_index))
    assert paths["convs.0.aggregate"] == "float"


# --------------------------------------------------------------------------------------------------
# awkward graphs: N and E are dynamic
# --------------------------------------------------------------------------------------------------


GRAPHS = {
    "no edges": (7, [[], []]),
    "isolated node": (5, [[0, 1, 2], [1, 2, 0]]),  # nodes 3 and 4 have no neighbour
    "one node": (1, [[], []]),
    "self loop": (3, [[0, 1], [0, 2]]),
}


@pytest.mark.parametrize("name", ["gcn", "gin", "sage", "gat"])
def test_awkward_graphs(name):
    model, _, im = onnx_and_runtime(node_model(name, "qat", 4))
    sess = session(model)
    for n, edges in GRAPHS.values():
        x, ei = D.x[:n], torch.tensor(edges, dtype=torch.long).view(2, -1)
        out, ref = run(sess, x, ei), im(x, ei)
        assert out.shape == (n, NODE_DATA.num_classes)
        assert torch.equal(out.argmax(-1), ref.argmax(-1))
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_graph_task_without_edges():
    model, _, im = onnx_and_runtime(graph_model("gin", "qat", 4))
    x = torch.rand(6, graph_batches()[0].x.size(1))
    ei, batch = torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0, 1, 1, 1, 2])
    out = run(session(model), x, ei, batch)
    assert out.shape[0] == 3
    assert torch.allclose(out, im(x, ei, batch), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# API, CLI and refusals
# --------------------------------------------------------------------------------------------------


def test_to_onnx_from_a_file_writes_atomically(tmp_path):
    m = node_model("sage", "qat", 4)
    tensors, desc = export_model(m)
    packed = write_file(tmp_path / "m.qgnn.safetensors", tensors, desc)
    out = tmp_path / "m.onnx"
    model = to_onnx(packed, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.qgnn.safetensors"]  # no temp file left
    onnx.checker.check_model(onnx.load(str(out)))
    assert out.read_bytes() == model.SerializeToString()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "edge_index"]
    # the same model from the in-memory pair
    assert to_onnx((tensors, desc)).SerializeToString() == model.SerializeToString()
    check_close(run(sess, D.x, D.edge_index), load_int_model(packed)(D.x, D.edge_index))


def test_refusals_are_one_line():
    from qgnn.export.onnx_graph import Builder
    from qgnn.export.onnx_layers import Ctx, emit

    with pytest.raises(ConfigError, match="LightGCN") as e:  # rec files: refused (the CLI test trains one)
        build_onnx({}, {"task": "rec", "model": {}})
    assert "\n" not in str(e.value)
    # a layer type without an ONNX emitter (a new layer added to the packed format) names itself
    with pytest.raises(ConfigError, match="'graphconv' is not supported by the ONNX export") as e:
        emit(Ctx(Builder(), {}, "edge_index", "n"), {"type": "graphconv"}, "x", "convs.0")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="export file path or a"):
        to_onnx(["not", "a", "model"])


def test_missing_onnx_gives_one_clear_error(monkeypatch):
    import sys

    from qgnn.export.onnx_export import require_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'qgnn\[onnx\]'"):
        require_onnx()


def test_cli_export_onnx(tmp_path, capsys):
    ckpt, packed, out = tmp_path / "run.ckpt", tmp_path / "m.qgnn.safetensors", tmp_path / "m.onnx"
    assert main(["train", "--dataset", "synthetic-node", "--model", "gcn", "--method", "qat", "--bits", "4",
                 "--epochs", "3", "--seeds", "1", "--out", str(tmp_path / "run.json"), "--save", str(ckpt),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(ckpt), str(out), "--format", "onnx"]) == 0
    screen = capsys.readouterr().out.strip().splitlines()
    assert len(screen) == 1 and "ONNX opset 18" in screen[0] and f"{out.stat().st_size:,} bytes" in screen[0]
    assert main(["export", str(ckpt), str(packed)]) == 0  # the default format is still the packed file
    capsys.readouterr()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    from qgnn.export.evaluate import eval_inputs

    im = load_int_model(packed)
    _, inputs = eval_inputs(im.desc)
    x, ei = inputs[0][0], inputs[0][1]
    check_close(run(sess, x, ei), im(x, ei))


def test_cli_refuses_rec_checkpoints(tmp_path, capsys):
    ckpt = tmp_path / "rec.ckpt"
    assert main(["train", "--dataset", "synthetic-rec", "--model", "lightgcn", "--method", "qat", "--bits", "4",
                 "--epochs", "1", "--seeds", "1", "--hidden", "5", "--batch-size", "64", "--out",
                 str(tmp_path / "r.json"), "--save", str(ckpt), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(ckpt), str(tmp_path / "rec.onnx"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LightGCN" in err[0] and "not supported" in err[0]
    assert not (tmp_path / "rec.onnx").exists()


# --------------------------------------------------------------------------------------------------
# Cora
# --------------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("bits", [8, 4])
def test_cora_agreement(bits):
    import torch.nn.functional as F

    from qgnn import QuantConfig, quantize_
    from qgnn.data import load_dataset
    from qgnn.models import build_model

    ds = load_dataset("Cora")
    d = ds.data
    for name in ("gcn", "sage", "gin", "gat"):
        torch.manual_seed(0)
        m = build_model(name, "node", ds.num_features, ds.num_classes)
        quantize_(m, QuantConfig(method="qat", bits=bits))
        opt = torch.optim.Adam(m.parameters(), 0.01)
        m.train()
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(m(d.x, d.edge_index)[d.train_mask], d.y[d.train_mask]).backward()
            opt.step()
        model, _, im = onnx_and_runtime(m.eval())
        out, ref = run(session(model), d.x, d.edge_index), im(d.x, d.edge_index)
        check_close(out, ref)
        test = d.test_mask
        acc = [float((o.argmax(-1) == d.y)[test].float().mean()) for o in (out, ref)]
        assert abs(acc[0] - acc[1]) <= 0.001, (name, acc)
        assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("add_self_loops", [False, True])
@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
def test_gcn_norm_matches_pyg(improved, add_self_loops, flow):
    """The in-graph normalisation D^-1/2 (A + I) D^-1/2 equals PyG's gcn_norm edge for edge (same edge order,
    same float32 weights) on a graph with a self loop, a duplicate edge and an isolated node; ``improved`` is
    what QuantGCNConv / the runtime pass to gcn_norm (it has no effect without input edge weights)."""
    from onnx import TensorProto, helper
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    from qgnn.export.onnx_graph import IR_VERSION, OPSET, Builder

    n = 6
    ei = torch.tensor([[0, 1, 1, 2, 3, 3, 0], [1, 0, 2, 2, 0, 0, 4]])  # 2->2 loop, 3->0 twice, node 5 isolated
    b = Builder()
    out_ei, out_w = b.gcn_norm("edge_index", b.dim("x", 0), add_self_loops, flow)
    graph = helper.make_graph(
        b.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1]),
                       helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "e"])],
        [helper.make_tensor_value_info(out_ei, TensorProto.INT64, [2, None]),
         helper.make_tensor_value_info(out_w, TensorProto.FLOAT, [None])], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    got_ei, got_w = session(model).run(None, {"x": np.zeros((n, 1), np.float32), "edge_index": ei.numpy()})
    ref_ei, ref_w = gcn_norm(ei, None, n, improved, add_self_loops, flow, torch.float32)
    assert np.array_equal(got_ei, ref_ei.numpy())
    assert np.array_equal(got_w, ref_w.numpy())
