"""`qgnn compare`: spec validation, the table / JSON / PNG, cached cells, Ctrl-C and resume, Pareto marks."""

import json
import math
import os
import signal
from pathlib import Path

import pytest

from qgnn.cli import main
from qgnn.compare.table import mark_pareto, pareto_optimal, scores_for
from qgnn.testing import needs_data

FAST = ["--epochs", "3", "--seeds", "2", "--quiet"]


def _compare(tmp_path, *args):
    return main(["compare", "--dataset", "synthetic-node", *FAST, "--out-dir", str(tmp_path), *args])


def _rows(out_dir):
    return json.loads((out_dir / "compare.json").read_text())["rows"]


# -- Pareto marks ----------------------------------------------------------------------------------------------
def test_pareto_optimal_ties_dominated_and_missing_points():
    pts = [(80.0, 1.0), (80.0, 1.0), (79.0, 2.0), (78.0, 1.5), (80.0, 0.9), (81.0, 0.5), (None, 9.0),
           (math.nan, 9.0), (90.0, None)]
    # equal points both stay; (78, 1.5) is beaten by (79, 2); (80, 0.9) by (80, 1) (equal on one axis);
    # a point with a missing or NaN coordinate is never on the front and beats nothing
    assert pareto_optimal(pts) == [True, True, True, False, False, True, False, False, False]
    assert pareto_optimal([]) == []
    assert pareto_optimal([(1.0, 1.0)]) == [True]


def test_pareto_marks_use_validation_never_test():
    scores = scores_for("node")
    rows = [  # b has the best *test* accuracy at a's BitOPs, but a lower validation accuracy: b is not selected
        {"test_acc": 80.0, "val_acc": 79.0, "bitops_reduction": 16.0, "model_bytes": 1000},
        {"test_acc": 85.0, "val_acc": 78.0, "bitops_reduction": 16.0, "model_bytes": 1000},
        {"test_acc": 70.0, "val_acc": 70.0, "bitops_reduction": 64.0, "model_bytes": 4000},
    ]
    mark_pareto(rows, scores)
    assert [r["pareto_bitops"] for r in rows] == [True, False, True]
    assert [r["pareto_bytes"] for r in rows] == [True, False, False]  # c is larger and less accurate than a


def test_regression_scores_are_errors_and_the_front_prefers_the_lower_validation_mae():
    from qgnn.data.registry import is_regression

    assert is_regression("ESOL") and is_regression("lipo") and not is_regression("cora")
    assert not is_regression("no-such-dataset")
    scores = scores_for("graph", regression=is_regression("esol"))
    assert scores.test == "test_rmse" and scores.val == "val_mae" and scores.lower_is_better
    rows = [  # b: lower validation MAE than a at the same BitOPs; c: more compressed, worse
        {"test_rmse": 1.0, "val_mae": 0.80, "bitops_reduction": 16.0, "model_bytes": 1000},
        {"test_rmse": 1.1, "val_mae": 0.70, "bitops_reduction": 16.0, "model_bytes": 1000},
        {"test_rmse": 1.3, "val_mae": 0.90, "bitops_reduction": 64.0, "model_bytes": 4000},
    ]
    mark_pareto(rows, scores)
    assert [r["pareto_bitops"] for r in rows] == [False, True, True]
    assert [r["pareto_bytes"] for r in rows] == [False, True, False]


