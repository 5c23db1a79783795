"""Graph regression: metrics, the standardised L1 loss, selection on validation MAE, and small end-to-end runs
(fp32, a quantized method, the MixQ search, export + eval) on a tiny MoleculeNet-format CSV written by the test."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from qgnn.train.regression import RegressionTask, regression_scores, standardised_l1
from qgnn.train.selection import BestTracker
from qgnn.train.task import better, selection_key, summary_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import qgnn_molecules_testutil as mol  # noqa: E402

needs_rdkit = mol.needs_rdkit


@pytest.fixture
def root(monkeypatch, tmp_path):
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QGNN_OFFLINE", "1")
    return mol.write_esol(tmp_path / "data")


def test_mae_and_rmse_by_hand():
    mae, rmse = regression_scores(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 5.0]))
    assert mae == pytest.approx(1.0)  # |-1| + 0 + |-2| over 3
    assert rmse == pytest.approx(math.sqrt(5 / 3))
    assert regression_scores(torch.zeros(0), torch.zeros(0)) == (0.0, 0.0)


def test_standardised_l1_is_mae_over_std():
    y, mean, std = torch.tensor([1.0, 5.0, 9.0]), 5.0, 4.0
    pred = torch.tensor([2.0, 5.0, 6.0])
    out = (pred - mean) / std  # the model's output for those predictions
    assert standardised_l1(out, y, mean, std).item() == pytest.approx(regression_scores(pred, y)[0] / std)


def test_selection_picks_the_lowest_validation_mae():
    tracker = BestTracker()
    for epoch, (mae, rmse) in enumerate([(3.0, 4.0), (1.0, 2.0), (2.0, 1.5), (1.0, 1.8)]):
        scores = {"val_mae": mae, "val_rmse": rmse, "val_loss": mae / 2}
        tracker.update(epoch, *selection_key(RegressionTask, scores), scores, torch.nn.Linear(1, 1))
    assert tracker.best_epoch == 3  # lowest MAE (epochs 1 and 3), the tie to the lower RMSE
    assert better(selection_key(RegressionTask, {"val_mae": 0.5, "val_rmse": 9.0}),
                  selection_key(RegressionTask, {"val_mae": 0.6, "val_rmse": 0.1}))
    assert {"test_mae", "test_rmse", "val_mae", "val_rmse", "train_mae"} <= set(summary_keys(RegressionTask))


@needs_rdkit
def test_task_standardises_on_its_training_split_only(root):
    from qgnn.data import load_dataset

    ds = load_dataset("esol", root=root)
    split = ds.folds(k=1, seed=0)[0]
    task = RegressionTask(ds.dataset, split, batch_size=8)
    y_train = ds.targets[split.train].double()
    assert task.mean == pytest.approx(float(y_train.mean()))
    assert task.std == pytest.approx(float(y_train.std(unbiased=False)))
    # the metrics are in the targets' units: a model predicting the training mean has the MAE of that constant
    model = _Constant()
    scores = {**task.evaluate(model), **task.evaluate_test(model)}
    y_test = ds.targets[split.test].double()
    assert scores["test_mae"] == pytest.approx(float((y_test - task.mean).abs().mean()), rel=1e-6)
    assert scores["test_rmse"] >= scores["test_mae"]


class _Constant(torch.nn.Module):
    """Outputs 0 (the standardised training mean) for every graph."""

    def forward(self, x, edge_index, batch):
        return torch.zeros(int(batch.max()) + 1, 1)


def _cfg(method="fp32", bits=None, **kw):
    from qgnn.train import TrainConfig

    kw = {"model": "gin", "folds": 2, **kw}
    return TrainConfig(dataset="esol", method=method, bits=bits, epochs=3, hidden=16, num_layers=2, batch_size=8,
                       **kw)


@needs_rdkit
@pytest.mark.parametrize("method,bits,model", [("fp32", None, "gin"), ("dq", 4, "gcn")])
def test_run_experiment_reports_regression_metrics(root, tmp_path, method, bits, model):
    from qgnn.train import load_model, run_experiment

    r = run_experiment(_cfg(method, bits, model=model), root=root, save=tmp_path / "m.ckpt", progress=False)
    assert r["config"]["recipes"] == ["molecules-l1-100ep-mean"] and r["config"]["dropout"] == 0.0
    assert len(r["runs"]) == 2 and {run["fold"] for run in r["runs"]} == {0, 1}
    for k in ("test_mae", "test_rmse", "val_mae", "val_rmse", "train_mae"):
        assert k in r["metrics"] and math.isfinite(r["metrics"][k]["mean"])
    assert "test_acc" not in r["metrics"]
    maes = [run["val_mae"] for run in r["runs"]]
    assert r["selected_run"] == maes.index(min(maes))  # the run with the lowest validation MAE
    model_, meta = load_model(tmp_path / "m.ckpt")
    assert meta["num_classes"] == 1
    if method != "fp32":
        assert r["cost"]["bitops_reduction"] > 1


@needs_rdkit
def test_export_and_eval_report_mae_not_accuracy(root, tmp_path):
    from qgnn.export.evaluate import evaluate_file
    from qgnn.export.exporter import export_checkpoint
    from qgnn.train import run_experiment

    r = run_experiment(_cfg("qat", 8), root=root, save=tmp_path / "m.ckpt", progress=False)
    export_checkpoint(tmp_path / "m.ckpt", tmp_path / "m.qgnn.safetensors")
    e = evaluate_file(tmp_path / "m.qgnn.safetensors", root=root, repeats=1)
    sel = r["runs"][r["selected_run"]]
    assert "accuracy" not in e and e["evaluated"] >= 1
    # the integer runtime on the selected run's test split, against the fake-quant model's scores
    assert e["mae"] == pytest.approx(sel["test_mae"], rel=0.05, abs=0.05)
    assert e["rmse"] == pytest.approx(sel["test_rmse"], rel=0.05, abs=0.05)


@needs_rdkit
def test_mixq_search_runs_on_regression(root):
    from qgnn.search.mixq import SearchConfig, run_search

    r = run_search(_cfg(folds=1), SearchConfig(search_epochs=2), root=root, progress=False)
    assert "test_rmse" in r["metrics"] and "test_acc" not in r["metrics"]
    assert r["cost_runs"]["bitops_reduction_linear"]["mean"] > 1
    # the molecule recipe's float readout input holds in the search too: no width is searched for it
    heads = {name: slots for a in r["search"]["assignments"] for name, slots in a.items() if name.startswith("heads")}
    assert heads and all(set(slots) == {"weight"} for slots in heads.values())


def test_quantized_molecule_models_keep_the_pooled_readout_input_float(root):
    """The molecule recipe leaves the pooled readout input float, weights quantized (chosen when the readout summed
    the nodes: a sum grows with the molecule, and a per-tensor range clipped the large ones; QAT 8 +20 % RMSE)."""
    from qgnn.methods.convert import apply_method
    from qgnn.models import build_model
    from qgnn.train import TrainConfig

    for method, bits in (("qat", 8), ("dq", 4), ("lsq", 8)):
        cfg = _cfg(method, bits).resolve("graph")
        assert "molecules-l1-100ep-mean" in cfg.recipes
        model = apply_method(build_model("gin", "graph", 177, 1, hidden=16, num_layers=2, dropout=0.0), cfg)
        for k, head in enumerate(model.heads):
            assert set(head.quant) == {"weight"}, (method, k)
        assert {"input", "weight"} <= set(model.convs[1].nn[0].quant)  # the convolutions stay fully quantized
    assert _cfg().resolve("graph").quant == {}  # fp32: nothing to fill
    # a user's own overrides replace the recipe's (which then fills nothing)
    mine = {"convs\\.0": {"skip": True}}
    assert _cfg("qat", 8, quant={"overrides": mine}).resolve("graph").quant == {"overrides": mine}
    # other datasets (TU classification) are untouched
    assert TrainConfig(dataset="MUTAG", model="gin", method="qat", bits=8).resolve("graph").quant == {}


def test_float_readout_input_is_not_clipped_for_a_molecule_larger_than_training_batches():
    """What the recipe avoids, on a bare model: after training-mode batches of small pooled sums, a QuantLinear
    head with its input quantized clips a larger pooled sum; with only its weights quantized it does not."""
    from qgnn.methods import QuantConfig, quantize_

    torch.manual_seed(0)
    small, large = torch.rand(64, 8) * 10, torch.full((1, 8), 40.0)  # pooled sums of small / one large molecule
    outs = {}
    for name, quant in (("all", {}), ("weights", {"overrides": {"0": {"slots": ["weight"]}}})):
        head = torch.nn.Sequential(torch.nn.Linear(8, 1))
        with torch.no_grad():
            head[0].weight.fill_(0.1)
            head[0].bias.zero_()
        head = quantize_(head, QuantConfig(method="qat", bits=8, **quant))
        head.train()
        for _ in range(5):
            head(small)
        head.eval()
        outs[name] = head(large).item()
    assert outs["all"] < 0.5 * 32  # clipped near the small molecules' range (8 · 10 · 0.1), far below 8 · 40 · 0.1
    assert outs["weights"] == pytest.approx(32, rel=0.01)
