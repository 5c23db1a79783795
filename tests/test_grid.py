"""qgnn.grid: which results a cell may reuse, and what happens to a resume state it cannot continue."""

import json

import pytest

from qgnn.grid import Cell, fingerprint, load_cached, matches, run_cell, state_path
from qgnn.search.mixq import SearchConfig
from qgnn.train import Control, Interrupted, TrainConfig


def _cell(name="c", **kw):
    return Cell(name, TrainConfig(**{"dataset": "synthetic-node", "seeds": 1, "epochs": 3, **kw}))


def test_results_without_a_cell_key_match_on_their_recorded_config():
    cell = _cell(method="qat", bits=4)
    fp = fingerprint(cell)
    recorded = dict(fp["config"], model_kwargs={"readout_norm": True})  # set by the runner, not asked for
    for key in ("eval_every", "prompt", "recipes"):  # keys added to the config after the file was written
        recorded.pop(key, None)
    assert matches(fp, {"config": recorded})
    assert not matches(fp, {"config": dict(recorded, epochs=4)})
    assert not matches(fp, {"config": dict(recorded, model_kwargs={"readout_norm": True, "hidden_bias": False})})
    assert not matches(fp, {"config": "not a config"})
    search = Cell("s", cell.config, search=SearchConfig())
    assert not matches(fingerprint(search), {"config": recorded})  # a search is never matched by config alone
    # with the cell key, only an equal fingerprint matches
    assert matches(fp, {"cell": fp, "config": {}})
    assert not matches(fp, {"cell": fingerprint(_cell(method="qat", bits=8)), "config": fp["config"]})


def test_recipe_changes_change_the_fingerprint(monkeypatch):
    import qgnn.recipes as recipes

    a2q = _cell(method="a2q")  # bits left to the recipe
    before = fingerprint(a2q)
    assert before["config"]["bits"] is not None
    key = next(k for k in recipes._METHODS if k[0] == "a2q")
    monkeypatch.setitem(recipes._METHODS, key, recipes.MethodRecipe("test-a2q", bits=before["config"]["bits"] - 1))
    assert fingerprint(a2q) != before


def test_torn_results_are_not_reused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"config": ')
    assert load_cached(_cell(), path) is None


def _interrupt_at(epoch):
    control = Control()
    control.on_epoch_end.append(lambda run, e: setattr(control, "stop_requested", e + 1 == epoch))
    return control


def test_a_state_of_another_configuration_is_removed_with_a_note(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(Interrupted):
        run_cell(_cell(epochs=5), path, control=_interrupt_at(2))
    assert state_path(path).exists()
    notes = []
    res, cached = run_cell(_cell(epochs=4), path, note=notes.append)
    assert not cached and res["config"]["epochs"] == 4 and not state_path(path).exists()
    assert len(notes) == 1 and "saved for another configuration" in notes[0]
    assert json.loads(path.read_text())["cell"] == fingerprint(_cell(epochs=4))


def test_an_unreadable_state_is_removed_with_a_note(tmp_path):
    path = tmp_path / "c.json"
    state_path(path).write_bytes(b"not a torch file")
    notes = []
    res, cached = run_cell(_cell(), path, note=notes.append)
    assert not cached and len(res["runs"]) == 1
    assert len(notes) == 1 and "unreadable" in notes[0]


def test_a_stopped_cell_resumes_from_its_state(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(Interrupted):
        run_cell(_cell(seeds=2), path, control=_interrupt_at(2))
    notes = []
    resumed, cached = run_cell(_cell(seeds=2), path, note=notes.append)
    assert not cached and any("resuming after 2 of 6 epochs" in n for n in notes)
    fresh, _ = run_cell(_cell(seeds=2), tmp_path / "fresh.json")
    assert resumed["metrics"]["test_acc"]["runs"] == fresh["metrics"]["test_acc"]["runs"]


def test_a_stopped_search_cell_resumes_from_its_state(tmp_path):
    cell = Cell("s", TrainConfig(dataset="synthetic-node", seeds=1, epochs=3), search=SearchConfig())
    path = tmp_path / "s.json"
    with pytest.raises(Interrupted, match="stopped in the search"):  # as after Ctrl-C in the first search epoch
        run_cell(cell, path, control=Control(stop_requested=True))
    assert not path.exists() and state_path(path).exists()  # the search's place is kept
    notes = []
    res, cached = run_cell(cell, path, note=notes.append)
    assert not cached and any("resuming after 1 of 6 epochs" in n for n in notes) and not state_path(path).exists()
    assert res["cell"]["kind"] == "search" and len(res["search"]["assignments"]) == 1
    fresh, _ = run_cell(cell, tmp_path / "fresh.json")
    assert res["search"]["assignments"] == fresh["search"]["assignments"]
    assert res["metrics"]["test_acc"]["runs"] == fresh["metrics"]["test_acc"]["runs"]
    assert run_cell(cell, path)[1]  # then it is reused


def test_a_search_state_of_another_lambda_is_removed_with_a_note(tmp_path):
    cell = Cell("s", TrainConfig(dataset="synthetic-node", seeds=1, epochs=2), search=SearchConfig(lam=1.0))
    path = tmp_path / "s.json"
    with pytest.raises(Interrupted):
        run_cell(cell, path, control=Control(stop_requested=True))
    notes = []
    other = Cell("s", cell.config, search=SearchConfig(lam=2.0))
    res, cached = run_cell(other, path, note=notes.append)
    assert not cached and res["search"]["lam"] == 2.0 and not state_path(path).exists()
    assert len(notes) == 1 and "saved for another configuration" in notes[0]
