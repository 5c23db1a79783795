"""MixQ-GNN search runs are resumable like training runs: a search stopped in either phase continues from its state
(``<out>.state.pt``) to the uninterrupted result, a stale state is refused or deleted on request, and `qgnn search`,
`qgnn sweep` and `qgnn compare` keep a stopped search's work."""

import json
import os
import signal

import pytest
import torch

from qgnn.errors import CheckpointError, ConfigError
from qgnn.search import mixq
from qgnn.search.mixq import SearchConfig, run_search, state_epochs
from qgnn.train import Control, Interrupted, TrainConfig
from qgnn.train.checkpoint import load_checkpoint, load_state
from qgnn.train.tasks import NodeTask

SEARCH = dict(lam=0.5, search_epochs=3)   # per run: 3 search epochs, then 4 fixed-bit epochs
CFG = dict(dataset="synthetic", model="gcn", seeds=2, epochs=4)
PER_RUN = 3 + 4


@pytest.fixture
def synthetic(monkeypatch):
    """A tiny node dataset in place of a real one (as tests/search/test_search_mixq.py)."""
    from qgnn.data.synthetic import random_node_dataset
    from qgnn.train import runner as runner_mod

    ds = random_node_dataset(num_nodes=60, num_features=8, seed=0)
    monkeypatch.setattr(runner_mod, "load_for", lambda cfg, root=None: ds)
    monkeypatch.setattr(runner_mod, "_dataset_task", lambda name: "node")


def _stop_at(call: int) -> tuple[Control, list]:
    """A Control that asks to stop after the ``call``-th epoch (counting the epochs of both phases of every run this
    call of run_search trains), and the (run, epoch) list its callback saw."""
    control, seen = Control(), []

    def cb(run, epoch):
        seen.append((run, epoch))
        control.stop_requested = len(seen) == call

    control.on_epoch_end.append(cb)
    return control, seen


def _search(tmp_path, name, cfg=None, sc=None, **kw):
    return run_search(TrainConfig(**{**CFG, **(cfg or {})}), SearchConfig(**{**SEARCH, **(sc or {})}),
                      out=tmp_path / f"{name}.json", save=tmp_path / f"{name}.ckpt", progress=False, **kw)


def _untimed(runs):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in runs]


def test_a_search_stopped_in_either_phase_resumes_to_the_uninterrupted_result(tmp_path, synthetic):
    reference = _search(tmp_path, "ref")
    state = tmp_path / "s.json.state.pt"

    control, _ = _stop_at(2)  # run 1, search epoch 2
    with pytest.raises(Interrupted, match="stopped in the search of run 1 .*epoch 2; resume with --resume"):
        _search(tmp_path, "s", control=control)
    saved = load_state(state)
    assert saved["kind"] == "search" and saved["runs"] == []
    assert saved["current"]["phase"] == "search" and saved["current"]["search"]["epoch"] == 2
    assert state_epochs(saved) == 2

    # resumed: run 1's last search epoch and its fixed-bit epochs, run 2's search, then stopped at its fixed-bit epoch 2
    control, seen = _stop_at(1 + 4 + 3 + 2)
    with pytest.raises(Interrupted, match="stopped at run 2, epoch 2"):
        _search(tmp_path, "s", control=control, resume=True)
    assert seen[0] == (0, 2)  # the search went on from its third epoch, not from the start
    saved = load_state(state)
    assert len(saved["runs"]) == 1 and saved["current"]["index"] == 1 and saved["current"]["phase"] == "train"
    assert saved["current"]["run"]["epoch"] == 2 and saved["current"]["found"]["assignment"]
    assert state_epochs(saved) == PER_RUN + 3 + 2

    control, seen = _stop_at(0)
    resumed = _search(tmp_path, "s", control=control, resume=True)
    assert seen == [(1, 2), (1, 3)]  # only the fixed-bit epochs left: neither the search nor run 1 ran again
    assert not state.exists()  # the outputs are written: the state goes
    assert resumed["search"]["assignments"] == reference["search"]["assignments"]
    assert _untimed(resumed["runs"]) == _untimed(reference["runs"])  # selected epochs, scores, expected bits...
    assert resumed["selected_run"] == reference["selected_run"]
    (got, _), (want, _) = load_checkpoint(tmp_path / "s.ckpt"), load_checkpoint(tmp_path / "ref.ckpt")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # bit-identical