# -- bad input: one line, exit 2, nothing trained ---------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--methods", "qat:9"], "bits must be in 1..8"),
    (["--methods", "qat:x"], "bits must be an integer"),
    (["--methods", "magic"], "unknown method 'magic'"),
    (["--methods", "fp32:4"], "fp32 has no bit-width"),
    (["--methods", "mixq:4"], "mixq searches its widths"),
    (["--methods", "qat:4", "QAT:4"], "lists qat:4 twice"),
    (["--prompts", "gpff"], "unknown prompt 'gpff'"),
    (["--folds", "3"], "--folds applies to graph datasets"),
    (["--k", "10"], "--k applies to recommendation datasets"),
    (["--model", "mlp"], "unknown model 'mlp'"),
])
def test_bad_specs_exit_2_with_one_line_before_training(tmp_path, capsys, args, message):
    assert _compare(tmp_path / "cmp", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qgnn: error:") and message in err and "\n" not in err
    assert not (tmp_path / "cmp").exists()  # refused before any cell was created


def test_recommendation_methods_that_need_a_pretrained_model_say_how(tmp_path, capsys):
    assert main(["compare", "--dataset", "synthetic-rec", "--methods", "gnaq:2", "--out-dir", str(tmp_path)]) == 2
    assert "put fp32 in --methods" in capsys.readouterr().err


# -- the grid: table, JSON, PNG, cache --------------------------------------------------------------------------
def test_compare_writes_table_json_png_and_reuses_cached_cells(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    assert _compare(out, "--methods", "fp32", "qat:4", "mixq", "--prompts", "none", "gpf") == 0
    screen = capsys.readouterr().out
    assert "5 cells, 5 trained, 0 cached" in screen
    for text in ("test acc (%)", "val acc (%)", "BitOPs red.", "Pareto (val)", "qat:4", "mixq (dq)", "gpf",
                 "chosen on validation, never on test"):
        assert text in screen
    summary = json.loads((out / "compare.json").read_text())
    rows = summary["rows"]
    assert summary["complete"] and summary["config"]["methods"] == ["fp32", "qat:4", "mixq"]
    # FP32 once without a prompt, every quantized method with each prompt
    assert [(r["cell"], r["prompt"]) for r in rows] == [
        ("fp32", "none"), ("qat4", "none"), ("qat4-gpf", "gpf"), ("mixq", "none"), ("mixq-gpf", "gpf")]
    assert rows[0]["bits_label"] == "32" and rows[1]["bits"] == 4 and rows[3]["bits_label"] == "mixed"
    assert rows[0]["bitops_reduction"] == pytest.approx(1.0) and rows[1]["bitops_reduction"] > 30
    assert all(0 <= r["test_acc"] <= 100 and r["runs"] == 2 for r in rows)
    assert any(r["pareto_bitops"] for r in rows) and {"git_commit", "torch"} <= set(summary["env"])
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the cells are ordinary results files, the prompted one records its prompt
    cell = json.loads((out / "cells" / "qat4-gpf.json").read_text())
    assert cell["config"]["prompt"]["kind"] == "gpf" and cell["cell"]["kind"] == "train"

    # the same command again trains nothing and reports the same rows
    def no_training(*a, **k):
        raise AssertionError("a cached cell was trained again")

    monkeypatch.setattr("qgnn.train.run_experiment", no_training)
    monkeypatch.setattr("qgnn.search.mixq.run_search", no_training)
    assert _compare(out, "--methods", "fp32", "qat:4", "mixq", "--prompts", "none", "gpf") == 0
    assert "5 cells, 0 trained, 5 cached" in capsys.readouterr().out
    assert _rows(out) == rows


def test_a_cell_whose_config_changed_is_trained_again(tmp_path, capsys, monkeypatch):
    import qgnn.train

    out = tmp_path / "cmp"
    assert _compare(out, "--methods", "fp32", "qat:4") == 0
    trained = []
    real = qgnn.train.run_experiment

    def counting(cfg, **kw):
        trained.append((cfg.method, cfg.bits))
        return real(cfg, **kw)

    monkeypatch.setattr("qgnn.train.run_experiment", counting)
    assert _compare(out, "--methods", "fp32", "qat:4", "lsq:4") == 0  # a new cell: only it trains
    assert trained == [("lsq", 4)]
    trained.clear()
    assert main(["compare", "--dataset", "synthetic-node", "--epochs", "2", "--seeds", "2", "--quiet",
                 "--out-dir", str(out), "--methods", "qat:4"]) == 0  # other epochs: another configuration
    assert trained == [("qat", 4)]
    assert json.loads((out / "cells" / "qat4.json").read_text())["config"]["epochs"] == 2


# -- Ctrl-C and resume ------------------------------------------------------------------------------------------
def test_ctrl_c_stops_and_the_same_command_resumes_to_the_uninterrupted_result(tmp_path, capsys, monkeypatch):
    methods = ["--methods", "fp32", "qat:4", "lsq:4"]
    assert _compare(tmp_path / "ref", *methods) == 0
    reference = _rows(tmp_path / "ref")

    from qgnn.train.tasks import NodeTask

    real_epoch = NodeTask.train_epoch
    calls = []

    def epoch_then_ctrl_c(self, *a, **k):
        loss = real_epoch(self, *a, **k)
        calls.append(1)
        if len(calls) == 2 * 3 + 2:  # FP32's 2 runs x 3 epochs done, then 2 epochs into qat:4's first run
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; compare's handler turns it into a stop
        return loss

    monkeypatch.setattr(NodeTask, "train_epoch", epoch_then_ctrl_c)
    out = tmp_path / "cmp"
    assert _compare(out, *methods) == 130
    err = capsys.readouterr().err
    assert "qgnn: interrupted:" in err and "run the same command again to continue" in err
    cells = out / "cells"
    assert (cells / "fp32.json").exists() and not (cells / "qat4.json").exists()
    assert (cells / "qat4.json.state.pt").exists()  # the stopped cell's resume state
    partial = json.loads((out / "compare.json").read_text())
    assert not partial["complete"] and [r["cell"] for r in partial["rows"]] == ["fp32"]

    monkeypatch.setattr(NodeTask, "train_epoch", real_epoch)
    calls.clear()
    assert _compare(out, *methods) == 0
    assert "3 cells, 2 trained, 1 cached" in capsys.readouterr().out  # fp32 reused; qat:4 resumed; lsq:4 new
    assert not (cells / "qat4.json.state.pt").exists()
    resumed = _rows(out)
    timing = {"s_per_epoch", "search_s_per_epoch", "results"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in timing} for r in reference]
    for name in ("qat4", "lsq4"):  # every run of the resumed cells, not only the means
        runs = [json.loads((d / "cells" / f"{name}.json").read_text())["metrics"]["test_acc"]["runs"]
                for d in (out, tmp_path / "ref")]
        assert runs[0] == runs[1]


# -- graph and recommendation tasks ------------------------------------------------------------------------------
def test_graph_task_runs_folds(tmp_path, capsys):
    assert main(["compare", "--dataset", "synthetic-graph", "--model", "gin", "--methods", "fp32", "qat:4",
                 "--folds", "2", "--seeds", "1", "--epochs", "2", "--quiet", "--out-dir", str(tmp_path)]) == 0
    assert "seeds x folds" in capsys.readouterr().out
    rows = _rows(tmp_path)
    assert [r["runs"] for r in rows] == [2, 2]
    assert json.loads((tmp_path / "cells" / "qat4.json").read_text())["config"]["folds"] == 2


def test_recommendation_reports_recall_and_ndcg_and_starts_gnaq_from_the_fp32_cell(tmp_path, capsys):
    assert main(["compare", "--dataset", "synthetic-rec", "--methods", "gnaq:2", "fp32", "--epochs", "2", "--k", "10",
                 "--quiet", "--out-dir", str(tmp_path)]) == 0
    screen = capsys.readouterr().out
    assert "recall@10" in screen and "NDCG@10" in screen and "val recall@10" in screen
    assert "BitOPs red." not in screen  # no BitOPs for an embedding table: the front is on bytes
    rows = _rows(tmp_path)
    assert [r["cell"] for r in rows] == ["fp32", "gnaq2"]  # FP32 first: its checkpoint starts GNAQ
    assert all(r["recall@10"] is not None and r["val_recall@10"] is not None for r in rows)
    gnaq = json.loads((tmp_path / "cells" / "gnaq2.json").read_text())
    assert gnaq["config"]["quant"]["pretrained"] == str(tmp_path / "cells" / "fp32.safetensors")
    assert (tmp_path / "cells" / "fp32.safetensors").exists()


@needs_data()
def test_compare_on_cora(tmp_path, capsys):
    assert main(["compare", "--dataset", "Cora", "--methods", "fp32", "qat:8", *FAST, "--out-dir", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert [r["cell"] for r in rows] == ["fp32", "qat8"] and rows[1]["bitops_reduction"] == pytest.approx(16, rel=0.05)


def test_one_progress_bar_counts_every_epoch_of_the_grid(tmp_path, monkeypatch):
    from qgnn.testing.progress import recording_tqdm

    Recording, bars = recording_tqdm()

    monkeypatch.setattr("qgnn.compare.run.tqdm", Recording)
    assert _compare(tmp_path, "--methods", "fp32", "qat:4", "mixq") == 0
    (bar,) = bars  # one bar for the whole grid: 2 seeds x 3 epochs for fp32 and qat:4, 2 x (3 search + 3) for mixq
    assert bar.total == 6 + 6 + 12 and bar.n == bar.total and bar.steps == [1] * 24  # advanced epoch by epoch


def test_an_out_dir_that_cannot_be_created_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert _compare(tmp_path / "file" / "cmp", "--methods", "fp32") == 2
    err = capsys.readouterr().err
    assert err.startswith("qgnn: error: --out-dir") and err.count("\n") == 1


@pytest.mark.parametrize("where", ["parent", "itself", "cells"])
def test_an_out_dir_in_or_at_a_file_is_one_line_before_anything_trains(tmp_path, capsys, monkeypatch, where):
    def no_training(*a, **k):
        raise AssertionError("a cell trained although --out-dir cannot be written")

    monkeypatch.setattr("qgnn.train.run_experiment", no_training)
    (tmp_path / "file").write_text("")
    out = {"parent": tmp_path / "file" / "cmp", "itself": tmp_path / "file", "cells": tmp_path / "cmp"}[where]
    if where == "cells":  # the folder exists, its cells/ is a file
        out.mkdir()
        (out / "cells").write_text("")
    assert _compare(out, "--methods", "fp32", "qat:4") == 2
    err = capsys.readouterr().err
    assert err.startswith("qgnn: error: --out-dir") and err.count("\n") == 1
    assert (tmp_path / "file").read_text() == "" and not (tmp_path / "cmp" / "compare.json").exists()


def test_a_final_write_that_fails_is_one_line_and_the_other_output_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the rescue folder goes here
    out = tmp_path / "cmp"
    (out / "compare.png").mkdir(parents=True)  # the figure cannot replace a folder
    assert _compare(out, "--methods", "fp32", "--seeds", "1") == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("qgnn: error: could not write --out-dir") and "compare.png" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "1 cells, 1 trained" in captured.out  # the table came before the error line
    assert json.loads((out / "compare.json").read_text())["complete"]  # the other output is written
    rescued = err.split("wrote it to ")[1].split(" instead")[0]
    assert Path(rescued).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_progress_write_that_fails_is_one_line_and_keeps_the_finished_cells(tmp_path, capsys):
    out = tmp_path / "cmp"
    (out / "compare.json").mkdir(parents=True)  # compare.json cannot replace a folder
    assert _compare(out, "--methods", "fp32", "--seeds", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("qgnn: error: could not write --out-dir") and err.count("\n") == 1
    assert (out / "cells" / "fp32.json").is_file() and "run the same command again" in err
