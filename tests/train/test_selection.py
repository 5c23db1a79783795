import math

import torch

from qgnn.train.config import TrainConfig
from qgnn.train.results import summarize
from qgnn.train.selection import BestTracker, validation_due


def test_best_tracker_selects_on_validation_and_breaks_ties_by_loss():
    m = torch.nn.Linear(2, 2)
    t = BestTracker(patience=2)
    t.update(0, 0.5, 1.0, {"val_acc": 0.5, "test_acc": 0.9}, m)
    with torch.no_grad():
        m.weight.add_(1)
    t.update(1, 0.7, 1.0, {"val_acc": 0.7, "test_acc": 0.1}, m)   # best val, poor test: still selected
    t.update(2, 0.7, 0.5, {"val_acc": 0.7, "test_acc": 0.2}, m)   # same val, lower loss: wins the tie
    assert t.best_epoch == 2 and t.best_scores["test_acc"] == 0.2
    torch.testing.assert_close(t.best_state["weight"], m.weight)
    t.update(3, 0.6, 0.1, {}, m)
    assert not t.should_stop
    t.update(4, 0.6, 0.1, {}, m)
    assert t.should_stop


def test_summarize_mean_and_population_std():
    s = summarize([0.8, 0.9, 1.0])
    assert abs(s["mean"] - 0.9) < 1e-12
    assert abs(s["std"] - (2 / 3 * 0.01) ** 0.5) < 1e-12
    assert summarize([0.5])["std"] == 0.0
    # a diverged run: NaN mean and std, the run values kept, no exception
    bad = summarize([0.5, float("nan"), 0.7])
    assert math.isnan(bad["mean"]) and math.isnan(bad["std"]) and bad["runs"][0] == 0.5
    assert math.isnan(summarize([0.1, float("inf")])["std"])


def test_validation_is_due_every_n_epochs_and_after_the_last():
    cfg = TrainConfig(epochs=10, eval_every=3)
    assert [e for e in range(10) if validation_due(e, cfg)] == [2, 5, 8, 9]
    assert all(validation_due(e, TrainConfig(epochs=4)) for e in range(4))
