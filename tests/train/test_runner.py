import json

import pytest
import torch

from conftest import needs_data
from qgnn.errors import CheckpointError, ConfigError
from qgnn.train import Control, Interrupted, TrainConfig, load_checkpoint, run_experiment


def _node_cfg(**kw):
    return TrainConfig(**{"dataset": "synthetic-node", "model": "gcn", "seeds": 2, "epochs": 40, **kw})


def test_node_runs_learn_and_report(tmp_path):
    res = run_experiment(_node_cfg(), out=tmp_path / "r.json", save=tmp_path / "m.ckpt", progress=False)
    assert set(res) >= {"config", "metrics", "timing", "env", "runs"}
    assert res["metrics"]["test_acc"]["mean"] > 0.6  # 3 classes: chance is 1/3
    assert len(res["metrics"]["test_acc"]["runs"]) == 2
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert on_disk["config"]["epochs"] == 40 and on_disk["config"]["lr"] == 0.01  # recipe filled in
    _, meta = load_checkpoint(tmp_path / "m.ckpt")
    sel = res["runs"][res["selected_run"]]
    assert meta["selected_run"]["val_acc"] == max(r["val_acc"] for r in res["runs"]) == sel["val_acc"]
    assert not (tmp_path / "r.json.state.pt").exists()  # resume state removed once finished


def test_graph_runs_use_folds(tmp_path):
    cfg = TrainConfig(dataset="synthetic-graph", model="gin", folds=2, epochs=5, batch_size=16)
    res = run_experiment(cfg, progress=False)
    assert [r["fold"] for r in res["runs"]] == [0, 1]
    assert 0.0 <= res["metrics"]["test_acc"]["mean"] <= 1.0


@pytest.mark.parametrize("dataset,model", [("synthetic-node", "gcn"), ("synthetic-graph", "gin")])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, dataset, model):
    kw = dict(dataset=dataset, model=model, epochs=12, **({"seeds": 2} if model == "gcn" else {"folds": 2}))
    full = run_experiment(TrainConfig(**kw), progress=False)

    control = Control()

    def stop_in_second_run(run, epoch):
        if run == 1 and epoch == 4:
            control.stop_requested = True

    control.on_epoch_end.append(stop_in_second_run)
    out = tmp_path / "r.json"
    with pytest.raises(Interrupted, match="--resume"):
        run_experiment(TrainConfig(**kw), out=out, progress=False, control=control)
    assert (tmp_path / "r.json.state.pt").exists() and not out.exists()
    resumed = run_experiment(TrainConfig(**kw), out=out, resume=True, progress=False)
    for a, b in zip(full["runs"], resumed["runs"], strict=True):
        for k in ("best_epoch", "val_acc", "test_acc", "val_loss"):
            assert a[k] == b[k], k


def test_eval_every_selects_among_validated_epochs_only():
    res = run_experiment(_node_cfg(epochs=9, eval_every=4, seeds=2), progress=False)
    assert {r["best_epoch"] for r in res["runs"]} <= {3, 7, 8}
    assert all("val_acc" in r and "test_acc" in r for r in res["runs"])


def test_resume_refuses_state_of_another_config(tmp_path):
    control = Control(on_epoch_end=[lambda r, e: setattr(control, "stop_requested", True)])
    with pytest.raises(Interrupted):
        run_experiment(_node_cfg(), out=tmp_path / "r.json", progress=False, control=control)
    with pytest.raises(CheckpointError, match="different configuration"):
        run_experiment(_node_cfg(lr=0.02), out=tmp_path / "r.json", resume=True, progress=False)


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="--bits"):
        TrainConfig(bits=9).validate()
    with pytest.raises(ConfigError, match="--eval-every"):
        TrainConfig(eval_every=0).validate()
    with pytest.raises(ConfigError, match="unknown config keys: colour"):
        TrainConfig.from_dict({"colour": 1})


@needs_data
def test_gcn_on_cora_reaches_published_range():
    res = run_experiment(TrainConfig(dataset="Cora", model="gcn", seeds=2), progress=False)
    assert res["metrics"]["test_acc"]["mean"] > 0.78


