"""Export of prompted models (GPF, GPF-plus, LoRAP; qgnn.export.prompt_export / prompt_ops / prompt_format):
the runtime runs the prompts where the fake-quant model does, zero or disabled prompts export to their host,
malformed prompt sections are refused, and `qgnn export` writes prompted checkpoints.

Parity is checked against the fake-quant model whose prompt parameters are the file's (the 8-bit W_a tables
decoded), so that a placement error cannot hide behind the rounding of the tables; the 8-bit storage itself
against the trained parameters (and on trained Cora models, docs/format.md, "Prompts")."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from qgnn_export_testutil import GRAPH_DATA, NODE_DATA, graph_batches, graph_model, node_model
from safetensors.torch import save_file

from qgnn.errors import CheckpointError, ConfigError
from qgnn.export import IntModel, export_model, load_int_model, read_file, write_file
from qgnn.export.format import FORMAT, FORMAT_VERSION, METADATA_KEY
from qgnn.export.prompt_export import quantize_param
from qgnn.export.prompt_ops import decode_param
from qgnn.prompts import PromptConfig, PromptedLayer, disable_prompts, inject_prompts

D = NODE_DATA.data


def _train(model, steps: int = 4, graph: bool = False):
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if "_prompt." in n], 0.02)
    model.train()
    for _ in range(steps):
        for b in graph_batches() if graph else [D]:
            opt.zero_grad()
            out = model(b.x, b.edge_index, b.batch) if graph else model(b.x, b.edge_index)
            F.cross_entropy(out, b.y).backward()
            opt.step()
    return model.eval()


def _prompted(name: str, kind: str, normalize: bool = False, method: str = "qat"):
    m = node_model(name, method, 4)
    inject_prompts(m, PromptConfig(kind=kind, k=4, rank=2, normalize=normalize))
    return _train(m)


def _snap(model, tensors: dict, desc: dict) -> None:
    """Put the file's (decoded) prompt parameters into the fake-quant model."""
    section = desc["prompts"]
    with torch.no_grad():
        for i, layer in enumerate(model.convs):
            if not isinstance(layer, PromptedLayer):
                continue
            for module, entry in ((layer.node_prompt, section["node"] if i == 0 else None),
                                  (layer.aggr_prompt, section["aggregate"].get(str(i)))):
                if module is None:
                    continue
                for pname, p in entry["params"].items():
                    getattr(module, pname).copy_(decode_param(p, tensors, pname))


def _roundtrip(model, tmp_path):
    tensors, desc = export_model(model)
    path = tmp_path / "m.qgnn.safetensors"
    write_file(path, tensors, desc)
    return tensors, desc, load_int_model(path)


def _close(out, ref, agree: float = 0.999, max_rel: float = 1e-4):
    same = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert same >= agree, f"predictions agree on {same:.4f}"
    rel = (out - ref).abs().max() / ref.abs().max().clamp(min=1e-6)
    assert float(rel) < max_rel, f"largest logit difference {float(rel):.3g} of the largest logit"


CASES = [(layer, kind) for layer in ("gcn", "gin", "sage", "gat") for kind in ("gpf", "gpf-plus", "lorap",
                                                                                 "gpf-lorap")]


@pytest.mark.parametrize("layer,kind", CASES)
def test_prompted_node_model_runs_as_the_fake_quant_model(tmp_path, layer, kind):
    normalize = layer in ("gcn", "gat")  # LoRAP's normalised logits on two layer kinds, plain on the others
    model = _prompted(layer, kind, normalize)
    tensors, desc, im = _roundtrip(model, tmp_path)
    p = desc["prompts"]
    assert p["kind"] == kind
    assert (p["node"] is not None) == (kind != "lorap")
    assert sorted(p["aggregate"]) == ([] if kind in ("gpf", "gpf-plus") else ["0", "1"])
    assert all(e["normalize"] == normalize for e in p["aggregate"].values())
    assert im.packed is not None and im.prompts is not None
    _snap(model, tensors, desc)
    with torch.no_grad():
        ref = model(D.x, D.edge_index)
    out = im(D.x, D.edge_index)
    _close(out, ref, agree=1.0)
    # the prompts really act: without them the runtime gives other logits
    host = copy.deepcopy(model)
    with disable_prompts(host), torch.no_grad():
        assert not torch.allclose(host(D.x, D.edge_index), ref, atol=1e-4)


