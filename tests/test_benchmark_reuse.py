"""The benchmark harness reuses results written before it (legacy records) only when they hold the cell's
experiment, --dry-run trains and writes nothing, and the documented benchmark commands would train none of the
committed results again (benchmarks/check_reuse.py)."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from qgnn import grid
from qgnn.search.mixq import SearchConfig
from qgnn.train import TrainConfig

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))
import _harness  # noqa: E402  (the module the scripts import)

# Committed results written before the harness: a MixQ search of the old layout (no weight_candidates key, no
# version) and a prompt cell of the old prompt layout (no lr, align, normalize, node_after_quant keys).
SEARCH_HI = RESULTS / "mixq-cora-w248-a48-dq-hi" / "search-l10.json"
SEARCH_C48 = RESULTS / "mixq-cora-c48-dq" / "search-l1.json"
PROMPT_OLD = RESULTS / "prompts-gcn-cora-qat4-lorap.json"
HI = dict(lam=10.0, candidates=(4, 8), weight_candidates=(2, 4, 8), alpha_lr=0.01, final_method="dq")


def _record(path):
    if not path.exists():
        pytest.skip(f"{path.name} is not in benchmarks/results")
    rec = json.loads(path.read_text())
    assert "cell" not in rec  # what these tests are about: a file from before the harness
    return rec


def _search_cell(seeds=5, **search):
    return _harness.Cell("s", TrainConfig(dataset="cora", model="gcn", seeds=seeds), search=SearchConfig(**search),
                         legacy=True)


def _prompt_cell(**prompt):
    return _harness.Cell("p", TrainConfig(dataset="cora", model="gcn", method="qat", bits=4, seeds=5,
                                          prompt={"kind": "lorap", **prompt}), legacy=True)


def test_a_legacy_search_record_matches_its_own_experiment_only():
    rec = _record(SEARCH_HI)
    assert not grid.matches(grid.fingerprint(_search_cell(**HI)), rec)  # the exact path refuses the old layout
    assert _harness.legacy_match(_search_cell(**HI), rec)
    assert not _harness.legacy_match(_search_cell(**{**HI, "alpha_lr": 0.05}), rec)
    assert not _harness.legacy_match(_search_cell(lam=10.0), rec)  # today's recipe fills alpha_lr 0.05
    assert not _harness.legacy_match(_search_cell(**HI, search_epochs=100), rec)
    assert not _harness.legacy_match(_search_cell(seeds=3, **HI), rec)
    # no weight_candidates key: the weight slots searched the activation candidates (None), not the recipe's set
    old = _record(SEARCH_C48)
    c48 = dict(lam=1.0, candidates=(4, 8), alpha_lr=0.01, final_method="dq")
    assert _harness.legacy_match(_search_cell(**c48, weight_candidates=None), old)
    assert not _harness.legacy_match(_search_cell(**c48), old)  # the recipe's weight set (2, 4, 8)


def test_a_legacy_prompt_record_is_read_in_its_layout():
    rec = _record(PROMPT_OLD)
    pinned = _prompt_cell(lr=None, node_after_quant=False)  # the run's lr, node prompt on the float input
    assert not grid.matches(grid.fingerprint(pinned), rec)  # its prompt lacks the keys added since
    assert _harness.legacy_match(pinned, rec)
    assert not _harness.legacy_match(_prompt_cell(), rec)  # the prompt recipe fills lr 1e-3
    assert not _harness.legacy_match(_prompt_cell(lr=None, node_after_quant=True), rec)
    assert not _harness.legacy_match(_prompt_cell(lr=None, node_after_quant=False, rank=4), rec)


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(_harness, "RESULTS_DIR", tmp_path)

    def no_training(cell, path, **kw):
        raise AssertionError(f"{cell.name} would have trained")

    monkeypatch.setattr(_harness, "run_cell", no_training)
    return tmp_path


def test_run_reuses_a_legacy_record_unchanged_only_when_the_cell_accepts_it(results_dir, capsys):
    rec = _record(PROMPT_OLD)
    shutil.copy(PROMPT_OLD, results_dir / "p.json")
    before = (results_dir / "p.json").read_bytes()
    seen = []
    out = _harness.run([_prompt_cell(lr=None, node_after_quant=False)],
                       after=lambda cell, res, cached: seen.append(cached))
    assert seen == [True] and out["p"]["metrics"] == rec["metrics"] and "p: reused" in capsys.readouterr().out
    assert (results_dir / "p.json").read_bytes() == before  # no "cell" key added: the committed file is kept as is
    strict = _harness.Cell("p", _prompt_cell(lr=None, node_after_quant=False).config)  # legacy not accepted
    assert _harness.status(strict)[0] == "would train (the JSON holds another configuration)"
    with pytest.raises(AssertionError, match="would have trained"):
        _harness.run([_prompt_cell(lr=None, node_after_quant=False)], force=True)


def test_dry_run_lists_the_cells_and_writes_nothing(results_dir, capsys):
    _record(PROMPT_OLD)
    shutil.copy(PROMPT_OLD, results_dir / "p.json")
    cells = [_prompt_cell(lr=None, node_after_quant=False),
             _harness.Cell("new", TrainConfig(dataset="cora", seeds=1))]
    with pytest.raises(SystemExit) as e:
        _harness.run(cells, dry_run=True)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "reused       p  [reused (legacy record)]" in out
    assert "would train  new  [would train (no results JSON)]" in out
    assert "dry run: 2 cells, 1 reused (1 legacy records), 1 would train" in out
    assert sorted(p.name for p in results_dir.iterdir()) == ["p.json"]


def test_dry_run_is_an_option_of_every_harness_script(capsys):
    import check_reuse

    for name in check_reuse.SCRIPTS:
        with pytest.raises(SystemExit):
            check_reuse._script(name).main(["--help"])
        assert "--dry-run" in capsys.readouterr().out, name


def test_the_documented_commands_would_train_no_committed_result_again(capsys):
    import check_reuse

    res = check_reuse.check()
    print(f"{res['commands']} commands, {res['cells']} cells: {res['reused']} reused ({res['legacy']} legacy), "
          f"{res['train']} would train")
    assert res["broken"] == []
    assert res["reused"] > 0 and res["commands"] > 0
    # the mixq groups' cells are the files `qgnn sweep` wrote, and their sweep.json stay as they are; a group
    # stopped part-way (its sweep.json holds the λ values that ran) reuses those and would train the rest
    mixq = check_reuse._script("mixq")
    for sweep in RESULTS.glob("mixq-*/sweep.json"):
        group = sweep.parent.name.removeprefix("mixq-")
        done = [r["lambda"] for r in json.loads(sweep.read_text())["rows"]]
        lambdas = list(mixq.GROUPS[group]["lambdas"])
        assert done == [lam for lam in lambdas if lam in done], group
        for cell in mixq.group_cells(group):
            if cell.search is None or cell.search.lam in done:
                assert _harness.status(cell)[0].startswith("reused"), (group, cell.name)
        assert mixq._sweep_current(group) == (done == lambdas), group


def _docs_copy(tmp_path, monkeypatch):
    """The docs copied to tmp_path/docs, where the scripts' renders now write."""
    report = sys.modules["_report"]
    docs = tmp_path / "docs"
    shutil.copytree(BENCH.parent / "docs", docs, ignore=shutil.ignore_patterns("*.png"))
    monkeypatch.setattr(report, "RESULTS_MD", docs / "results.md")
    monkeypatch.setattr(report, "NOTES_DIR", docs / "notes")
    return docs


