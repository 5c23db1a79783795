"""Fixes from the review of issue 23's work: method names are canonical in a TrainConfig, a stopped `qgnn sweep`
says how to continue with a flag it has, and a recommendation run resumes a state saved before configs carried a
version (as node / graph runs do)."""

from __future__ import annotations

import json

import pytest

from qgnn.cli import build_parser, main
from qgnn.errors import CheckpointError
from qgnn.train import Control, Interrupted, TrainConfig

FAST = ["--dataset", "synthetic-node", "--epochs", "1", "--seeds", "1", "--quiet"]


# ------------------------------------------------------------------------------------- method names, any case
def test_method_names_are_canonical_whatever_their_case():
    """`--method A2Q` is `--method a2q`: graph tasks get A2Q's nearest-neighbour groups, and `--method FP32`
    is float32, not an fp32 run refused for the 8 bits a quantization method would default to."""
    assert TrainConfig(method="A2Q").method == "a2q"
    upper = TrainConfig(method="A2Q", model="gin").resolve("graph")
    lower = TrainConfig(method="a2q", model="gin").resolve("graph")
    assert upper.quant == lower.quant and upper.quant["options"]["node_strategy"] == "nn"
    assert upper.to_dict() == lower.to_dict()
    assert TrainConfig(method="FP32").resolve("node").bits is None


def test_cli_trains_fp32_given_in_capitals(tmp_path):
    out = tmp_path / "r.json"
    assert main(["train", *FAST, "--method", "FP32", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["method"] == "fp32"


# ------------------------------------------------------------------------------------- a stopped sweep
def test_a_stopped_sweep_says_to_rerun_the_same_command_not_resume(tmp_path):
    """`qgnn sweep` has no --resume (a rerun continues by default): its stop message must not advise one."""
    from qgnn.search.cli import _sweep

    argv = ["sweep", "--dataset", "synthetic-node", "--seeds", "1", "--epochs", "2", "--lambdas", "0",
            "--no-fp32", "--quiet", "--out-dir", str(tmp_path)]
    args = build_parser().parse_args(argv)
    control = Control()
    control.on_epoch_end.append(lambda run, epoch: setattr(control, "stop_requested", True))
    with pytest.raises(Interrupted) as e:
        _sweep(args, control)
    msg = str(e.value)
    assert "--resume" not in msg and "same command" in msg and "search-l0.json.state.pt" in msg
    assert "resume" not in vars(args)  # sweep has no --resume: a rerun continues
    assert main(argv) == 0 and not (tmp_path / "search-l0.json.state.pt").exists()


# ------------------------------------------------------------------------------------- rec resume, old states
def test_a_recommendation_state_without_a_config_version_resumes(tmp_path):
    """Node / graph runs compare a saved config in today's dict form (qgnn.train.runner._normalised); a
    recommendation run did not, so a state written before configs carried a version was refused."""
    from qgnn.train.checkpoint import save_state
    from qgnn.train.runner import STATE_FORMAT, Runner

    spath = tmp_path / "r.json.state.pt"
    runner = Runner(TrainConfig(dataset="synthetic-rec", model="lightgcn", epochs=1), state_path=spath,
                       progress=False)
    old = {k: v for k, v in runner.cfg.to_dict().items() if k != "version"}
    save_state(spath, {"format": STATE_FORMAT, "config": old, "runs": [], "best": None, "current": None})
    assert runner._load_state()["config"] == old
    other = {**old, "epochs": 2}
    save_state(spath, {"format": STATE_FORMAT, "config": other, "runs": [], "best": None, "current": None})
    with pytest.raises(CheckpointError, match="different configuration"):
        runner._load_state()


# ------------------------------------------------------------------------------------- a second Ctrl-C
def test_an_abort_by_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    """The second Ctrl-C (or one outside the training loop) raises KeyboardInterrupt: one line, not a traceback."""
    import qgnn.cli as cli

    def aborted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_info", aborted)
    assert main(["info"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("qgnn: interrupted:") and err.count("\n") == 1 and "Traceback" not in err
