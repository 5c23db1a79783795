"""Training: task loops, validation-based selection, atomic checkpoints, resumable runs."""

from qgnn.train.checkpoint import load_checkpoint, save_checkpoint
from qgnn.train.config import TrainConfig
from qgnn.train.runner import Control, Interrupted, Runner, load_model, run_experiment

__all__ = ["TrainConfig", "Runner", "Control", "Interrupted", "run_experiment", "save_checkpoint",
           "load_checkpoint", "load_model"]
