"""Graph regression: one float target per graph (MoleculeNet ESOL / FreeSolv / Lipophilicity, ZINC).

:class:`RegressionTask` is a :class:`~qgnn.train.tasks.GraphTask` (same batches of graphs, same models: a
graph model built with ``num_classes = 1`` outputs one number per graph) with another loss, other metrics and
another selection rule. The runner picks it for a dataset whose ``regression`` flag is set
(:class:`qgnn.data.molecules.MoleculeDataset`).

* **Targets are standardised** on the run's training split, ``z = (y - mean) / std``
  (:func:`qgnn.data.molecules.target_stats`), as practitioners do (chemprop, DeepChem's
  ``NormalizationTransformer``): the model's output stays near unit scale whatever the units, so one learning
  rate and one output quantizer range fit every dataset. Predictions are mapped back, ``y_hat = out * std +
  mean``, and every metric is in the target's own units.
* **Loss**: L1 on the standardised targets, ``mean |out - z|`` (the loss of the ZINC benchmark of Dwivedi et
  al. and of Degree-Quant's ZINC runs; MAE is the metric it optimises).
* **Metrics**: ``MAE = mean |y_hat - y|`` and ``RMSE = sqrt(mean (y_hat - y)^2)`` (MoleculeNet reports RMSE for
  these datasets, ZINC papers MAE): ``val_mae`` / ``val_rmse`` every validation, ``test_mae`` / ``test_rmse`` and
  ``train_mae`` (an eval-mode pass over the training graphs) only for the epochs whose validation improves
  (``evaluate_test``), so their cost is paid rarely. ``val_loss`` is the L1 loss on the standardised
  validation targets (``val_mae / std``).
* **Selection** (``selection``): the lowest validation MAE, ties to the lower validation RMSE. Within a run this
  is the lowest validation loss (the two differ by the constant ``std``); unlike the standardised loss it also
  compares across runs whose training splits (and so ``std``) differ, which picks the selected run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.loader import DataLoader

from qgnn.train.tasks import GraphTask

__all__ = ["RegressionTask", "regression_scores", "standardised_l1"]


def regression_scores(pred: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(MAE, RMSE) of predictions ``pred`` against targets ``y`` (same units; 0.0, 0.0 for no rows)."""
    pred, y = pred.double().view(-1), y.double().view(-1)
    if y.numel() == 0:
        return 0.0, 0.0
    err = pred - y
    return float(err.abs().mean()), math.sqrt(float((err * err).mean()))


def standardised_l1(out: torch.Tensor, y: torch.Tensor, mean: float, std: float, reduction: str = "mean"):
    """The training loss: L1 between the model's output and the standardised targets ``(y - mean) / std``."""
    return F.l1_loss(out.view(-1), (y.view(-1).to(out.dtype) - mean) / std, reduction=reduction)


class RegressionTask(GraphTask):
    """Graph regression on one split (module docstring); built like a GraphTask by the runner's ``task_for``."""

    metric = "mae"
    summary_keys = ("test_mae", "test_rmse", "val_mae", "val_rmse", "train_mae", "val_loss", "best_epoch")

    def __init__(self, dataset, split, batch_size: int = 32, device: torch.device | str = "cpu",
                 eval_batch_size: int = 256, **kwargs):
        super().__init__(dataset, split, batch_size, device, eval_batch_size=eval_batch_size, **kwargs)
        from qgnn.data.molecules import target_stats

        train = dataset[split.train]
        self.mean, self.std = target_stats(torch.cat([g.y.view(-1) for g in train]) if len(train)
                                           else torch.zeros(0))
        self.train_eval_loader = DataLoader(train, batch_size=eval_batch_size)

    # GraphTask.train_epoch's loss, and the one the MixQ search's batched steps use (qgnn.search.mixq)
    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return standardised_l1(out, y, self.mean, self.std, reduction)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """The model's output in the target's units."""
        return out.view(-1) * self.std + self.mean

    @torch.no_grad()
    def _predictions(self, model, loader) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(predictions in the target's units, targets, summed standardised L1 loss) over ``loader``."""
        preds, ys, loss = [], [], 0.0
        for batch in loader:
            out, y = self._forward(model, batch)
            loss += self.loss(out, y, reduction="sum").item()
            preds.append(self.predict(out).cpu())
            ys.append(y.view(-1).cpu())
        if not preds:
            return torch.zeros(0), torch.zeros(0), 0.0
        return torch.cat(preds), torch.cat(ys), loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        pred, y, loss = self._predictions(model, self.val_loader)
        mae, rmse = regression_scores(pred, y)
        return {"val_mae": mae, "val_rmse": rmse, "val_loss": loss / max(y.numel(), 1)}

    @torch.no_grad()
    def evaluate_test(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        test_mae, test_rmse = regression_scores(*self._predictions(model, self.test_loader)[:2])
        train_mae, _ = regression_scores(*self._predictions(model, self.train_eval_loader)[:2])
        return {"test_mae": test_mae, "test_rmse": test_rmse, "train_mae": train_mae}

    @staticmethod
    def selection(scores: dict) -> tuple[float, float]:
        """Lower validation MAE first, then lower validation RMSE (module docstring), as the (higher-is-better,
        lower-is-better) pair of :class:`~qgnn.train.selection.BestTracker`."""
        return -scores["val_mae"], scores["val_rmse"]
