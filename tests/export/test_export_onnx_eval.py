"""``qgnn eval model.onnx``: onnxruntime runs an ONNX export on the data it was trained on and reports what the
packed file's evaluation reports (same examples, same scores up to a rounding-tie flip), the graph task's fold
and a regression model's units included; user errors are one line and exit 2. Skipped without the ``onnx``
extra."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from qgnn.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import qgnn_molecules_testutil as mol  # noqa: E402


def _train_and_export(tmp_path, capsys, dataset, model, extra=()):
    ckpt = tmp_path / "run.ckpt"
    runs = ["--folds", "2"] if dataset != "synthetic-node" else ["--seeds", "1"]
    assert main(["train", "--dataset", dataset, "--model", model, "--method", "qat", "--bits", "4", "--epochs",
                 "3", *runs, *extra, "--out", str(tmp_path / "run.json"), "--save", str(ckpt), "--quiet"]) == 0
    packed, onnx_file = tmp_path / "m.qgnn.safetensors", tmp_path / "m.onnx"
    assert main(["export", str(ckpt), str(packed)]) == 0
    assert main(["export", str(ckpt), str(onnx_file), "--format", "onnx"]) == 0
    capsys.readouterr()
    return packed, onnx_file


def _eval(capsys, path, *args) -> tuple[dict, str]:
    out = Path(str(path) + ".eval.json")
    assert main(["eval", str(path), "--repeats", "2", "--out", str(out), *args]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


@pytest.mark.parametrize("dataset,model", [("synthetic-node", "gcn"), ("synthetic-graph", "gin")])
def test_onnx_eval_scores_what_the_packed_file_scores(tmp_path, capsys, dataset, model):
    packed, onnx_file = _train_and_export(tmp_path, capsys, dataset, model)
    ref, _ = _eval(capsys, packed)
    r, screen = _eval(capsys, onnx_file)
    assert r["evaluated"] == ref["evaluated"] > 0 and (r["dataset"], r["split"]) == (ref["dataset"], "test")
    # predictions agree but for a rounding tie of a code (tests/export/test_export_onnx.py): at most one example
    assert abs(r["accuracy"] - ref["accuracy"]) * r["evaluated"] <= 1 + 1e-9
    assert r["paths"][0].startswith("onnxruntime ") and r["onnx_paths"]
    assert r["file_bytes"] == onnx_file.stat().st_size and r["latency_ms"] > 0 and r["peak_memory_bytes"] >= 0
    for word in ("accuracy", "latency", "peak memory", "file size", "onnxruntime"):
        assert word in screen


def test_graph_task_scores_the_selected_runs_fold(tmp_path, capsys):
    packed, onnx_file = _train_and_export(tmp_path, capsys, "synthetic-graph", "gin")
    for split in ("val", "all"):
        ref, _ = _eval(capsys, packed, "--split", split)
        r, _ = _eval(capsys, onnx_file, "--split", split)
        assert r["evaluated"] == ref["evaluated"]
    # an ONNX file exported before the selected run was recorded: its test fold is unknown
    m = onnx.load(str(onnx_file))
    for p in m.metadata_props:
        if p.key == "qgnn":
            meta = json.loads(p.value)
            meta.pop("source")
            p.value = json.dumps(meta)
    old = tmp_path / "old.onnx"
    onnx.save(m, str(old))
    assert main(["eval", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--split all" in err[0]
    assert main(["eval", str(old), "--split", "all", "--repeats", "1"]) == 0


@mol.needs_rdkit
def test_regression_model_reports_mae_and_rmse_in_the_targets_units(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QGNN_OFFLINE", "1")
    root = mol.write_esol(tmp_path / "data")
    monkeypatch.setenv("QGNN_DATA", str(root))
    packed, onnx_file = _train_and_export(tmp_path, capsys, "esol", "gin", ["--seeds", "1"])
    ref, _ = _eval(capsys, packed)
    r, screen = _eval(capsys, onnx_file)
    assert "accuracy" not in r and r["evaluated"] == ref["evaluated"] > 0
    assert r["mae"] == pytest.approx(ref["mae"], rel=1e-4) and r["rmse"] == pytest.approx(ref["rmse"], rel=1e-4)
    assert "MAE" in screen and "RMSE" in screen


def test_user_errors_are_one_line(tmp_path, capsys):
    packed, onnx_file = _train_and_export(tmp_path, capsys, "synthetic-node", "gcn")
    cases = [
        ([str(onnx_file), "--fp32-reference"], "--fp32-reference"),
        ([str(onnx_file), "--gemm", "reference"], "onnxruntime"),
        ([str(tmp_path / "missing.onnx")], "no such file"),
    ]
    not_onnx = tmp_path / "packed.onnx"  # a packed file renamed: not ONNX
    not_onnx.write_bytes(packed.read_bytes())
    cases.append(([str(not_onnx)], "not an ONNX model"))
    foreign = tmp_path / "foreign.onnx"  # an ONNX model qgnn did not write
    m = onnx.load(str(onnx_file))
    del m.metadata_props[:]
    onnx.save(m, str(foreign))
    cases.append(([str(foreign)], "without qgnn's metadata"))
    renamed = tmp_path / "renamed.onnx"  # onnxruntime refuses the inputs (here: no input called x)
    m = onnx.load(str(onnx_file))
    m.graph.input[0].name = "features"
    for node in m.graph.node:
        node.input[:] = ["features" if i == "x" else i for i in node.input]
    onnx.save(m, str(renamed))
    cases.append(([str(renamed)], "onnxruntime cannot run renamed.onnx"))
    for args, words in cases:
        assert main(["eval", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("qgnn: error:") and words in err[0], (args, err)
