"""A line per finished run on stderr where progress is automatic but no bar is drawn (stderr not a terminal:
a log file, pytest's capture); nothing with --quiet or progress=False; searches too."""

from __future__ import annotations

import re

from qgnn.cli import main
from qgnn.train import TrainConfig, run_experiment
from qgnn.train.results import run_line

LINE = re.compile(r"^qgnn: (\S+) run (\d+)/(\d+) \((fold|seed) \d+\): val acc [\d.]+, test acc [\d.]+ "
                  r"\(epoch \d+ of \d+\), [\d.]+ min$")


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " run " in line and line.startswith("qgnn: ")]


def test_each_finished_run_logs_one_line_when_no_bar_is_drawn(tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic-graph", "--model", "gin", "--folds", "2", "--epochs", "2",
                 "--out", str(tmp_path / "r.json")]) == 0
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines
    assert [LINE.match(line).group(2, 3) for line in lines] == [("1", "2"), ("2", "2")]
    assert "synthetic-graph/gin/fp32" in lines[0] and "(fold 0)" in lines[0] and "(fold 1)" in lines[1]


def test_quiet_and_progress_false_log_nothing(tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic-node", "--epochs", "2", "--seeds", "2", "--quiet",
                 "--out", str(tmp_path / "r.json")]) == 0
    assert _lines(capsys.readouterr().err) == []
    run_experiment(TrainConfig(dataset="synthetic-node", epochs=2, seeds=1), progress=False)
    assert _lines(capsys.readouterr().err) == []


def test_a_search_logs_its_runs(tmp_path, capsys):
    assert main(["search", "--dataset", "synthetic-node", "--epochs", "2", "--search-epochs", "1", "--seeds", "2",
                 "--out", str(tmp_path / "s.json")]) == 0
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 2 and "synthetic-node/gcn/search λ=50" in lines[0] and "(seed 1)" in lines[1]


def test_line_formats_by_metric():
    r = {"seed": 3, "best_epoch": 9, "epochs_run": 40, "val_mae": 0.51234, "test_mae": 0.6}
    assert run_line("esol/gin/dq", 1, 5, r, "mae", 90.0) == (
        "qgnn: esol/gin/dq run 2/5 (seed 3): val mae 0.5123, test mae 0.6000 (epoch 10 of 40), 1.5 min")
    r = {"fold": None, "seed": 0, "val_recall@20": 0.123456}
    assert run_line("g/lightgcn/qat", 0, 1, r, "recall@20", 6.0) == (
        "qgnn: g/lightgcn/qat run 1/1 (seed 0): val recall@20 0.1235, 0.1 min")
