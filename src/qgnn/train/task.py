"""The Task protocol: what the one :class:`~qgnn.train.runner.Runner` needs from a task.

The runner owns everything that is the same for every task: the runs (seeds, or seeds x folds), building the
model, the optimizer and scheduler, model selection on the validation split (:class:`~qgnn.train.selection.
BestTracker`), early stopping, the resume state, timing and the results. A task owns its data and how a model
runs over it: one training epoch and one evaluation pass. The tasks of qgnn:

* :class:`~qgnn.train.tasks.NodeTask`: node classification, full batch; metric ``acc``;
* :class:`~qgnn.train.minibatch.MiniBatchNodeTask`: the same on sampled mini-batches (its shuffle and sampler
  draw from a generator of its own, listed by ``generators()``);
* :class:`~qgnn.train.tasks.GraphTask`: graph classification on one cross-validation split; metric ``acc``;
* :class:`~qgnn.train.rec.RecTrainTask`: one recommendation run: BPR epochs over a sampled stream of its own,
  full-ranking Recall / NDCG, test pass only for the epochs that improve validation; metric ``recall@20``.

Required members (:class:`Task`)::

    metric: str                                  # the validation score "val_<metric>" selects the epoch / run
    train_epoch(model, opt, penalties) -> float  # one epoch, the optimizer steps inside; the mean training loss
    evaluate(model) -> dict[str, float]          # "val_<metric>", the tie-break score, test scores, ...
    generators() -> dict[str, torch.Generator]   # the task's own random streams, saved in the resume state

``penalties``: the modules whose ``penalty()`` the method adds to the loss (:func:`~qgnn.train.tasks.
penalty_modules`: MixQ's bit penalty, A2Q's memory penalty, prompts' regularisers).

Optional hooks (the runner's default when a task lacks one; read through the functions below):

* ``prepare(model)``: called once per run before the first epoch, after a resumed state was loaded (a mini-batch
  task tells the model which whole graph its global node ids index). Default: nothing.
* ``selection(scores) -> (val, val_loss)``: the pair :class:`~qgnn.train.selection.BestTracker` compares,
  higher ``val`` first, then lower ``val_loss``. Default ``(scores["val_<metric>"], scores["val_loss"])``; the
  recommendation task breaks ties on the higher NDCG@20 (``val_loss`` = -NDCG@20). The same rule picks the
  selected run among the runs (applied to each run's record, which holds its selected epoch's scores), so it
  must read keys that the run record keeps. Where no task is at hand (choosing the run, summarising the results)
  the runner reads this hook, ``timing`` and ``summary_keys`` from the class of its tasks
  (:attr:`Runner.task_class <qgnn.train.runner.Runner.task_class>`): a ``Runner`` subclass whose ``task_for``
  returns tasks of another class with other such facts overrides ``task_class`` too.
* ``evaluate_test(model) -> dict``: a test pass of its own, run only for the epochs whose validation improves
  the best so far (so its cost is paid rarely and the test split never influences a choice). A task whose
  ``evaluate`` already returns its test scores (one forward gives them all) does not define it.
* ``has_validation`` (default True): False for a refit without a validation split: nothing is selected, the
  model trains for exactly ``epochs`` and the last epoch is the run's; ``evaluate`` then returns test scores
  and is called at the last epoch and, when ``test_curve`` is set, at every ``eval_every`` epoch as a record.
* ``curve_entry(epoch, scores) -> dict``: a task that keeps a training curve returns one entry per evaluation;
  the runner keeps them in the run's ``history`` (results JSON and resume state).
* ``state_dict() -> dict`` / ``load_state_dict(state)``: other state of the task's own that a resume needs
  (merged into the current run's saved state; the recommendation task keeps its sampling generator there
  under ``"gen"``, where states written before this protocol have it).
* class attributes ``timing`` (``"epoch"``: seconds per epoch, training and validation together;
  ``"split"``: training wall and CPU time, validation and test passes apart, as recommendation reports them,
  where one full-ranking pass costs as much as many training batches) and ``summary_keys`` (the run scores
  summarised as mean ± std in the results; default ``test_<metric>``, ``val_<metric>``, ``train_<metric>``,
  ``val_loss``, ``best_epoch``, each where the runs have it).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Task", "TIMINGS", "better", "curve_entry", "has_validation", "keeps_curve", "load_task_state",
           "prepare_task", "selection_key", "summary_keys", "task_generators", "task_state", "timing_of",
           "warm_up"]

TIMINGS = ("epoch", "split")


@runtime_checkable
class Task(Protocol):
    """What the runner calls on a task (module docstring; the optional hooks are listed there)."""

    metric: str

    def train_epoch(self, model: nn.Module, opt: torch.optim.Optimizer, penalties: list[nn.Module]) -> float:
        """Train ``model`` for one epoch (``opt`` steps inside); return the mean training loss."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Scores of ``model`` now: ``val_<metric>``, the tie-break score, test scores where computed with them."""
        ...

    def generators(self) -> dict[str, torch.Generator]:
        """The task's own random streams by name (saved with the resume state, :mod:`qgnn.train.seeding`)."""
        ...


