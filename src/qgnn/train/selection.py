"""Model selection on the validation split (never the test split).

The best epoch is the one with the highest validation metric; ties go to the
lower validation loss, so a plateau of equal accuracies picks the most confident
model rather than the first one.
"""

from __future__ import annotations

import math

import torch


def validation_due(epoch: int, cfg) -> bool:
    """Whether 0-based `epoch` ends with a validation: every ``cfg.eval_every`` epochs and after the last.

    Validating less often saves time where a validation pass costs as much as many training steps (full-ranking
    recommendation); the selected epoch is then one of the validated ones, and patience counts validations.
    """
    return (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs


class BestTracker:
    """Keeps the best epoch's scores and a copy of its weights; counts patience."""

    def __init__(self, patience: int | None = None):
        self.patience = patience
        self.best_epoch = -1
        self.best_val = -math.inf
        self.best_val_loss = math.inf
        self.best_scores: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def update(self, epoch: int, val: float, val_loss: float, scores: dict[str, float], model) -> bool:
        """Record an epoch; return True when it is the new best."""
        better = val > self.best_val or (val == self.best_val and val_loss < self.best_val_loss)
        if better:
            self.best_epoch, self.best_val, self.best_val_loss = epoch, val, val_loss
            self.best_scores = dict(scores)
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    # Resume support: everything as tensors / plain values, loadable with weights_only=True.
    def state_dict(self) -> dict:
        return {
            "best_epoch": self.best_epoch, "best_val": self.best_val, "best_val_loss": self.best_val_loss,
            "best_scores": dict(self.best_scores), "best_state": self.best_state, "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
