import json
import subprocess
import sys

import pytest

from conftest import needs_data
from qgnn.cli import main


def test_unknown_dataset_exits_2_listing_names(capsys):
    assert main(["train", "--dataset", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "cora" in err and "proteins" in err
    assert "Traceback" not in err


def test_unknown_model_and_method_and_bad_bits(capsys):
    assert main(["train", "--dataset", "synthetic-node", "--model", "mlp"]) == 2
    assert "valid models: gat, gcn, gin, graphconv, sage" in capsys.readouterr().err
    assert main(["train", "--dataset", "synthetic-node", "--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert main(["train", "--dataset", "synthetic-node", "--bits", "12"]) == 2
    assert "--bits must be in 1..8" in capsys.readouterr().err


def test_corrupt_config_names_the_file(tmp_path, capsys):
    bad = tmp_path / "cfg.json"
    bad.write_text("{not json")
    assert main(["train", "--config", str(bad)]) == 2
    assert "cfg.json" in capsys.readouterr().err


def test_train_writes_table_json_and_checkpoint(tmp_path, capsys):
    out, ckpt = tmp_path / "run.json", tmp_path / "run.ckpt"
    rc = main(["train", "--dataset", "SYNTHETIC-NODE", "--model", "GCN", "--seeds", "2", "--epochs", "20",
               "--out", str(out), "--save", str(ckpt), "--quiet"])
    assert rc == 0
    screen = capsys.readouterr().out
    assert "test_acc (%)" in screen and "synthetic-node" in screen.lower()
    res = json.loads(out.read_text())
    assert set(res["metrics"]["test_acc"]) == {"mean", "std", "runs"} and ckpt.exists()
    assert set(res["timing"]) == {"seconds_per_epoch", "total_seconds"}
    assert {"qgnn", "torch", "torch_geometric", "git_commit", "machine"} <= set(res["env"])
    # a results file is a valid --config: the run can be repeated from it
    assert main(["train", "--config", str(out), "--epochs", "2", "--seeds", "1", "--out",
                 str(tmp_path / "again.json"), "--quiet"]) == 0
    # --eval-every reaches the config (and so the results file); its value is checked
    assert main(["train", "--config", str(out), "--epochs", "5", "--seeds", "1", "--eval-every", "2", "--out",
                 str(tmp_path / "every2.json"), "--quiet"]) == 0
    res = json.loads((tmp_path / "every2.json").read_text())
    assert res["config"]["eval_every"] == 2 and res["runs"][0]["best_epoch"] in (1, 3, 4)
    assert main(["train", "--dataset", "synthetic-node", "--eval-every", "0", "--quiet"]) == 2
    assert "--eval-every must be >= 1" in capsys.readouterr().err


def test_info_and_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "qgnn", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "triton" in r.stdout and "node datasets:" in r.stdout


# Every import of triton is refused, as if it were not installed, and the ones whose importing statement
# is in qgnn's own code are recorded. torch._dynamo (which PyG imports) probes for triton itself when it is
# installed, so "triton in sys.modules" would say nothing about qgnn; the importer's file does.
_TRITON_PROBE = """
import importlib.util, os, sys
root = os.path.dirname(importlib.util.find_spec("qgnn").origin)  # located, not imported
hits = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            f = sys._getframe(1)
            while f is not None and f.f_code.co_filename.startswith("<frozen"):
                f = f.f_back
            if f is not None and f.f_code.co_filename.startswith(root):
                hits.append(f"{f.f_code.co_filename}:{f.f_lineno}")
            raise ModuleNotFoundError(name)
        return None
sys.meta_path.insert(0, Probe())
try:
    import qgnn, qgnn.train, qgnn.models, qgnn.data, qgnn.nn, qgnn.methods, qgnn.kernels, qgnn.search, qgnn.cli
except ImportError as e:
    hits.append(repr(e))
import torch
print(len(hits), torch.cuda.is_initialized(), *hits)
"""


def test_import_qgnn_does_not_import_triton_or_init_cuda():
    r = subprocess.run([sys.executable, "-c", _TRITON_PROBE], capture_output=True, text=True, timeout=120)
    assert r.stdout.split()[:2] == ["0", "False"], r.stdout + r.stderr


@needs_data
@pytest.mark.parametrize("args", [["--dataset", "Cora", "--model", "gat", "--seeds", "1", "--epochs", "30"]])
def test_cli_on_real_data(tmp_path, args):
    assert main(["train", *args, "--out", str(tmp_path / "r.json"), "--quiet"]) == 0


@pytest.mark.parametrize("method", ["qat", "lsq", "dq"])
def test_quantized_training_reports_method_bits_cost_and_reloads(tmp_path, capsys, method):
    import torch

    from qgnn.train import load_model
    from qgnn.train.runner import load_for

    out, ckpt = tmp_path / "q.json", tmp_path / "q.ckpt"
    assert main(["train", "--dataset", "synthetic-node", "--model", "gcn", "--method", method, "--bits", "4",
                 "--seeds", "2", "--epochs", "15", "--out", str(out), "--save", str(ckpt), "--quiet"]) == 0
    screen = capsys.readouterr().out
    assert method in screen and "bitops_reduction" in screen
    res = json.loads(out.read_text())
    assert res["config"]["method"] == method and res["config"]["bits"] == 4
    cost = res["cost"]
    assert {"bitops", "bitops_fp32", "avg_bits", "model_bytes", "model_bytes_fp32"} <= set(cost)
    assert cost["bitops_reduction"] > 30  # 4-bit operands everywhere but where a slot stays float: (32/4)^2 = 64
    assert cost["model_bytes"] < cost["model_bytes_fp32"] / 3  # a tiny model: per-channel scales weigh in
    # the checkpoint rebuilds the quantized model, which scores exactly what the selected run scored
    model, meta = load_model(ckpt)
    from qgnn.train import TrainConfig

    data = load_for(TrainConfig.from_dict(res["config"])).data
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    acc = (pred[data.test_mask] == data.y[data.test_mask]).float().mean().item()
    assert acc == pytest.approx(meta["selected_run"]["test_acc"], abs=1e-6)


def test_load_model_refuses_a_checkpoint_of_another_shape(tmp_path):
    from qgnn.errors import CheckpointError
    from qgnn.train import load_checkpoint, load_model, save_checkpoint

    ckpt = tmp_path / "m.ckpt"
    assert main(["train", "--dataset", "synthetic-node", "--seeds", "1", "--epochs", "2", "--save", str(ckpt),
                 "--out", str(tmp_path / "r.json"), "--quiet"]) == 0
    state, meta = load_checkpoint(ckpt)
    meta["num_features"] += 3
    meta.pop("format")
    save_checkpoint(ckpt, state, meta)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(ckpt)


def test_a_closed_stdout_pipe_stops_quietly(monkeypatch, capsys):
    """`qgnn eval m | head -3`: the reader closes the pipe; no traceback, the shell's status of SIGPIPE."""
    import qgnn.export.cli as export_cli

    def closed_pipe(args):
        print("first line")
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(export_cli, "cmd_eval", closed_pipe)  # the parser binds it when main builds it
    assert main(["eval", "m.qgnn.safetensors"]) == 141
    assert capsys.readouterr().err == ""