@pytest.mark.parametrize("layer,kind", [("gcn", "gpf-lorap"), ("gin", "lorap"), ("gat", "gpf-plus")])
def test_eight_bit_w_a_keeps_the_predictions(tmp_path, layer, kind):
    """Without snapping: W_a at 8 bits, the additive tables float32 (prompt_export.QUANTIZED_PARAMS), against
    the trained float parameters."""
    model = _prompted(layer, kind, method="dq")
    _, desc, im = _roundtrip(model, tmp_path)
    p = desc["prompts"]
    for entry in ([p["node"]] if p["node"] else []) + list(p["aggregate"].values()):
        assert {n for n, t in entry["params"].items() if "codes" in t} == {"w_a"}
        assert entry["params"]["w_a"]["bits"] == 8 and entry["params"]["w_a"]["granularity"] == "channel"
    with torch.no_grad():
        ref = model(D.x, D.edge_index)
    _close(im(D.x, D.edge_index), ref, agree=1.0, max_rel=1e-3)


@pytest.mark.parametrize("kind", ["lorap", "gpf-lorap"])
def test_prompted_graph_gin_runs_as_the_fake_quant_model(tmp_path, kind):
    model = graph_model("gin", "qat", 4)
    inject_prompts(model, PromptConfig(kind=kind, k=4, rank=2))
    _train(model, steps=1, graph=True)
    tensors, desc, im = _roundtrip(model, tmp_path)
    assert desc["task"] == "graph" and sorted(desc["prompts"]["aggregate"]) == ["0", "1", "2"]
    assert (desc["prompts"]["node"] is not None) == (kind == "gpf-lorap")
    _snap(model, tensors, desc)
    refs, outs = [], []
    with torch.no_grad():
        for b in graph_batches():
            refs.append(model(b.x, b.edge_index, b.batch))
            outs.append(im(b.x, b.edge_index, b.batch))
    _close(torch.cat(outs), torch.cat(refs), agree=1.0)
    assert len(torch.cat(refs)) == len(GRAPH_DATA.dataset)


@pytest.mark.parametrize("layer", ["gcn", "sage"])
def test_zero_or_disabled_prompts_export_to_the_host(tmp_path, layer):
    host = node_model(layer, "qat", 4)
    fresh = inject_prompts(copy.deepcopy(host), PromptConfig(kind="gpf-lorap", k=4))  # zero-initialised
    h_t, h_d, h_im = _roundtrip(host, tmp_path)
    base = h_im(D.x, D.edge_index)
    _, desc, im = _roundtrip(fresh, tmp_path)
    assert desc["prompts"] is not None
    out = im(D.x, D.edge_index)
    assert torch.equal(out.argmax(-1), base.argmax(-1))
    torch.testing.assert_close(out, base, rtol=0, atol=1e-5)  # SAGE: lin_l takes the float path then
    with torch.no_grad():
        _close(out, host(D.x, D.edge_index), agree=1.0)
    # disabled prompts: exactly the host's file
    trained = _prompted(layer, "gpf-lorap")
    trained.load_state_dict({**trained.state_dict(), **{k.replace("convs.0.", "convs.0.base_layer.")
                                                         .replace("convs.1.", "convs.1.base_layer."): v
                                                         for k, v in host.state_dict().items()}})
    disable_prompts(trained)
    t, d = export_model(trained)
    assert "prompts" not in d and d == h_d and sorted(t) == sorted(h_t)
    assert all(torch.equal(t[k], h_t[k]) for k in t)


