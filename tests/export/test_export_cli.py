"""`qgnn export` and `qgnn eval` end to end on the synthetic datasets: train a QAT model for a few epochs,
export it, evaluate the file; the integer accuracy equals the fake-quant model's; user errors exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from qgnn.cli import main


@pytest.mark.parametrize("dataset,model", [("synthetic-node", "gcn"), ("synthetic-graph", "gin")])
def test_train_export_eval(tmp_path, capsys, dataset, model):
    ckpt, out, res = tmp_path / "run.ckpt", tmp_path / "m.qgnn.safetensors", tmp_path / "eval.json"
    extra = ["--folds", "1"] if dataset == "synthetic-graph" else ["--seeds", "1"]
    assert main(["train", "--dataset", dataset, "--model", model, "--method", "qat", "--bits", "4", "--epochs",
                 "5", *extra, "--out", str(tmp_path / "run.json"), "--save", str(ckpt), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(ckpt), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.stat().st_size < ckpt.stat().st_size
    assert main(["eval", str(out), "--repeats", "2", "--json", str(res)]) == 0
    screen = capsys.readouterr().out
    for word in ("accuracy", "latency", "peak memory", "file size"):
        assert word in screen
    r = json.loads(res.read_text())
    assert r["file_bytes"] == out.stat().st_size and r["latency_ms"] > 0 and r["evaluated"] > 0
    assert "integer" in r["paths"] and "int8 x int8 -> int32" in r["paths"]
    # the same accuracy as the fake-quant model on the same split
    from qgnn.export.evaluate import _accuracy, eval_inputs
    from qgnn.export.runtime import load_int_model
    from qgnn.train import load_model

    fq, _ = load_model(ckpt)
    _, inputs = eval_inputs(load_int_model(out).desc)
    with torch.no_grad():
        outs = [fq(x, ei, b) if b is not None else fq(x, ei) for x, ei, b, _, _ in inputs]
    assert r["accuracy"] == pytest.approx(_accuracy(outs, inputs)[0], abs=1e-12)


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.qgnn.safetensors")]) == 2
    assert "qgnn: error: export file not found" in capsys.readouterr().err
    ckpt = tmp_path / "fp32.ckpt"
    assert main(["train", "--dataset", "synthetic-node", "--epochs", "2", "--seeds", "1", "--out",
                 str(tmp_path / "r.json"), "--save", str(ckpt), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(ckpt), str(tmp_path / "x.qgnn.safetensors")]) == 2
    assert "not quantized" in capsys.readouterr().err
    assert main(["eval", str(ckpt)]) == 2
    assert "qgnn export" in capsys.readouterr().err  # a training checkpoint: says how to convert it
