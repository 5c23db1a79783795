"""The recommendation path of run_experiment: JSON layout, checkpoint, --pretrained, methods, resume, errors."""

import json

import pytest
import torch

from qgnn.cli import main
from qgnn.data.synthetic import random_rec_dataset
from qgnn.errors import CheckpointError, ConfigError
from qgnn.train import TrainConfig, load_model, run_experiment
from qgnn.train.rec import RecTask
from qgnn.train.runner import Control, Interrupted

FAST = dict(dataset="synthetic-rec", model="lightgcn", epochs=3, batch_size=64, hidden=8, lr=0.01)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    res = run_experiment(TrainConfig(**FAST, seeds=2), out=d / "fp32.json", save=d / "fp32.ckpt", progress=False)
    return d, res


def test_fp32_results_layout_and_checkpoint(pretrained):
    d, res = pretrained
    on_disk = json.loads((d / "fp32.json").read_text())
    for k in ("config", "metrics", "timing", "cost", "runs", "env"):
        assert k in on_disk
    for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert set(res["metrics"][k]) == {"mean", "std", "runs"} and len(res["metrics"][k]["runs"]) == 2
        assert 0 <= res["metrics"][k]["mean"] <= 1
    assert res["cost"]["compression"] == 1.0 and res["timing"]["seconds_per_epoch"] > 0
    model, meta = load_model(d / "fp32.ckpt")
    assert meta["config"]["method"] == "fp32" and model.embedding.weight.shape[1] == 8


@pytest.mark.parametrize("method,bits", [("gnaq", 2), ("qat", 2), ("lsq", 2), ("bigear", 1)])
def test_quantized_methods_start_from_the_checkpoint(pretrained, method, bits):
    d, _ = pretrained
    cfg = TrainConfig(**{**FAST, "epochs": 2}, method=method, bits=bits,
                      quant={"pretrained": str(d / "fp32.ckpt"), **({"options": {"top_r": 5}} if
                                                                      method == "bigear" else {})})
    res = run_experiment(cfg, progress=False)
    assert res["cost"]["compression"] > 1.5 and res["metrics"]["recall@20"]["mean"] >= 0


def test_gnaq_needs_a_pretrained_fp32_checkpoint(tmp_path, pretrained):
    with pytest.raises(ConfigError, match="--pretrained"):
        run_experiment(TrainConfig(**FAST, method="gnaq", bits=2), progress=False)
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        run_experiment(TrainConfig(**FAST, method="gnaq", bits=2, quant={"pretrained": str(bad)}), progress=False)


@pytest.mark.parametrize("sampling", ["user", "interaction"])
def test_negatives_are_never_training_items(sampling):
    ds = random_rec_dataset(num_users=20, num_items=15, interactions_per_user=10, seed=3)
    task = RecTask(ds, batch_size=16, sampling=sampling)
    users, pos, neg = task.sample(torch.Generator().manual_seed(0), 4)
    assert users.numel() == ds.train.size(1)
    assert not task.train_idx.contains(users[:, None].expand_as(neg), neg).any()
    assert task.train_idx.contains(users, pos).all()


def _skewed_pairs(heavy: int = 40, light: int = 2, light_users: int = 9):
    """User 0 with ``heavy`` items, users 1..light_users with ``light`` items each (items 0..heavy-1)."""
    pairs = [(0, i) for i in range(heavy)] + [(u, (u + j) % heavy) for u in range(1, light_users + 1)
                                               for j in range(light)]
    return torch.tensor(pairs).T


def test_user_sampling_weighs_every_user_the_same():
    """sampling="user": a user with 40 items and users with 2 are drawn equally often, and each user's items
    uniformly; "interaction" visits each pair once (the heavy user gets 40 of the 58 draws)."""
    from qgnn.data.recsys import RecDataset

    train = _skewed_pairs()
    empty = torch.zeros(2, 0, dtype=torch.long)
    ds = RecDataset(name="skewed", num_users=11, num_items=60, train=train, val=empty, test=empty)  # user 10: none
    gen = torch.Generator().manual_seed(0)
    task = RecTask(ds, sampling="user")
    draws = [task.sample(gen) for _ in range(2000)]
    users = torch.cat([d[0] for d in draws])
    pos = torch.cat([d[1] for d in draws])
    per_user = torch.bincount(users, minlength=11).double()
    assert per_user[10] == 0  # a user with no training item is never drawn
    share = per_user[:10] / per_user.sum()
    assert torch.allclose(share, torch.full((10,), 0.1, dtype=torch.float64), atol=0.01)
    heavy_items = torch.bincount(pos[users == 0], minlength=40).double()
    assert heavy_items.min() > 0.7 * heavy_items.mean()  # every item of the heavy user, about equally often
    u, p, _ = RecTask(ds, sampling="interaction").sample(gen)
    assert int((u == 0).sum()) == 40
    assert sorted(zip(u.tolist(), p.tolist(), strict=True)) == sorted(map(tuple, train.T.tolist()))