def task_generators(task: Any) -> dict[str, torch.Generator]:
    """``task.generators()``, or none for a task without the hook."""
    gens = getattr(task, "generators", None)
    return gens() if callable(gens) else {}


def prepare_task(task: Any, model: nn.Module) -> None:
    """``task.prepare(model)`` where the task has it."""
    hook = getattr(task, "prepare", None)
    if callable(hook):
        hook(model)


def warm_up(task: Any, model: nn.Module) -> None:
    """``task.warm_up(model)``: one forward in eval mode on a training batch, so that quantizers sized by their
    first batch (LSQ's, A2Q's) have their shapes before DDP wraps the model (PyTorch's advice for lazily sized
    parameters; :mod:`qgnn.train.distributed`). A task without it cannot train such a model under torchrun."""
    hook = getattr(task, "warm_up", None)
    if not callable(hook):
        from qgnn.train.distributed import DistError

        raise DistError(f"{type(task).__name__} cannot size the model's lazily sized quantizers before DDP wraps it "
                        "(no warm_up); run this method without torchrun")
    was = model.training
    hook(model)
    model.train(was)


def selection_key(task: Any, scores: dict) -> tuple[float, float]:
    """The ``(val, val_loss)`` pair that ranks ``scores`` (an epoch's, or a finished run's record): higher
    ``val`` first, then lower ``val_loss``. ``task``: a task or its class."""
    hook = getattr(task, "selection", None)
    if callable(hook):
        return hook(scores)
    return scores[f"val_{task.metric}"], scores["val_loss"]


def better(key: tuple[float, float], than: tuple[float, float]) -> bool:
    """Whether ``key`` ranks above ``than`` (the rule of :class:`~qgnn.train.selection.BestTracker`)."""
    return key[0] > than[0] or (key[0] == than[0] and key[1] < than[1])


def summary_keys(task: Any) -> tuple[str, ...]:
    """The run scores the results summarise (module docstring); ``task``: a task or its class."""
    keys = getattr(task, "summary_keys", None)
    if keys is not None:
        return tuple(keys)
    m = task.metric
    return f"test_{m}", f"val_{m}", f"train_{m}", "val_loss", "best_epoch"


def timing_of(task: Any) -> str:
    """How the task's runs report their seconds: ``"epoch"`` (default) or ``"split"`` (module docstring)."""
    timing = getattr(task, "timing", "epoch")
    if timing not in TIMINGS:
        raise ValueError(f"{type(task).__name__}.timing must be one of {TIMINGS}, got {timing!r}")
    return timing


def has_validation(task: Any) -> bool:
    return bool(getattr(task, "has_validation", True))


def keeps_curve(task: Any) -> bool:
    """Whether the task keeps a training curve (its runs then record a ``history``)."""
    return callable(getattr(task, "curve_entry", None))


def curve_entry(task: Any, epoch: int, scores: dict) -> dict:
    """The task's training-curve entry for an evaluation at ``epoch`` (a task that :func:`keeps_curve`)."""
    return task.curve_entry(epoch, scores)


def task_state(task: Any) -> dict:
    """``task.state_dict()`` (the task's own resumable state), or nothing."""
    hook = getattr(task, "state_dict", None)
    return hook() if callable(hook) else {}


def load_task_state(task: Any, state: dict) -> None:
    hook = getattr(task, "load_state_dict", None)
    if callable(hook):
        hook(state)