@needs_data
def test_gin_on_mutag_trains_on_two_folds():
    res = run_experiment(TrainConfig(dataset="MUTAG", model="gin", folds=2, epochs=20), progress=False)
    assert res["metrics"]["test_acc"]["mean"] > 0.6  # majority class is 66%; a broken loop lands far off


@needs_data
@pytest.mark.parametrize("normalize", [True, False])
def test_runner_loads_data_with_the_resolved_recipe(normalize):
    # Regression: the loader once ran before the recipe was resolved, so Cora trained on raw features
    # while the results JSON said normalize_features=True.
    from qgnn.train import Runner

    default = None if normalize else False
    runner = Runner(TrainConfig(dataset="cora", model="gcn", seeds=1, epochs=1, normalize_features=default),
                    progress=False)
    assert runner.cfg.normalize_features is normalize
    row_sums = runner.ds.data.x.sum(1)
    nonzero = row_sums > 0
    assert torch.allclose(row_sums[nonzero], torch.ones(int(nonzero.sum()))) is normalize


def test_constant_node_features_turn_on_the_normalised_readout():
    from qgnn.train.config import TrainConfig
    from qgnn.train.runner import Runner

    r = Runner(TrainConfig(dataset="synthetic-graph", model="gin", node_features="constant", epochs=1, folds=1))
    assert r.cfg.model_kwargs["readout_norm"] is True
    assert r.build().readout_norms[0].num_features == 1
    r = Runner(TrainConfig(dataset="synthetic-graph", model="gin", node_features="degree", epochs=1, folds=1))
    assert "readout_norm" not in r.cfg.model_kwargs


# ------------------------------------------------------------------------------------------- the Task protocol
class _MinimalTask:
    """Only what the Task protocol requires, around a NodeTask: no optional hook."""

    metric = "acc"

    def __init__(self, inner):
        self._inner = inner

    def train_epoch(self, model, opt, penalties):
        return self._inner.train_epoch(model, opt, penalties)

    def evaluate(self, model):
        return self._inner.evaluate(model)

    def generators(self):
        return {}


def test_a_task_with_only_the_required_members_runs_and_resumes(tmp_path):
    """The runner's defaults stand in for every optional hook: a task with metric / train_epoch / evaluate /
    generators alone trains, selects, and resumes to the same result as the NodeTask it wraps."""
    from qgnn.train import Runner, Task

    class MinimalRunner(Runner):
        def task_for(self, fold):
            return _MinimalTask(super().task_for(fold))

    cfg = _node_cfg(epochs=6, seeds=2)
    plain = Runner(cfg, progress=False).run()
    assert isinstance(_MinimalTask(None), Task)
    control = Control()
    control.on_epoch_end.append(lambda r, e: setattr(control, "stop_requested", (r, e) == (1, 2)))
    state = tmp_path / "m.state.pt"
    with pytest.raises(Interrupted):
        MinimalRunner(cfg, progress=False, state_path=state, control=control).run()
    minimal = MinimalRunner(cfg, progress=False, state_path=state).run(resume=True)
    for a, b in zip(plain["runs"], minimal["runs"], strict=True):
        assert {k: v for k, v in a.items() if "seconds" not in k} == {k: v for k, v in b.items() if "seconds" not in k}
    assert plain["metrics"].keys() == minimal["metrics"].keys()


def test_every_task_keeps_the_protocol():
    from qgnn.train import Runner, Task
    from qgnn.train.minibatch import MiniBatchNodeTask
    from qgnn.train.tasks import GraphTask, NodeTask

    for cfg, cls in ((_node_cfg(epochs=1), NodeTask), (_node_cfg(epochs=1, fanout=[2, 2]), MiniBatchNodeTask),
                     (TrainConfig(dataset="synthetic-graph", model="gin", folds=1, epochs=1), GraphTask)):
        runner = Runner(cfg, progress=False)
        task = runner.task_for(0 if cls is GraphTask else None)
        assert type(task) is cls is runner.task_class and isinstance(task, Task)