def test_refit_without_validation_trains_on_all_and_reports_the_last_epoch():
    from qgnn.data import load_dataset

    cfg = TrainConfig(**{**FAST, "epochs": 3, "patience": 1}, quant={"val_frac": 0.0})
    res = run_experiment(cfg, progress=False)
    run = res["runs"][0]
    assert run["best_epoch"] == 2 and run["epochs_run"] == 3  # no early stop, nothing selected
    assert "val_recall@20" not in res["metrics"] and 0 <= res["metrics"]["recall@20"]["mean"] <= 1
    assert [h["epoch"] for h in run["history"]] == [2]
    carved, refit = load_dataset("synthetic-rec"), load_dataset("synthetic-rec", val_frac=0.0)
    assert refit.val.size(1) == 0 and refit.train.size(1) == carved.train.size(1) + carved.val.size(1)
    assert torch.equal(refit.test, carved.test)


def test_refit_test_curve_reads_off_what_a_shorter_refit_reports():
    """The curve's entry at epoch e equals the test figures of a refit of e + 1 epochs (same seed, constant lr),
    so a validated run's choice can be read off a longer refit; the model reported stays the last epoch's."""
    refit = {**FAST, "patience": 1, "eval_every": 2}
    long = run_experiment(TrainConfig(**{**refit, "epochs": 4}, quant={"val_frac": 0.0, "test_curve": True}),
                          progress=False)["runs"][0]
    assert [h["epoch"] for h in long["history"]] == [1, 3] and long["best_epoch"] == 3
    assert long["history"][-1]["test_recall@20"] == long["recall@20"]
    short = run_experiment(TrainConfig(**{**refit, "epochs": 2}, quant={"val_frac": 0.0}), progress=False)["runs"][0]
    assert {k: long["history"][0][f"test_{k}"] for k in ("recall@20", "ndcg@20", "recall@10")} == \
        {k: short[k] for k in ("recall@20", "ndcg@20", "recall@10")}
    with pytest.raises(ConfigError, match="refit without validation"):
        run_experiment(TrainConfig(**FAST, quant={"test_curve": True}), progress=False)


def test_unknown_sampling_is_a_config_error():
    with pytest.raises(ConfigError, match="sampling"):
        run_experiment(TrainConfig(**FAST, sampling="popular"), progress=False)
    with pytest.raises(ConfigError, match="recommendation"):
        run_experiment(TrainConfig(dataset="synthetic-node", sampling="user", epochs=1), progress=False)


def _stop_after_then_resume(cfg, tmp_path, epoch):
    """Run `cfg` until the end of (0-based) `epoch`, stop as Ctrl-C would, and resume it to the end."""
    ctl = Control()
    ctl.on_epoch_end.append(lambda r, e: setattr(ctl, "stop_requested", e == epoch))
    out = tmp_path / "r.json"
    with pytest.raises(Interrupted):
        run_experiment(cfg, out=out, control=ctl, progress=False)
    return run_experiment(cfg, out=out, resume=True, progress=False)


def test_interrupt_and_resume_give_the_same_result(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 4})
    full = run_experiment(cfg, progress=False)
    resumed = _stop_after_then_resume(cfg, tmp_path, 1)
    assert resumed["metrics"]["recall@20"] == full["metrics"]["recall@20"]


def test_eval_every_keeps_a_curve_of_validations_and_resumes_it(tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 5, "eval_every": 2})
    full = run_experiment(cfg, progress=False)
    run = full["runs"][0]
    assert [h["epoch"] for h in run["history"]] == [1, 3, 4] and run["best_epoch"] in (1, 3, 4)
    assert run["history"][[h["epoch"] for h in run["history"]].index(run["best_epoch"])]["val_recall@20"] == \
        run["val_recall@20"]
    resumed = _stop_after_then_resume(cfg, tmp_path, 2)
    assert resumed["runs"][0]["history"] == run["history"]


