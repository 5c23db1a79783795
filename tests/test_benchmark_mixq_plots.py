"""benchmarks/mixq.py's Pareto figures: drawn with qgnn.plotting and the front of qgnn.compare.table, written
beside the docs page that links them (the section's text is checked by test_benchmark_harness.py)."""

import sys

import pytest

from qgnn_bench_testutil import load_script

PNG = b"\x89PNG\r\n\x1a\n"


_script = load_script


def test_pareto_plots_are_written_from_the_committed_sweeps(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    mod = _script("mixq")
    monkeypatch.setattr(sys.modules["_report"], "RESULTS_MD", tmp_path / "results.md")  # not the real docs
    drawn = ("cora", "citeseer", "proteins", "imdb-binary")  # the datasets with committed sweeps
    for dataset in drawn:
        path = mod.pareto_plot(dataset)
        assert path == tmp_path / f"mixq-pareto-{dataset}.png" and path.read_bytes()[:8] == PNG
    assert mod.pareto_plot("pubmed") is None  # no sweep row: no figure
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"mixq-pareto-{d}.png" for d in drawn)


def test_fp32_reference_pairs_the_search_rows_folds():
    """A graph task's FP32 point is FP32 GIN on the search row's own folds, at its epochs; none where the
    baselines' run has another protocol or lacks a fold."""
    mod = _script("mixq")
    run = mod._harness.load("mixq-proteins-gin/search-l0.25")
    base = mod._harness.load("baseline-gin-proteins")
    by_fold = {r["fold"]: r["test_acc"] for r in base["runs"]}
    some = dict(run, runs=run["runs"][:3])  # three of its ten folds
    want = 100 * sum(by_fold[r["fold"]] for r in some["runs"]) / 3
    assert mod._fp32_reference(some) == pytest.approx(want)
    assert mod._fp32_reference(run) != pytest.approx(want)  # the ten folds' mean is another number
    longer = dict(run, config=dict(run["config"], epochs=run["config"]["epochs"] + 1))
    assert mod._fp32_reference(longer) is None  # another protocol: not paired
    missing = dict(run, runs=[dict(run["runs"][0], fold=99)])
    assert mod._fp32_reference(missing) is None


def test_plain_commands_are_the_cells_they_stand_for():
    """A graph-classification row's `qgnn search` command parses to its cell's configuration (the check
    plain_command makes); a group with options the defaults lack gets no plain command."""
    mod = _script("mixq")
    assert mod.plain_command("proteins-gin", 0.25) == ("qgnn search --dataset PROTEINS --model gin --lambda 0.25 "
                                                        "--search-epochs 100")
    assert mod.plain_command("imdb-binary-gin", 50.0) == ("qgnn search --dataset IMDB-BINARY --model gin "
                                                           "--search-epochs 100")
    assert mod.plain_command("reddit-binary-gin", 0.25).endswith("--search-epochs 100 --folds 3 --epochs 100")
    assert mod.plain_command("cora-c48", 1.0) is None  # α lr 0.01, plain QAT, candidates {4, 8}: not the defaults


def test_other_methods_join_the_plot_at_the_same_protocol(tmp_path, monkeypatch):
    """REDDIT-BINARY's search row is drawn beside the uniform-width and A2Q rows of its own protocol (3 folds of
    100 epochs), and MixQ-GNN's accuracy without a width as a line; rows of another protocol stay out."""
    pytest.importorskip("matplotlib")
    import json
    import shutil

    mod = _script("mixq")
    real = mod.RESULTS_DIR
    (tmp_path / "mixq-reddit-binary-gin").mkdir()
    base = json.loads((real / "baseline-gin-reddit-binary.json").read_text())
    (tmp_path / "mixq-reddit-binary-gin" / "search-l0.25.json").write_text(json.dumps(base))  # its config / folds
    row = {"lambda": 0.25, "test_acc": 89.0, "test_std": 1.0, "bitops_reduction": 50.0, "bitops_reduction_linear": 6.5}
    (tmp_path / "mixq-reddit-binary-gin" / "sweep.json").write_text(json.dumps({"rows": [row]}))
    for name in ("quant-gin-reddit-binary-dq4", "quant-gin-reddit-binary-qat4", "baseline-gin-reddit-binary"):
        shutil.copy(real / f"{name}.json", tmp_path)
    other = json.loads((real / "quant-gin-reddit-binary-dq8.json").read_text())
    other["config"]["epochs"] = 350  # another protocol
    (tmp_path / "quant-gin-reddit-binary-dq8.json").write_text(json.dumps(other))
    monkeypatch.setattr(mod, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(sys.modules["_harness"], "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(sys.modules["_report"], "RESULTS_MD", tmp_path / "results.md")

    got = mod._other_points("reddit-binary", {"3 folds, 100 epochs"})
    assert sorted(p[4] for p in got["uniform"]) == ["dq 4", "qat 4"] and got["a2q"] == []
    dq4 = json.loads((real / "quant-gin-reddit-binary-dq4.json").read_text())
    assert next(p for p in got["uniform"] if p[4] == "dq 4")[:3] == (
        dq4["cost"]["bitops_reduction_linear"], dq4["cost"]["bitops_reduction"],
        100 * dq4["metrics"]["test_acc"]["mean"])
    assert mod._other_points("reddit-binary", {"3 folds, 100 epochs", "5 seeds"}) == {"uniform": [], "a2q": []}
    path = mod.pareto_plot("reddit-binary")
    assert path == tmp_path / "mixq-pareto-reddit-binary.png" and path.read_bytes()[:8] == PNG