def test_rerunning_a_mixq_group_trains_nothing_and_keeps_its_files(results_dir, tmp_path, monkeypatch, capsys):
    import check_reuse

    group = "cora-c48-dq"
    if not (RESULTS / f"mixq-{group}" / "sweep.json").exists():
        pytest.skip(f"no committed mixq-{group}")
    shutil.copytree(RESULTS / f"mixq-{group}", results_dir / f"mixq-{group}")
    before = {p.name: p.read_bytes() for p in (results_dir / f"mixq-{group}").iterdir()}
    mixq = check_reuse._script("mixq")
    monkeypatch.setattr(mixq, "RESULTS_DIR", results_dir)
    docs = _docs_copy(tmp_path, monkeypatch)
    assert mixq.main(["--only", group]) == 0  # results_dir's run_cell raises if a cell trains
    assert {p.name: p.read_bytes() for p in (results_dir / f"mixq-{group}").iterdir()} == before
    assert f"mixq-{group}/search-l3: reused" in capsys.readouterr().out
    assert f"| {group} | 3 |" in (docs / "notes" / "mixq.md").read_text()


def test_write_sweep_rebuilds_a_group_summary_as_qgnn_sweep_wrote_it(results_dir, monkeypatch):
    import check_reuse

    group = "cora-c48-dq"
    if not (RESULTS / f"mixq-{group}" / "sweep.json").exists():
        pytest.skip(f"no committed mixq-{group}")
    shutil.copytree(RESULTS / f"mixq-{group}", results_dir / f"mixq-{group}")
    (results_dir / f"mixq-{group}" / "sweep.json").unlink()
    mixq = check_reuse._script("mixq")
    monkeypatch.setattr(mixq, "RESULTS_DIR", results_dir)
    assert not mixq._sweep_current(group)
    mixq.write_sweep(group)
    assert json.loads((results_dir / f"mixq-{group}" / "sweep.json").read_text()) == \
        json.loads((RESULTS / f"mixq-{group}" / "sweep.json").read_text())
    assert mixq._sweep_current(group)


def test_rerunning_a_documented_prompts_command_trains_nothing(results_dir, monkeypatch, capsys):
    import check_reuse

    argv = ["--models", "gcn", "--datasets", "cora", "--hosts", "qat", "dq", "--prompts", "none", "lorap",
            "gpf-lorap", "--seeds", "5"]
    prompts = check_reuse._script("prompts")
    names = [cell.name for cell in prompts.plan(prompts.parser().parse_args(argv))[0]]
    for name in names:
        shutil.copy(RESULTS / f"{name}.json", results_dir)
    before = {p.name: p.read_bytes() for p in results_dir.iterdir()}
    assert prompts.main(argv) == 0  # results_dir's run_cell raises if a cell trains
    assert {p.name: p.read_bytes() for p in results_dir.iterdir()} == before
    assert capsys.readouterr().out.count(": reused") == len(names) == 7