def test_cli_rec_errors_and_options(tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic-rec", "--model", "lightgcn", "--method", "nope"]) == 2
    assert "unknown recommendation method" in capsys.readouterr().err
    assert main(["train", "--dataset", "synthetic-node", "--pretrained", "x.ckpt"]) == 2
    assert "recommendation datasets" in capsys.readouterr().err
    out = tmp_path / "g.json"
    assert main(["train", "--dataset", "synthetic-rec", "--model", "lightgcn", "--method", "gnaq", "--bits", "2",
                 "--epochs", "1", "--quiet", "--out", str(out)]) == 2  # no --pretrained
    assert main(["train", "--dataset", "synthetic-rec", "--model", "lightgcn", "--epochs", "1", "--hidden", "8",
                 "--quiet", "--out", str(out), "--save", str(tmp_path / "p.ckpt")]) == 0
    assert json.loads(out.read_text())["config"]["sampling"] == "user"  # the default, recorded
    assert main(["train", "--config", str(out), "--sampling", "interaction", "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["sampling"] == "interaction"
    assert main(["train", "--config", str(out), "--val-frac", "0", "--quiet", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["quant"]["val_frac"] == 0
    assert main(["train", "--config", str(out), "--test-curve", "--quiet", "--out", str(out)]) == 0
    assert "test_recall@20" in json.loads(out.read_text())["runs"][0]["history"][-1]
    assert main(["train", "--dataset", "synthetic-node", "--sampling", "user", "--quiet"]) == 2
    assert "--sampling applies to recommendation datasets only" in capsys.readouterr().err
    assert main(["train", "--dataset", "synthetic-rec", "--model", "lightgcn", "--method", "gnaq", "--bits", "2",
                 "--epochs", "1", "--hidden", "8", "--quiet", "--out", str(out), "--pretrained",
                 str(tmp_path / "p.ckpt"), "--ste", "--static-intervals", "--method-opt", "candidates=4"]) == 0
    opts = json.loads(out.read_text())["config"]["quant"]["options"]
    assert opts == {"estimator": "ste", "dynamic": False, "candidates": 4, "level_dtype": "fp8"}  # + GNAQ's recipe


def test_fused_adam_matches_the_loop_implementation():
    from qgnn.train.rec import make_adam

    a = torch.nn.Parameter(torch.randn(50, 4))
    b = torch.nn.Parameter(a.detach().clone())
    oa, ob = make_adam([a], 0.01), torch.optim.Adam([b], lr=0.01)
    for step in range(3):
        g = torch.randn(50, 4, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------- the one runner
def test_the_one_runner_trains_recommendation_with_its_task():
    """Runner takes a recommendation config itself (RecRunner is gone): its task is a RecTrainTask that keeps the
    Task protocol, its optimizer fused Adam without a schedule, its checkpoint metadata the table's shape."""
    from qgnn.train import Runner, Task
    from qgnn.train.rec import RecTrainTask

    runner = Runner(TrainConfig(**{**FAST, "epochs": 2}), progress=False)
    task = runner.task_for(None)
    assert isinstance(task, RecTrainTask) and isinstance(task, Task) and runner.task_class is RecTrainTask
    opt, sched = runner._optim(runner.build())
    assert sched is None and opt.defaults["weight_decay"] == 0
    res = runner.run()
    meta = runner.checkpoint_meta(res)
    assert (meta["num_users"], meta["num_items"]) == (runner.ds.num_users, runner.ds.num_items)
    assert "fold" not in res["runs"][0] and res["timing"]["batches_per_epoch"] == runner.rec_task.batches_per_epoch


def test_the_sampling_stream_is_the_runs_seed():
    """A run's BPR draws come from a generator seeded with the run's seed (as before the one runner), whatever
    the model drew while being built."""
    from qgnn.train import Runner
    from qgnn.train.seeding import set_seed

    runner = Runner(TrainConfig(**FAST, seed=7), progress=False)
    set_seed(7)
    runner.build()
    task = runner.task_for(None)
    assert torch.equal(task.gen.get_state(), torch.Generator().manual_seed(7).get_state())


def test_prompts_and_the_search_are_refused_on_recommendation_datasets():
    with pytest.raises(ConfigError, match="prompts attach to the layers of a GNN"):
        run_experiment(TrainConfig(**FAST, prompt={"kind": "gpf"}), progress=False)
    from qgnn.search.mixq import SearchConfig, run_search

    with pytest.raises(ConfigError, match="recommendation dataset"):
        run_search(TrainConfig(**{**FAST, "model": "lightgcn"}, method="qat"), SearchConfig(), progress=False)