def test_a_killed_search_resumes_from_its_last_timed_save(tmp_path, synthetic):
    """A process killed mid-search (no stop request, no save on the way out) loses at most ``save_every`` seconds:
    with save_every=0 the state is saved at every epoch boundary, and resuming from it gives the same result."""
    reference = _search(tmp_path, "ref", cfg={"seeds": 1})

    class Killed(Exception):
        pass

    def kill(run, epoch):
        if epoch == 1:  # in the search's second epoch: its end is never saved
            raise Killed

    with pytest.raises(Killed):
        _search(tmp_path, "s", cfg={"seeds": 1}, control=Control(on_epoch_end=[kill]), save_every=0.0)
    assert load_state(tmp_path / "s.json.state.pt")["current"]["search"]["epoch"] == 1
    resumed = _search(tmp_path, "s", cfg={"seeds": 1}, resume=True)
    assert _untimed(resumed["runs"]) == _untimed(reference["runs"])


def test_a_graph_search_resumes_at_the_same_validation_batch(tmp_path, monkeypatch):
    """α steps on validation batches in turn; a resumed search must take the one the uninterrupted search takes.
    Validation batches of 2 graphs (3 per pass), 2 training batches per epoch: after 2 epochs 4 were taken, which
    is not a whole number of passes."""
    from qgnn.train.tasks import GraphTask

    defaults = dict(zip(("batch_size", "device", "eval_batch_size", "shard"), GraphTask.__init__.__defaults__,
                        strict=True))
    monkeypatch.setattr(GraphTask.__init__, "__defaults__", tuple({**defaults, "eval_batch_size": 2}.values()))
    cfg = TrainConfig(dataset="synthetic-graph", model="gin", seeds=1, folds=2, epochs=2)
    sc = SearchConfig(lam=0.5, search_epochs=3)
    reference = run_search(cfg, sc, progress=False)
    control, _ = _stop_at(3 + 2 + 2)  # fold 0's 3 search and 2 fixed-bit epochs, then 2 search epochs of fold 1
    with pytest.raises(Interrupted, match="stopped in the search of run 2 .*fold 1.*epoch 2"):
        run_search(cfg, sc, out=tmp_path / "g.json", progress=False, control=control)
    assert load_state(tmp_path / "g.json.state.pt")["current"]["search"]["val_batches"] % 3 != 0
    resumed = run_search(cfg, sc, out=tmp_path / "g.json", progress=False, resume=True)
    assert _untimed(resumed["runs"]) == _untimed(reference["runs"])


def test_a_stale_state_is_refused_kept_or_replaced(tmp_path, synthetic):
    from qgnn.train import run_experiment

    control, _ = _stop_at(PER_RUN + 1)  # run 2's first search epoch
    with pytest.raises(Interrupted):
        _search(tmp_path, "s", control=control)
    state = tmp_path / "s.json.state.pt"
    before = state.read_bytes()
    with pytest.raises(ConfigError, match="holds an interrupted run .*--resume to continue it.*--overwrite"):
        _search(tmp_path, "s")  # neither --resume nor --overwrite: refused, and the state is kept
    assert state.read_bytes() == before
    with pytest.raises(CheckpointError, match="saved for a different configuration"):
        _search(tmp_path, "s", sc={"lam": 1.0}, resume=True)  # another λ
    with pytest.raises(CheckpointError, match="saved for a different configuration"):
        _search(tmp_path, "s", cfg={"epochs": 5}, resume=True)  # other fixed-bit epochs
    # nor does `qgnn train` take it for its own, even with the fixed-bit phase's very configuration
    final = TrainConfig(**{**CFG, "method": SearchConfig().final_method, "bits": 8})
    assert load_state(state)["config"] == final.resolve("node").to_dict()
    with pytest.raises(CheckpointError, match="saved for a different configuration"):
        run_experiment(final, out=tmp_path / "s.json", resume=True, progress=False)
    assert state.read_bytes() == before
    control, seen = _stop_at(0)
    _search(tmp_path, "s", overwrite=True, control=control)  # starts over
    assert len(seen) == 2 * PER_RUN and not state.exists()


