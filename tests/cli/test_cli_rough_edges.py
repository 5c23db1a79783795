"""The command line's rough edges (issue 23, item 4): output targets, one-line errors, one output flag and
one number format, table labels and notes, a torch-free `--help` / `info`, help texts, stale resume states,
the offline advice and the mode of written files."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qgnn.cli import HelpFormatter, build_parser, main

FAST = ["--dataset", "synthetic-node", "--model", "gcn", "--seeds", "1", "--epochs", "3", "--quiet"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    """main(argv) -> (status, stdout, stderr); an error is exactly one `qgnn: error:` line, never a traceback."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "weights_only" not in err, err
    if rc == 2:
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("qgnn: error: "), err
    return rc, out, err


def _notes(screen: str) -> str:
    """The notes under a table, unwrapped into one string."""
    lines = screen.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("note:"))
    return " ".join(x.strip() for x in lines[start:] if x.startswith(("note:", "      ")))


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _interrupted_state(out: Path, epochs: int = 4) -> Path:
    """An interrupted `train ... --out out` (stopped after its first epoch): its resume state."""
    from qgnn.train import Control, TrainConfig, run_experiment
    from qgnn.train.runner import Interrupted

    control = Control()
    control.on_epoch_end.append(lambda r, epoch: setattr(control, "stop_requested", True))
    with pytest.raises(Interrupted):
        run_experiment(TrainConfig(dataset="synthetic-node", model="gcn", seeds=1, epochs=epochs), out=out,
                       progress=False, control=control)
    state = Path(f"{out}.state.pt")
    assert state.exists()
    return state


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # default outputs (runs/...) and rescue folders land in the test's folder, never in the checkout
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path whose parent is a regular file: no one, root included, can create a file under it."""
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    return f


# -------------------------------------------------------------------------------- 1. unwritable outputs
@pytest.mark.parametrize("flag", ["--out", "--save"])
def test_unwritable_target_is_refused_before_data_loads(tmp_path, blocked, capsys, flag):
    before = _tree(tmp_path)
    # --root points at no data: had the check come after loading, the error would be the missing data
    rc, _, err = _run(capsys, "train", "--dataset", "Cora", "--root", tmp_path / "nodata", flag,
                      blocked / "run.x")
    assert rc == 2 and flag in err and "is a file" in err
    assert _tree(tmp_path) == before  # no stray probe file, folder or state


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = _run(capsys, "train", *FAST, "--out", ro / "run.json")
        assert rc == 2 and "cannot write in" in err and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_export_eval_and_sweep_targets(tmp_path, blocked, capsys):
    missing = tmp_path / "missing.ckpt"  # the target is checked before the checkpoint is even opened
    rc, _, err = _run(capsys, "export", missing, blocked / "m.qgnn.safetensors")
    assert rc == 2 and "export file" in err and "is a file" in err
    rc, _, err = _run(capsys, "eval", missing, "--out", blocked / "e.json")
    assert rc == 2 and "--out" in err
    rc, _, err = _run(capsys, "sweep", "--dataset", "synthetic-node", "--out-dir", blocked / "sweep")
    assert rc == 2 and "--out-dir" in err
    rc, _, err = _run(capsys, "train", *FAST, "--out", tmp_path)  # a folder given as the file
    assert rc == 2 and "is a folder" in err


def test_failed_write_after_training_keeps_the_runs(tmp_path, capsys, monkeypatch):
    """Disk full at the checkpoint write: the JSON is written, the checkpoint rescued, the state kept, and
    --resume writes the outputs without training again."""
    import qgnn.train.runner as runner

    out, ckpt = tmp_path / "run.json", tmp_path / "run.ckpt"
    real = runner.save_checkpoint

    def disk_full(path, *a, **kw):
        if Path(path) == ckpt:
            raise OSError(28, "No space left on device")
        return real(path, *a, **kw)

    monkeypatch.setattr(runner, "save_checkpoint", disk_full)
    rc, screen, err = _run(capsys, "train", *FAST, "--seeds", "2", "--out", out, "--save", ckpt)
    assert rc == 2 and "No space left on device" in err and "--resume" in err
    assert "test_acc (%)" in screen  # the finished run's table is still shown
    state = Path(f"{out}.state.pt")
    assert state.exists() and out.exists() and not ckpt.exists()
    rescued = Path(json.loads(out.read_text())["checkpoint"])
    assert rescued.exists() and str(rescued) in err
    first = json.loads(out.read_text())["metrics"]

    monkeypatch.setattr(runner, "save_checkpoint", real)
    calls = []
    monkeypatch.setattr(runner.Runner, "_one_run", lambda *a, **kw: calls.append(1))  # no training allowed
    rc, _, _ = _run(capsys, "train", *FAST, "--seeds", "2", "--out", out, "--save", ckpt, "--resume")
    assert rc == 0 and calls == [] and ckpt.exists() and not state.exists()
    assert json.loads(out.read_text())["metrics"] == first


def test_folder_removed_mid_run_rescues_the_results(tmp_path, capsys):
    """The output folder replaced by a file mid-run (root-proof): the state cannot be saved either, so the
    results go to a rescue folder; the run is not lost and training is not aborted."""
    from qgnn.train import Control, TrainConfig, run_experiment
    from qgnn.train.outputs import OutputWriteError

    folder = tmp_path / "outdir"
    folder.mkdir()

    def clobber(r, epoch):
        if folder.is_dir():
            shutil.rmtree(folder)
            folder.write_text("now a file")

    control = Control()
    control.on_epoch_end.append(clobber)
    with pytest.raises(OutputWriteError) as e:
        run_experiment(TrainConfig(dataset="synthetic-node", model="gcn", seeds=2, epochs=3),
                       out=folder / "run.json", progress=False, control=control)
    assert capsys.readouterr().err.count("cannot save the resume state") == 1  # warned once, training went on
    assert e.value.results is not None and len(e.value.results["runs"]) == 2
    rescued = Path(str(e.value).split("wrote it to ")[1].split(" instead")[0])
    assert rescued.is_relative_to(tmp_path) and "qgnn-rescue-" in rescued.parent.name
    assert json.loads(rescued.read_text())["metrics"] == e.value.results["metrics"]


# -------------------------------------------------------------------------------- 2. tracebacks -> one line
def test_device_this_torch_cannot_use_fails_before_data(tmp_path, capsys):
    nodata = ["--dataset", "Cora", "--root", tmp_path, "--epochs", "1", "--seeds", "1", "--quiet"]
    rc, _, err = _run(capsys, "train", *nodata, "--device", "tpu7")
    assert rc == 2 and "not a device" in err
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    rc, _, err = _run(capsys, "train", *nodata, "--device", "cuda")
    assert rc == 2 and "--device cuda" in err and "use --device cpu" in err
    if torch.version.cuda is None:
        assert f"this torch has no CUDA (torch {torch.__version__})" in err
    rc, _, err = _run(capsys, "search", "--dataset", "Cora", "--root", tmp_path, "--device", "cuda:1")
    assert rc == 2 and "--device cuda:1" in err


def test_binary_or_non_object_config_is_one_line(tmp_path, capsys):
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    rc, _, err = _run(capsys, "train", "--config", binary)
    assert rc == 2 and "model.bin" in err
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    rc, _, err = _run(capsys, "train", "--config", listed)
    assert rc == 2 and "list.json" in err


@pytest.mark.parametrize("content", ["random", "pickle", "text"])
def test_corrupt_resume_state_names_it_and_says_nothing_unsafe(tmp_path, capsys, content):
    out = tmp_path / "run.json"
    state = Path(f"{out}.state.pt")
    if content == "random":
        state.write_bytes(os.urandom(4096))
    elif content == "pickle":
        torch.save({"model": torch.nn.Linear(2, 2)}, state)  # loads only with weights_only=False
    else:
        state.write_text("hello")
    rc, _, err = _run(capsys, "train", *FAST, "--out", out, "--resume")
    assert rc == 2 and str(state) in err and "corrupt" in err and "delete it" in err
    assert "weights_only" not in err and "Weights only" not in err


def test_corrupt_checkpoints_are_one_line_everywhere(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(3000))
    for argv in (["export", junk, tmp_path / "m.qgnn.safetensors"], ["eval", junk],
                 ["train", *FAST, "--prompt", "gpf", "--backbone", junk, "--out", tmp_path / "p.json"],
                 ["train", "--dataset", "synthetic-rec", "--model", "lightgcn", "--method", "gnaq", "--bits", "2",
                  "--pretrained", junk, "--epochs", "1", "--quiet", "--out", tmp_path / "g.json"]):
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and "junk.ckpt" in err, argv


# -------------------------------------------------------------------------------- 3. one flag, one format
def test_eval_takes_out_like_train_prints_percent_and_keeps_json_alias(tmp_path, capsys):
    ckpt, model = tmp_path / "q.ckpt", tmp_path / "m.qgnn.safetensors"
    rc, screen, _ = _run(capsys, "train", *FAST, "--method", "qat", "--bits", "4", "--out", tmp_path / "q.json",
                         "--save", ckpt)
    assert rc == 0
    assert _run(capsys, "export", ckpt, model)[0] == 0
    rc, screen, _ = _run(capsys, "eval", model, "--repeats", "1", "--out", tmp_path / "e.json")
    r = json.loads((tmp_path / "e.json").read_text())
    from qgnn.train.results import format_percent

    assert rc == 0 and f"accuracy     {format_percent(r['accuracy'])}" in screen and "%" in screen
    assert _run(capsys, "eval", model, "--repeats", "1", "--json", tmp_path / "old.json")[0] == 0
    assert json.loads((tmp_path / "old.json").read_text())["accuracy"] == r["accuracy"]
    eval_help = _subparsers()["eval"].format_help()
    assert "--out" in eval_help and "--json" not in eval_help


def test_format_ratio_is_one_format():
    from qgnn.train.results import format_ratio

    assert [format_ratio(v) for v in (63.66, 1.1701, 8.0, 1024.4, float("nan"))] == [
        "63.7x", "1.17x", "8.00x", "1024x", "n/a"]


# -------------------------------------------------------------------------------- 4. table labels and notes
def test_search_table_says_search_and_widths(tmp_path, capsys):
    from qgnn.train.results import format_ratio

    out = tmp_path / "s.json"
    rc, screen, _ = _run(capsys, "search", "--dataset", "synthetic-node", "--seeds", "1", "--epochs", "2",
                         "--search-epochs", "2", "--candidates", "4", "8", "--weight-candidates", "2", "4", "8",
                         "--final-method", "qat", "--lambda",
                         "0.1", "--out", out, "--quiet")
    res = json.loads(out.read_text())
    rows = {x.split("|")[1].strip(): x.split("|")[2].strip() for x in screen.splitlines() if x.startswith("| ")}
    assert rc == 0 and rows["method"] == "mixq search (λ 0.1), then qat"
    assert rows["bits"] == "searched: activations 4/8, weights 2/4/8"
    # BitOPs printed one way in the table and in the λ row
    assert rows["bitops_reduction"] == format_ratio(res["cost"]["bitops_reduction"])
    lam_row = next(x for x in screen.splitlines() if x.startswith("0.1 |"))
    assert format_ratio(res["cost_runs"]["bitops_reduction"]["mean"]) in lam_row.split(" | ")


def test_prompt_row_and_float_prompt_note(tmp_path, capsys):
    from qgnn.train.results import format_ratio

    out = tmp_path / "p.json"
    rc, screen, _ = _run(capsys, "train", *FAST, "--method", "qat", "--bits", "4", "--prompt", "gpf-lorap",
                         "--out", out)
    res = json.loads(out.read_text())
    p, cost = res["prompt"], res["cost"]
    assert rc == 0 and f"gpf-lorap (k {p['k']}, rank {p['rank']}, {p['params']:,} float32 params)" in screen
    host = format_ratio((cost["model_bytes_fp32"] - p["bytes"]) / (cost["model_bytes"] - p["bytes"]))
    note = _notes(screen)
    assert "float32" in note and f"host alone is {cost['model_bytes'] - p['bytes']:,} bytes, {host}" in note
    assert format_ratio(cost["compression"]) in screen


def test_gnaq_table_explains_its_average_bits(tmp_path, capsys):
    rec = ["--dataset", "synthetic-rec", "--model", "lightgcn", "--seeds", "1", "--epochs", "1", "--quiet"]
    assert _run(capsys, "train", *rec, "--out", tmp_path / "f.json", "--save", tmp_path / "f.ckpt")[0] == 0
    rc, screen, _ = _run(capsys, "train", *rec, "--method", "gnaq", "--bits", "2", "--pretrained",
                         tmp_path / "f.ckpt", "--out", tmp_path / "g.json")
    cost = json.loads((tmp_path / "g.json").read_text())["cost"]
    assert rc == 0 and cost["avg_bits"] > 2
    note = _notes(screen)
    assert "2-bit codes" in note and "per-node quantization levels" in note and f"{cost['avg_bits']:.2f} bits" in note


# -------------------------------------------------------------------------------- 5. torch-free help and info
def _imports_after(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code + "\nprint(*[m for m in ('torch', "
                        "'torch_geometric', 'numpy') if m in sys.modules])"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[-1].split() if r.stdout.strip() else []


def test_help_imports_no_torch():
    assert _imports_after("from qgnn.cli import build_parser; build_parser()") == []


def test_info_imports_no_torch_and_lists_names(capsys):
    assert _imports_after("from qgnn.cli import main; main(['info'])") == []
    rc, out, _ = _run(capsys, "info")
    assert rc == 0 and "node datasets:" in out and "lightgcn" in out


def test_catalog_matches_the_registries():
    from qgnn import catalog
    from qgnn.data import dataset_names
    from qgnn.export.cli import AGG_CHOICES, GEMM_CHOICES
    from qgnn.export.intops import AGG_BACKENDS, GEMM_BACKENDS
    from qgnn.methods import method_names
    from qgnn.models import model_names
    from qgnn.prompts.inject import PROMPT_KINDS
    from qgnn.train.rec import REC_METHODS, REC_MODELS

    for task in ("node", "graph", "rec"):
        assert list(catalog.DATASETS[task]) == dataset_names(task)
    for task in ("node", "graph"):
        assert sorted(catalog.MODELS[task]) == sorted(model_names(task))
    assert sorted(catalog.MODELS["rec"]) == sorted(REC_MODELS)
    assert set(catalog.METHODS) | {"fp32"} == set(method_names()) | {"fp32"}
    assert sorted(catalog.REC_METHODS) == sorted(REC_METHODS)
    assert tuple(catalog.PROMPTS) == tuple(PROMPT_KINDS)
    assert (GEMM_CHOICES, AGG_CHOICES) == (tuple(GEMM_BACKENDS), tuple(AGG_BACKENDS))


# -------------------------------------------------------------------------------- 6. help texts
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["train", "search", "sweep", "export", "eval", "compare", "info"])
def test_every_option_has_help_and_its_default_once(command):
    p = _subparsers()[command]
    text = p.format_help()
    assert "(default: None)" not in text and "default: []" not in text
    for action in p._actions:
        if action.help == argparse.SUPPRESS:
            assert action.option_strings == ["--json"]  # the one hidden, deprecated alias
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        shown = (HelpFormatter(command)._get_help_string(action) % dict(vars(action), prog=command)).lower()
        assert shown.count("default") <= 1, (command, action.option_strings, shown)
        unset = action.default is None or action.default is False or action.default == []
        if action.option_strings and action.nargs != 0 and not unset:  # a real default: it is shown
            assert "default" in shown, (command, action.option_strings, shown)


def test_model_help_lists_every_model():
    from qgnn import catalog

    help_text = next(a.help for a in _subparsers()["train"]._actions if "--model" in a.option_strings)
    assert all(m in help_text for ms in catalog.MODELS.values() for m in ms) and "lightgcn" in help_text


def test_search_flags_left_unset_take_search_config_defaults():
    from qgnn.search.cli import _configs
    from qgnn.search.mixq import SearchConfig

    args = build_parser().parse_args(["search"])
    _, sc = _configs(args, args.lam)
    assert sc.to_dict() == SearchConfig().to_dict()
    help_text = _subparsers()["search"].format_help().replace("\n", " ")
    assert f"default: {SearchConfig().alpha_lr}" in " ".join(help_text.split())


# -------------------------------------------------------------------------------- 7. stale resume state
def test_rerun_without_resume_refuses_to_delete_an_interrupted_run(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["train", "--dataset", "synthetic-node", "--model", "gcn", "--seeds", "1", "--epochs", "4", "--quiet",
            "--out", out]
    state = _interrupted_state(out)
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and str(state) in err and "--resume" in err and "--overwrite" in err
    assert state.exists() and not out.exists()
    assert _run(capsys, *argv, "--resume")[0] == 0 and out.exists() and not state.exists()
    _interrupted_state(out)
    rc, _, err = _run(capsys, *argv, "--overwrite", "--resume")
    assert rc == 2 and "pass one of them" in err and state.exists()
    assert _run(capsys, *argv, "--overwrite")[0] == 0 and not state.exists()


# -------------------------------------------------------------------------------- 8. offline advice, modes
def test_offline_error_names_the_flag_on_the_command_line(tmp_path, capsys):
    from qgnn.data import load_dataset
    from qgnn.errors import DataNotFoundError

    rc, _, err = _run(capsys, "train", "--dataset", "Cora", "--root", tmp_path, "--quiet")
    assert rc == 2 and "--root DIR" in err and "QGNN_DATA" in err and "root=..." not in err
    with pytest.raises(DataNotFoundError, match=r"root=\.\.\."):
        load_dataset("cora", root=tmp_path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, capsys, umask, mode):
    old = os.umask(umask)
    try:
        out, ckpt, model = tmp_path / "r.json", tmp_path / "r.ckpt", tmp_path / "m.qgnn.safetensors"
        assert _run(capsys, "train", *FAST, "--method", "qat", "--bits", "4", "--out", out, "--save", ckpt)[0] == 0
        assert _run(capsys, "export", ckpt, model)[0] == 0
        assert _run(capsys, "eval", model, "--repeats", "1", "--out", tmp_path / "e.json")[0] == 0
        state = _interrupted_state(tmp_path / "s.json")
        for f in (out, ckpt, model, tmp_path / "e.json", state):
            assert stat.S_IMODE(f.stat().st_mode) == mode, f
    finally:
        os.umask(old)


def test_rewriting_a_file_keeps_its_mode(tmp_path):
    from qgnn.train.checkpoint import write_json

    f = tmp_path / "r.json"
    write_json(f, {"a": 1})
    f.chmod(0o640)
    write_json(f, {"a": 2})
    assert stat.S_IMODE(f.stat().st_mode) == 0o640 and json.loads(f.read_text()) == {"a": 2}


def test_method_opt_reaches_node_methods_and_a_misspelt_option_is_named(tmp_path, capsys):
    """--method-opt sets any method's options (checked by its typed config), not only recommendation's."""
    import json

    out = tmp_path / "dq.json"
    common = ["train", "--dataset", "synthetic-node", "--method", "dq", "--bits", "4", "--epochs", "1", "--seeds", "1",
              "--quiet", "--out", str(out)]
    assert main([*common, "--method-opt", "p_max=0.3"]) == 0
    assert json.loads(out.read_text())["config"]["quant"]["options"]["p_max"] == 0.3
    assert main([*common, "--method-opt", "p_mx=0.3", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "p_mx" in err[0] and "p_max" in err[0]


# -------------------------------------------------------------------------------- 9. mini-batch flags (issue 24)
@pytest.mark.parametrize("argv, says", [
    (["--dataset", "Cora", "--fanout", "15"], "give one per layer"),                        # 1 fanout, 2 layers
    (["--dataset", "Cora", "--layers", "3", "--fanout", "15", "10"], "3-layer model"),
    (["--dataset", "Cora", "--fanout", "15", "-2"], "--fanout must be -1"),
    (["--dataset", "Cora", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--dataset", "Cora", "--fanout", "5", "5", "--batch-size", "-3"], "--batch-size must be >= 1"),
    (["--dataset", "MUTAG", "--model", "gin", "--fanout", "5"], "MUTAG is a graph-classification dataset"),
    (["--dataset", "MUTAG", "--model", "gin", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--dataset", "gowalla", "--model", "lightgcn", "--fanout", "5"], "gowalla is a recommendation dataset"),
])
def test_bad_batch_flags_are_one_line_before_data_loads(tmp_path, capsys, argv, says):
    before = _tree(tmp_path)
    # --root points at no data: had the check come after loading, the error would be the missing data
    rc, _, err = _run(capsys, "train", *argv, "--root", tmp_path / "nodata", "--quiet", "--out", tmp_path / "r.json")
    assert rc == 2 and says in err, err
    assert _tree(tmp_path) == before  # nothing written


def test_bad_batch_values_in_a_config_file_are_one_line(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"dataset": "synthetic-node", "fanout": []}))
    rc, _, err = _run(capsys, "train", "--config", config, "--quiet", "--out", tmp_path / "r.json")
    assert rc == 2 and "--fanout needs one number per layer" in err and not (tmp_path / "r.json").exists()