def test_eight_bit_tables_round_to_half_a_step_and_keep_zeros():
    class W:
        tensors: dict = {}

    w = W()
    t = torch.randn(5, 7)
    t[2] = 0
    d = quantize_param(w, t, "x")
    back = decode_param(d, w.tensors, "x")
    step = t.abs().amax(1, keepdim=True) / 127
    assert d["granularity"] == "channel" and d["zero_point"] is None
    assert bool(((back - t).abs() <= step / 2 + 1e-7).all())
    assert torch.equal(back[2], torch.zeros(7))
    v = quantize_param(w, torch.zeros(3), "p")
    assert v["granularity"] == "tensor" and torch.equal(decode_param(v, w.tensors, "p"), torch.zeros(3))


def _write_raw(path, tensors, desc):
    """A file with this descriptor, without write_file's checks (what a broken writer might produce)."""
    meta = {METADATA_KEY: json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **desc})}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def _break(kind: str, tensors: dict, desc: dict) -> None:
    p = desc["prompts"]
    lorap = p["aggregate"]["0"]
    if kind == "dim":
        lorap["dim"] += 1
    elif kind == "node_dim":
        p["node"]["dim"] = 3
    elif kind == "index":
        p["aggregate"]["7"] = p["aggregate"].pop("1")
    elif kind == "kind":
        lorap["kind"] = "lora"
    elif kind == "params":
        del lorap["params"]["u"]
    elif kind == "shape":
        name = lorap["params"]["u"]["float"]
        tensors[name] = tensors[name][:-1].clone()
    elif kind == "scales":
        name = lorap["params"]["w_a"]["scale"]
        tensors[name] = tensors[name][:-1].clone()
    elif kind == "codes":
        name = lorap["params"]["w_a"]["codes"]
        tensors[name] = tensors[name][:-1].clone()
    elif kind == "nan":
        name = lorap["params"]["v"]["float"]
        tensors[name] = tensors[name].clone()
        tensors[name][0, 0] = float("nan")
    elif kind == "grid":
        lorap["params"]["w_a"]["zero_point"] = [3]
    elif kind == "float_form":
        lorap["params"]["v"]["extra"] = 1
    elif kind == "section":
        p["extra"] = 1


BREAKS = ["dim", "node_dim", "index", "kind", "params", "shape", "scales", "codes", "nan", "grid", "float_form",
          "section"]


@pytest.mark.parametrize("kind", BREAKS)
def test_malformed_prompt_sections_are_refused(tmp_path, kind):
    tensors, desc = export_model(_prompted("gcn", "gpf-lorap"))
    _break(kind, tensors, desc)
    path = tmp_path / "bad.qgnn.safetensors"
    _write_raw(path, tensors, desc)
    with pytest.raises(CheckpointError) as e:
        read_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError):  # the runtime refuses it without the reader too
        IntModel(tensors, desc)


def test_non_positive_scales_and_float_tables_are_checked(tmp_path):
    import qgnn.export.prompt_export as pe

    model = _prompted("gin", "gpf-lorap")
    tensors, desc = export_model(model)
    name = desc["prompts"]["aggregate"]["1"]["params"]["w_a"]["scale"]
    tensors[name] = -tensors[name].abs()
    with pytest.raises(CheckpointError, match="positive"):
        IntModel(tensors, desc)
    # every table at 8 bits / every table float32: both forms load; float32 runs as the model itself
    with torch.no_grad():
        ref = model(D.x, D.edge_index)
    old = pe.QUANTIZED_PARAMS
    try:
        for quantized in (frozenset(), frozenset((k, n) for k in ("gpf-plus", "lorap") for n in ("w_a", "basis",
                                                                                                 "u", "v"))):
            pe.QUANTIZED_PARAMS = quantized
            tensors, desc = export_model(model)
            im = IntModel(tensors, desc)
            if not quantized:
                assert all("float" in p for p in desc["prompts"]["node"]["params"].values())
                _close(im(D.x, D.edge_index), ref, agree=1.0, max_rel=1e-5)
            else:
                assert all("codes" in p for p in desc["prompts"]["aggregate"]["0"]["params"].values())
                _snap(model, tensors, desc)
                with torch.no_grad():
                    _close(im(D.x, D.edge_index), model(D.x, D.edge_index), agree=1.0)
    finally:
        pe.QUANTIZED_PARAMS = old


