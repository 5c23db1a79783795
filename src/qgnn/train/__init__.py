"""Training: one runner for node, graph and recommendation tasks (the Task protocol), validation-based
selection, atomic checkpoints, resumable runs."""

from qgnn.train.checkpoint import load_checkpoint, save_checkpoint
from qgnn.train.config import TrainConfig
from qgnn.train.runner import Control, Interrupted, Runner, load_model, run_experiment
from qgnn.train.task import Task

__all__ = ["TrainConfig", "Runner", "Task", "Control", "Interrupted", "run_experiment", "save_checkpoint",
           "load_checkpoint", "load_model"]
