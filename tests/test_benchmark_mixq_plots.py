"""benchmarks/mixq.py's Pareto figures: drawn with qgnn.plotting and the front of qgnn.compare.table, written
beside the docs page that links them (the section's text is checked by test_benchmark_harness.py)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
PNG = b"\x89PNG\r\n\x1a\n"


def _script(name):
    """Import benchmarks/<name>.py under a private name (the scripts are not a package)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pareto_plots_are_written_from_the_committed_sweeps(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    mod = _script("mixq")
    monkeypatch.setattr(sys.modules["_report"], "RESULTS_MD", tmp_path / "results.md")  # not the real docs
    for dataset in ("cora", "citeseer"):  # the datasets with committed sweeps
        path = mod.pareto_plot(dataset)
        assert path == tmp_path / f"mixq-pareto-{dataset}.png" and path.read_bytes()[:8] == PNG
    assert mod.pareto_plot("pubmed") is None  # no sweep row: no figure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixq-pareto-citeseer.png", "mixq-pareto-cora.png"]