@pytest.mark.parametrize("layer", ["gcn", "sage"])
def test_node_prompt_after_the_input_quantizer(tmp_path, layer):
    """``node_after_quant``: the prompt on layer 0's quantized input, which then reads float rows."""
    model = node_model(layer, "dq", 4)
    inject_prompts(model, PromptConfig(kind="gpf-lorap", k=4, node_after_quant=True))
    _train(model)
    tensors, desc, im = _roundtrip(model, tmp_path)
    assert desc["prompts"]["node"]["after_quant"] and im.prompts.node_after_quant
    _snap(model, tensors, desc)
    with torch.no_grad():
        ref = model(D.x, D.edge_index)
    _close(im(D.x, D.edge_index), ref, agree=1.0)


def test_node_prompt_on_a_later_layer_is_refused_at_export():
    model = node_model("gcn", "qat", 4)
    inject_prompts(model, PromptConfig(kind="gpf", targets=["convs.1"]))
    with pytest.raises(ConfigError, match="convs.1: a node prompt"):
        export_model(model)


def test_onnx_export_refuses_prompted_models():
    pytest.importorskip("onnx")
    from qgnn.export.onnx_export import build_onnx

    tensors, desc = export_model(_prompted("gcn", "lorap"))
    with pytest.raises(ConfigError, match="prompted models"):
        build_onnx(tensors, desc)


def test_cli_exports_a_prompted_checkpoint(tmp_path, capsys):
    from qgnn.cli import main

    ckpt, out = tmp_path / "run.ckpt", tmp_path / "m.qgnn.safetensors"
    base = ["train", "--dataset", "synthetic-node", "--model", "gcn", "--method", "qat", "--bits", "4",
            "--epochs", "3", "--seeds", "1", "--quiet", "--prompt", "gpf-lorap", "--prompt-k", "4"]
    assert main([*base, "--no-prompt-after-quant", "--out", str(tmp_path / "r.json"), "--save", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(["export", str(ckpt), str(out)]) == 0
    screen = capsys.readouterr().out
    assert "wrote" in screen and "prompts gpf-lorap" in screen
    assert load_int_model(out).prompts.has_node
    assert main(["eval", str(out), "--repeats", "1"]) == 0
    assert "accuracy" in capsys.readouterr().out
    # the recipe's default on a GCN host: the node prompt after the input quantizer
    assert main([*base, "--out", str(tmp_path / "r2.json"), "--save", str(tmp_path / "after.ckpt")]) == 0
    capsys.readouterr()
    rc = main(["export", str(tmp_path / "after.ckpt"), str(tmp_path / "a.qgnn.safetensors")])
    assert rc == 0 and "prompts gpf-lorap" in capsys.readouterr().out


@pytest.mark.parametrize("layer,kind", [("gcn", "gpf-lorap"), ("gin", "lorap"), ("sage", "gpf-plus"),
                                        ("gat", "gpf-lorap")])
def test_fp32_reference_runs_the_prompts(tmp_path, layer, kind):
    # the FP32 twin of a prompted file: the fake-quant model with its activation quantizers off, prompts on
    from qgnn.export.fp32_reference import build_fp32_reference
    from qgnn.nn import QuantModule

    model = _prompted(layer, kind, normalize=layer == "gcn")
    model.convs[0].node_after_quant = False  # FP32 has no input quantizer: the prompt acts on the features
    tensors, desc, _ = _roundtrip(model, tmp_path)
    _snap(model, tensors, desc)
    for m in model.modules():
        if isinstance(m, QuantModule):
            for slot, q in m.quantizers().items():
                if slot not in ("weight", "weight_root", "att"):
                    q.enabled = False
    with torch.no_grad():
        ref = model(D.x, D.edge_index)
    twin = build_fp32_reference(tensors, desc)
    _close(twin(D.x, D.edge_index), ref, agree=1.0)
    twin.prompts = None  # the host alone: other logits, so the comparison above saw the prompts
    assert not torch.allclose(twin(D.x, D.edge_index), ref, atol=1e-4)