# ------------------------------------------------------------------------------------------- commands
def _ctrl_c_at(monkeypatch, owner, name: str, call: int) -> None:
    """Send SIGINT (what Ctrl-C sends) after the ``call``-th call of the epoch function ``owner.name``."""
    real, calls = getattr(owner, name), []

    def epoch_then_ctrl_c(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(owner, name, epoch_then_ctrl_c)


def test_cli_search_ctrl_c_then_resume(tmp_path, capsys, monkeypatch):
    from qgnn.cli import main

    args = ["search", "--dataset", "synthetic-node", "--seeds", "2", "--epochs", "3", "--lambda", "0.5", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "ref.json")]) == 0
    reference = json.loads((tmp_path / "ref.json").read_text())

    out = tmp_path / "s.json"
    with monkeypatch.context() as m:
        _ctrl_c_at(m, NodeTask, "train_epoch", 3 + 2)  # run 2's second fixed-bit epoch
        assert main([*args, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "stopping after this epoch" in err and "resume with --resume" in err
    assert not out.exists() and (tmp_path / "s.json.state.pt").exists()
    assert main([*args, "--out", str(out)]) == 2  # the state is not deleted without a word
    err = capsys.readouterr().err
    assert err.startswith("qgnn: error:") and "--resume" in err and err.count("\n") == 1
    assert main([*args, "--out", str(out), "--resume"]) == 0
    resumed = json.loads(out.read_text())
    assert _untimed(resumed["runs"]) == _untimed(reference["runs"]) and not (tmp_path / "s.json.state.pt").exists()
    assert main([*args, "--out", str(out), "--resume", "--overwrite"]) == 2


def test_cli_sweep_continues_a_stopped_lambda(tmp_path, capsys, monkeypatch):
    from qgnn.cli import main

    args = ["sweep", "--dataset", "synthetic-node", "--seeds", "1", "--epochs", "2", "--lambdas", "0", "1",
            "--no-fp32", "--quiet", "--out-dir", str(tmp_path)]
    with monkeypatch.context() as m:
        _ctrl_c_at(m, mixq, "_node_step", 2 + 1)  # λ = 1's first search epoch
        assert main(args) == 130
    assert (tmp_path / "search-l0.json").exists() and (tmp_path / "search-l1.json.state.pt").exists()
    capsys.readouterr()
    assert main(args) == 0
    assert not (tmp_path / "search-l1.json.state.pt").exists()
    assert [r["lambda"] for r in json.loads((tmp_path / "sweep.json").read_text())["rows"]] == [0.0, 1.0]


def test_compare_resumes_a_stopped_mixq_cell(tmp_path, capsys, monkeypatch):
    from qgnn.cli import main
    from qgnn.testing.progress import recording_tqdm

    Recording, bars = recording_tqdm()

    def compare(out):
        return main(["compare", "--dataset", "synthetic-node", "--epochs", "3", "--seeds", "2", "--quiet",
                     "--methods", "mixq", "--out-dir", str(out)])

    assert compare(tmp_path / "ref") == 0
    monkeypatch.setattr("qgnn.compare.run.tqdm", Recording)
    with monkeypatch.context() as m:
        _ctrl_c_at(m, mixq, "_node_step", 3 + 2)  # seed 2's second search epoch
        assert compare(tmp_path / "cmp") == 130
    err = capsys.readouterr().err
    assert "stopped in cell mixq" in err and "resumes from its saved state" in err
    assert (tmp_path / "cmp" / "cells" / "mixq.json.state.pt").exists()
    assert compare(tmp_path / "cmp") == 0
    assert "resuming after 8 of 12 epochs" in capsys.readouterr().err
    bar = bars[-1]  # the resumed grid's bar: 8 epochs done at once, then the 4 trained one by one
    assert bar.total == 12 and bar.n == 12 and sum(bar.steps[:-4]) == 8 and bar.steps[-4:] == [1] * 4
    cells = [json.loads((d / "cells" / "mixq.json").read_text()) for d in (tmp_path / "ref", tmp_path / "cmp")]
    assert _untimed(cells[0]["runs"]) == _untimed(cells[1]["runs"])


@pytest.mark.parametrize("alpha_split", ["val", "train"])
def test_a_minibatch_search_resumes_to_the_uninterrupted_result(tmp_path, synthetic, alpha_split):
    """The search and its fixed-bit training on sampled mini-batches (node tasks, --fanout): stopped in the
    search, resumed, the same widths and the same weights, bit for bit (the task's generator is in the state)."""
    mb = {"seeds": 1, "fanout": [3, 3], "batch_size": 8}
    sc = {"alpha_split": alpha_split}
    reference = _search(tmp_path, "ref", cfg=mb, sc=sc)
    assert reference["config"]["fanout"] == [3, 3]
    control, _ = _stop_at(2)
    with pytest.raises(Interrupted, match="stopped in the search of run 1 .*epoch 2"):
        _search(tmp_path, "s", cfg=mb, sc=sc, control=control)
    resumed = _search(tmp_path, "s", cfg=mb, sc=sc, resume=True)
    assert resumed["search"]["assignments"] == reference["search"]["assignments"]
    assert _untimed(resumed["runs"]) == _untimed(reference["runs"])
    (got, _), (want, _) = load_checkpoint(tmp_path / "s.ckpt"), load_checkpoint(tmp_path / "ref.ckpt")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
