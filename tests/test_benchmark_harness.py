"""benchmarks/_harness.py: cells run once and are reused, --force retrains, a stop exits 130, and the scripts
migrated to it rebuild their docs sections from the committed JSON exactly."""

import json
import re
import shutil
import sys

import pytest

from qgnn.train import TrainConfig
from qgnn_bench_testutil import BENCH, load_script

RESULTS_MD = BENCH.parent / "docs" / "results.md"


_script = load_script


@pytest.fixture
def harness(tmp_path, monkeypatch):
    h = _script("_harness")
    monkeypatch.setattr(h, "RESULTS_DIR", tmp_path)
    return h


def _cells(h, epochs=2):
    return [h.Cell("t-fp32", TrainConfig(dataset="synthetic-node", seeds=1, epochs=epochs)),
            h.Cell("t-qat4", TrainConfig(dataset="synthetic-node", method="qat", bits=4, seeds=1, epochs=epochs))]


def test_cells_run_once_then_are_reused_and_force_retrains(harness, tmp_path, monkeypatch, capsys):
    seen = []
    harness.run(_cells(harness), after=lambda cell, res, cached: seen.append((cell.name, cached)))
    assert seen == [("t-fp32", False), ("t-qat4", False)]
    res = json.loads((tmp_path / "t-qat4.json").read_text())
    assert "python" in res["command"] and res["cell"]["config"]["bits"] == 4 and res["config"]["epochs"] == 2

    import qgnn.train

    real, trained = qgnn.train.run_experiment, []

    def counting(cfg, **kw):
        trained.append(cfg.method)
        return real(cfg, **kw)

    monkeypatch.setattr("qgnn.train.run_experiment", counting)
    seen.clear()
    harness.run(_cells(harness), after=lambda cell, res, cached: seen.append((cell.name, cached)))
    assert seen == [("t-fp32", True), ("t-qat4", True)] and trained == []
    assert "t-qat4: reused" in capsys.readouterr().out
    harness.run(_cells(harness, epochs=3))  # another configuration: retrained
    assert trained == ["fp32", "qat"]
    harness.run(_cells(harness, epochs=3), force=True)
    assert trained == ["fp32", "qat"] * 2


def test_a_stopped_benchmark_exits_130_and_continues(harness, tmp_path, monkeypatch, capsys):
    from qgnn.train import Control

    stopping = Control(stop_requested=True)  # as after Ctrl-C: stop at the first epoch boundary
    monkeypatch.setattr("qgnn.train.Control", lambda: stopping)
    with pytest.raises(SystemExit) as e:
        harness.run(_cells(harness))
    assert e.value.code == 130 and "run the same command again" in capsys.readouterr().err
    assert (tmp_path / "t-fp32.json.state.pt").exists() and not (tmp_path / "t-fp32.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    harness.run(_cells(harness))
    assert (tmp_path / "t-fp32.json").exists() and not (tmp_path / "t-fp32.json.state.pt").exists()


def test_markdown_pieces(harness):
    assert harness.table(["a", "b"], ["| 1 | 2 |"]) == "| a | b |\n|---|---|\n| 1 | 2 |"
    assert harness.commands(["b", "", "a", "b"]) == "\n\nCommands:\n\n- `a`\n- `b`"


def _section(text, name):
    m = re.search(rf"<!-- begin:{name} -->.*?<!-- end:{name} -->", text, re.S)
    return m.group(0) if m else None


@pytest.mark.parametrize("script, section", [("quant", "quant"), ("a2q", "a2q"), ("baselines", "baselines"),
                                             ("prompts", "prompts"), ("mixq", "mixq")])
def test_migrated_scripts_render_the_committed_section_from_the_committed_json(script, section, tmp_path,
                                                                               monkeypatch):
    mod = _script(script)
    report = sys.modules["_report"]
    page = report.section_page(section)  # docs/results.md or the docs/notes/ page that holds the section
    committed = _section(page.read_text(), section) if page else None
    if committed is None:
        pytest.skip(f"docs has no {section} section")
    docs = tmp_path / "docs"  # a copy: the render must not write the real docs
    shutil.copytree(RESULTS_MD.parent, docs, ignore=shutil.ignore_patterns("*.png"))
    monkeypatch.setattr(report, "RESULTS_MD", docs / "results.md")
    monkeypatch.setattr(report, "NOTES_DIR", docs / "notes")
    assert mod.main(["--render"]) == 0  # the JSON files only: nothing trains
    assert _section((docs / page.relative_to(RESULTS_MD.parent)).read_text(), section) == committed


def test_a2q_takes_the_baselines_fp32_run_of_its_very_protocol():
    """benchmarks/a2q.py trains no second FP32 GIN where baselines.py ran the same configuration (committed
    results: REDDIT-BINARY, 3 folds of 100 epochs); another protocol keeps a cell of its own."""
    mod = _script("a2q")
    cfg = TrainConfig(dataset="reddit-binary", model="gin", method="a2q", bits=4, folds=3, epochs=100)
    assert mod.fp32_cell("gin-reddit-binary", cfg).name == "baseline-gin-reddit-binary"
    other = TrainConfig(dataset="reddit-binary", model="gin", method="a2q", bits=4, folds=2, epochs=100)
    cell = mod.fp32_cell("gin-reddit-binary", other)
    assert cell.name == "a2q-gin-reddit-binary-fp32" and cell.config.method == "fp32" and cell.config.folds == 2
