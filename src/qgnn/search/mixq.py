"""MixQ-GNN end to end: search the bit assignment, then train the fixed-bit model it names.

Per run (seed, or cross-validation fold):

1. **Search.** The model is quantized with method ``mixq`` (every slot a
   :class:`~qgnn.quant.RelaxedQuantizer` over the candidates) and trained for ``search_epochs`` with
   L = L_task + λ · E[BitOPs] / BitOPs_FP32. The assignment is the arg-max of α *at the end* of the
   search (as differentiable architecture search does), not at the best-validation epoch, which would
   favour the early, wide epochs.
2. **Fixed-bit training.** A fresh model with the same seed is quantized by ``final_method`` (``dq``,
   Degree-Quant, by default: the validated search recipe, :data:`qgnn.recipes.SEARCH`; ``qat`` as MixQ-GNN
   trains it, ``lsq`` works too) with the assignment as per-module
   overrides, and trained with the recipe; the epoch is selected on validation as for every method.
   A prompt (``cfg.prompt``, :mod:`qgnn.prompts`) trains in this phase only: prompts stay in full
   precision and have no bit slot to search, so the search runs on the bare host, and a host and the same
   host with a prompt (same seed) get the same assignment: the difference between them is the prompt.

Where α learns from (``alpha_split``):

* ``"train"``: MixQ-GNN's single-level search, α and weights on the training loss.
* ``"val"`` (default): DARTS' first-order bi-level search (Liu et al., ICLR 2019): the weights step on
  the training loss, α on the validation loss plus the penalty. Why: in semi-supervised node
  classification the 140 labelled Cora nodes can be fitted without the graph, so the training loss
  cannot tell that 2-bit edge weights (which round most 1/deg coefficients to 0 and erase the graph) hurt;
  the validation loss can. For node tasks both losses come from the same forward over the whole graph
  (one forward, two backward passes); for graph tasks α steps on a validation batch after each training
  batch (a train-mode forward, as in DARTS: BatchNorm statistics and activation ranges also see that
  batch's features; its labels reach only α). The validation split is then used for α and for epoch
  selection; the test split stays unseen.

Interruptions lose no work, as in training (:mod:`qgnn.train.runner`): with an ``out`` (or ``save``) target,
:func:`run_search` keeps a resume state beside it (``<out>.state.pt``) holding the finished runs and the current
run's place: in the search (epoch, weights and α, both optimizers, the scheduler, every random stream and the
position in the validation batches α steps on), or, once the assignment is found, the assignment and the
fixed-bit phase's own Runner state. It is saved at epoch boundaries every ``save_every`` seconds, after each
phase, and when asked to stop (Ctrl-C); ``resume=True`` continues from it and gives the uninterrupted result
(same assignments, same selected epochs, bit-identical weights).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qgnn.config import ConfigBase
from qgnn.errors import CheckpointError, ConfigError
from qgnn.quant import RelaxedQuantizer, parse_candidates
from qgnn.quant.relaxed import SAMPLINGS
from qgnn.recipes import SEARCH
from qgnn.search.assignment import BitAssignment
from qgnn.search.penalty import PENALTY_KINDS
from qgnn.train.config import TrainConfig
from qgnn.train.minibatch import MiniBatchNodeTask
from qgnn.train.results import log_run, summarize, summarize_runs
from qgnn.train.runner import STATE_FORMAT, Control, Interrupted, Runner, _normalised, _run_list, task_generators
from qgnn.train.seeding import load_rng_state, rng_state, set_seed
from qgnn.train.task import better, selection_key, summary_keys
from qgnn.train.tasks import GraphTask, NodeTask, penalty, penalty_modules

__all__ = ["SearchConfig", "run_search", "search_assignment", "state_epochs"]

ALPHA_SPLITS = ("val", "train")
_RECIPE = SEARCH.settings
FINAL_METHODS = ("qat", "lsq", "dq")


@dataclass
class SearchConfig(ConfigBase):
    """Options of the search phase (the fixed-bit phase uses the TrainConfig as given). A typed config
    (:mod:`qgnn.config`): values are checked when built (``validate`` runs then, and again when called),
    ``to_dict`` / ``from_dict`` carry the config version.

    Defaults: the validated search recipe (:data:`qgnn.recipes.SEARCH`, docs/notes/mixq.md):
    weights {2, 4, 8}, activations {4, 8}, λ = 50, α at lr 0.05, Degree-Quant for the fixed-bit training.
    """

    lam: float = _RECIPE["lam"]            # λ of the penalty (any finite number; < 0 rewards bits)
    candidates: tuple[int, ...] = _RECIPE["candidates"]
    weight_candidates: tuple[int, ...] | None = _RECIPE["weight_candidates"]  # weight slots' own set (None: candidates)
    penalty: str = "bitops"                # "bitops" or "memory"
    search_epochs: int | None = None       # default: the recipe's epochs
    alpha_split: str = "val"
    alpha_lr: float = _RECIPE["alpha_lr"]
    temperature: float = 1.0
    sampling: str = "softmax"              # "softmax" (MixQ's mixture) or "gumbel" (hard samples)
    alpha_init: str | int = "uniform"      # or a candidate width favoured at the start
    final_method: str = _RECIPE["final_method"]

    config_name: ClassVar[str] = "search"

    def validate(self) -> SearchConfig:
        if not math.isfinite(self.lam):
            raise ConfigError(f"--lambda must be a finite number, got {self.lam!r}")
        self.candidates = parse_candidates(self.candidates)
        if self.weight_candidates is not None:
            self.weight_candidates = parse_candidates(self.weight_candidates)
        every = set(self.candidates) & set(self.weight_candidates or self.candidates)
        checks = [
            (self.penalty in PENALTY_KINDS, f"unknown penalty {self.penalty!r}; valid: {', '.join(PENALTY_KINDS)}"),
            (self.alpha_split in ALPHA_SPLITS,
             f"unknown alpha split {self.alpha_split!r}; valid: {', '.join(ALPHA_SPLITS)}"),
            (self.final_method in FINAL_METHODS,
             f"unknown final method {self.final_method!r}; valid: {', '.join(FINAL_METHODS)}"),
            (self.search_epochs is None or self.search_epochs >= 1,
             f"--search-epochs must be >= 1, got {self.search_epochs}"),
            (self.alpha_lr > 0, f"--alpha-lr must be > 0, got {self.alpha_lr}"),
            (self.alpha_init == "uniform" or self.alpha_init in every,
             f"--alpha-init must be 'uniform' or a width in every candidate set, got {self.alpha_init!r}"),
            (self.temperature > 0, f"--temperature must be > 0, got {self.temperature}"),
            (self.sampling in SAMPLINGS, f"unknown sampling {self.sampling!r}; valid: {', '.join(SAMPLINGS)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self


# ------------------------------------------------------------------------------------------- search steps
def _alphas(model) -> list[torch.nn.Parameter]:
    return [m.alpha for m in model.modules() if isinstance(m, RelaxedQuantizer)]


def _node_step(task: NodeTask, model, opt_w, opt_a, alphas, pens, split: str) -> float:
    model.train()
    opt_w.zero_grad(set_to_none=True)
    opt_a.zero_grad(set_to_none=True)
    d = task.data
    out = model(d.x, d.edge_index)
    loss_train = F.cross_entropy(out[d.train_mask], d.y[d.train_mask])
    pen = penalty(pens)
    if split == "train":
        (loss_train + pen).backward()
    else:
        alpha_loss = F.cross_entropy(out[d.val_mask], d.y[d.val_mask]) + pen
        grads = torch.autograd.grad(alpha_loss, alphas, retain_graph=True, allow_unused=True)
        loss_train.backward()
        for a, g in zip(alphas, grads, strict=True):
            a.grad = g
    opt_w.step()
    opt_a.step()
    return loss_train.item()


def _weights_then_alpha(loss, opt_w, opt_a, alphas, pens, split: str, val_loss) -> None:
    """One step of a batched search: ``split="train"``: weights and α both step on the training loss (plus the
    penalties); ``"val"``: the weights step on the training loss alone, then α on ``val_loss()`` (a validation
    batch's loss, computed after the weight step) plus the penalties."""
    if split == "train":
        (loss + penalty(pens)).backward()
        opt_w.step()
        opt_a.step()
        return
    loss.backward()
    for a in alphas:
        a.grad = None
    opt_w.step()
    opt_w.zero_grad(set_to_none=True)
    (val_loss() + penalty(pens)).backward()
    opt_a.step()


def _graph_step(task: GraphTask, model, opt_w, opt_a, alphas, pens, split: str, val_iter) -> float:
    model.train()
    total, count = 0.0, 0
    loss_fn = task.loss  # cross-entropy, or a regression task's own (qgnn.train.regression)
    for batch in task.train_loader:
        if batch.num_graphs < 2:
            continue  # BatchNorm cannot normalise one graph's pooled row
        opt_w.zero_grad(set_to_none=True)
        opt_a.zero_grad(set_to_none=True)
        out, y = task._forward(model, batch)
        loss = loss_fn(out, y)

        def val_loss():
            out_v, y_v = task._forward(model, next(val_iter))
            return loss_fn(out_v, y_v)

        _weights_then_alpha(loss, opt_w, opt_a, alphas, pens, split, val_loss)
        total += loss.item() * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def _minibatch_step(task, model, opt_w, opt_a, alphas, pens, split: str) -> float:
    """One epoch of the search on sampled mini-batches (:class:`~qgnn.train.minibatch.MiniBatchNodeTask`): the
    weights step on each training batch's seeds; α steps on the same loss (``split="train"``) or, as for graph
    tasks, on the next batch of validation seeds after the weight step (``"val"``). The validation batches start
    a fresh pass every epoch, so a search resumed at an epoch boundary draws what the uninterrupted one draws."""
    task.prepare(model)
    model.train()
    val_iter = task.val_batches() if split == "val" else None
    total, seeds = 0.0, 0
    for batch in task.loader:
        batch = batch.to(task.device)
        opt_w.zero_grad(set_to_none=True)
        opt_a.zero_grad(set_to_none=True)
        n = batch.batch_size
        loss = F.cross_entropy(task.batch_forward(model, batch)[:n], batch.y[:n])

        def val_loss():
            vb = next(val_iter).to(task.device)
            m = vb.batch_size
            return F.cross_entropy(task.batch_forward(model, vb)[:m], vb.y[:m])

        _weights_then_alpha(loss, opt_w, opt_a, alphas, pens, split, val_loss)
        total += loss.item() * n
        seeds += n
    return total / max(seeds, 1)


def _cycle(loader):
    while True:
        yielded = False
        for b in loader:
            if b.num_graphs >= 2:
                yielded = True
                yield b
        if not yielded:
            raise ConfigError("the validation split has no batch of two or more graphs to search on")


class _ValBatches:
    """The endless validation batches α steps on (graph tasks, ``alpha_split="val"``), counting those taken.

    A resumed search skips as many and goes on with the batch the uninterrupted one would take next: the
    validation loader does not shuffle, so the same count is the same place. The skip's own random draws (a
    DataLoader draws a base seed from torch's generator at every pass) are undone by restoring the saved random
    streams after it.
    """

    def __init__(self, loader, skip: int = 0):
        self._batches = _cycle(loader)
        self.taken = 0
        for _ in range(skip):
            next(self)

    def __iter__(self):
        return self

    def __next__(self):
        self.taken += 1
        return next(self._batches)


def search_assignment(runner: Runner, seed: int, fold: int | None, sc: SearchConfig, bar=None, control=None, *,
                      index: int = 0, current: dict | None = None, save=None, save_every: float = 60.0,
                      where: str = "") -> tuple[BitAssignment, float, dict, float]:
    """Run the search of one run on ``runner`` (configured with method ``mixq``); returns
    (assignment, seconds per search epoch, {slot path: E[b] at the end}, the searched model's val acc).

    ``control`` (:class:`~qgnn.train.Control`): its ``on_epoch_end`` callbacks get (``index``, epoch) after
    every search epoch, and a stop request ends the search at that epoch boundary (Interrupted, after ``save``;
    ``where`` is appended to its message). ``save``: called with the search's progress (tensors and plain
    containers) at an epoch boundary every ``save_every`` seconds and before stopping; ``current``: such progress
    to continue from (same runner configuration, seed and fold), giving what the uninterrupted search gives."""
    set_seed(seed)
    model = runner.build()
    task = runner.task_for(fold)
    alphas = _alphas(model)
    if not alphas:
        raise ConfigError("the model has no quantizer slot to search over")
    alpha_ids = {id(a) for a in alphas}
    weights = [p for p in model.parameters() if id(p) not in alpha_ids]
    c = runner.cfg
    opt_w = torch.optim.Adam(weights, lr=c.lr, weight_decay=c.weight_decay)
    opt_a = torch.optim.Adam(alphas, lr=sc.alpha_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt_w, c.lr_step, c.lr_gamma) if c.lr_step else None
    pens = penalty_modules(model)
    val_iter = (_ValBatches(task.val_loader, current["val_batches"] if current else 0)
                if isinstance(task, GraphTask) and sc.alpha_split == "val" else None)
    start_epoch, seconds = 0, 0.0
    if current is not None:  # continue an interrupted search where its progress was saved
        model.load_state_dict(current["model"])  # weights, α and the observers' ranges
        opt_w.load_state_dict(current["opt_w"])
        opt_a.load_state_dict(current["opt_a"])
        if sched is not None and current["scheduler"] is not None:
            sched.load_state_dict(current["scheduler"])
        # last: building the model and the batch skip above drew numbers too
        load_rng_state(current["rng"], model, task_generators(task))
        start_epoch, seconds = current["epoch"], current["seconds"]
        if bar is not None:
            bar.update(start_epoch)
    control = control or Control()
    last_save = time.monotonic()
    for epoch in range(start_epoch, c.epochs):
        t0 = time.perf_counter()
        if isinstance(task, MiniBatchNodeTask):
            _minibatch_step(task, model, opt_w, opt_a, alphas, pens, sc.alpha_split)
        elif isinstance(task, NodeTask):
            _node_step(task, model, opt_w, opt_a, alphas, pens, sc.alpha_split)
        else:
            _graph_step(task, model, opt_w, opt_a, alphas, pens, sc.alpha_split, val_iter)
        if sched is not None:
            sched.step()
        seconds += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        for cb in control.on_epoch_end:
            cb(index, epoch)
        stop = control.stop_requested
        if save is not None and (stop or time.monotonic() - last_save > save_every):
            save({"epoch": epoch + 1, "seconds": seconds, "model": model.state_dict(), "opt_w": opt_w.state_dict(),
                  "opt_a": opt_a.state_dict(), "scheduler": sched.state_dict() if sched else None,
                  "val_batches": val_iter.taken if val_iter is not None else 0,
                  "rng": rng_state(model, task_generators(task))})
            last_save = time.monotonic()
        if stop:
            run = f"run {index + 1} (seed {seed}" + (f", fold {fold})" if fold is not None else ")")
            raise Interrupted(f"stopped in the search of {run}, epoch {epoch + 1}{where}")
    expected = {f"{n}": round(float(m.bit_width), 3) for n, m in model.named_modules()
                if isinstance(m, RelaxedQuantizer)}
    # Validation accuracy of the searched model itself (relaxed widths; arg-max with gumbel sampling).
    search_val_acc = task.evaluate(model)[f"val_{task.metric}"]  # a regression task: its val_mae
    return BitAssignment.from_model(model), seconds / c.epochs, expected, search_val_acc


# ------------------------------------------------------------------------------------------- resume state
class _FixedBitRunner(Runner):
    """The fixed-bit phase: the one Runner's own loop (``_one_run``, with the run's task from ``task_for``),
    whose current-run state (model, optimizer, scheduler, selection, random streams) goes into the search's
    resume state through ``save_phase`` rather than into a training state file of its own."""

    save_phase = None  # callable(the Runner's current-run state)

    def _save_state(self, runs_done, best, current) -> None:
        if self.state_path and self.save_phase is not None:
            self.save_phase(current)


def state_epochs(state: dict) -> int:
    """Epochs a search resume state has done (what a progress bar counts as done on resume): both phases of every
    finished run, and the current run's search epochs, plus its fixed-bit epochs once the search is over."""
    searched, trained = state["search_epochs"], state["config"]["epochs"]
    cur = state.get("current") or {}
    done = len(state.get("runs", [])) * (searched + trained)
    if cur.get("phase") == "search":
        return done + cur["search"]["epoch"]
    if cur.get("phase") == "train":
        return done + searched + ((cur.get("run") or {}).get("epoch") or 0)
    return done


def _search_dict(saved) -> dict | None:
    """A saved SearchConfig dict in today's form; None when it does not read as one."""
    try:
        return SearchConfig.from_dict(saved).validate().to_dict()
    except (ConfigError, TypeError):
        return None


def _load_search_state(path: Path | None, cfg: TrainConfig, sc: SearchConfig, search_epochs: int) -> dict | None:
    """The resume state at ``path`` when there is one; one saved for another configuration (the fixed-bit
    TrainConfig, the SearchConfig, the search's epochs), or by a training run, is refused with one line."""
    from qgnn.train.checkpoint import load_state

    if path is None or not path.exists():
        return None
    state = load_state(path)
    if (state.get("kind") != "search" or _normalised(state.get("config")) != cfg.to_dict()
            or _search_dict(state.get("search")) != sc.to_dict() or state.get("search_epochs") != search_epochs):
        raise CheckpointError(f"{path} was saved for a different configuration; rerun with the same options, or "
                              "delete it / pass --overwrite to start over")
    return state


# ------------------------------------------------------------------------------------------- both phases
def run_search(cfg: TrainConfig, sc: SearchConfig, *, root=None, out: str | Path | None = None,
               save: str | Path | None = None, resume: bool = False, overwrite: bool = False,
               progress: bool | None = None, control=None, bar=None, save_every: float = 60.0) -> dict:
    """Search and train every run of ``cfg`` (seeds or folds); returns the results dict (also written to
    ``out``; the selected run's fixed-bit model to ``save``). See the module docstring.

    The resume state lives beside the results (``<out>.state.pt``, else ``<save>.state.pt``), as for
    :func:`~qgnn.train.run_experiment`: an interrupted search's state is continued (``resume``) or replaced
    (``overwrite``), never silently deleted, and is removed once the outputs are written. ``control``
    (:class:`~qgnn.train.Control`) stops either phase at an epoch boundary, after saving the state; its
    ``on_epoch_end`` callbacks get (run index, epoch within the phase) after every epoch of both phases.
    ``bar``: a caller's tqdm to advance one step per epoch instead of this function's own bar (`qgnn compare`:
    one bar over its whole grid); the epochs a resumed search has done count as done."""
    from qgnn.env import check_device, environment
    from qgnn.prompts import prompt_report
    from qgnn.train.checkpoint import save_checkpoint, write_json
    from qgnn.train.outputs import check_file_target, check_stale_state, state_path_for, write_outputs
    from qgnn.train.runner import _dataset_task

    sc.validate()
    for flag, target in (("--out", out), ("--save", save)):  # before any data is loaded or epoch trained
        if target:
            check_file_target(target, flag)
    state_path = state_path_for(out, save)
    check_stale_state(state_path, resume, overwrite)
    check_device(cfg.device)
    if cfg.method not in ("fp32",) + FINAL_METHODS:
        raise ConfigError(f"qgnn search trains the found assignment with --final-method; got --method {cfg.method}")
    if _dataset_task(cfg.dataset) == "rec":  # the Runner trains rec datasets too, but with no slot to search
        raise ConfigError(f"qgnn search chooses the widths of GNN layers; {cfg.dataset} is a recommendation "
                          "dataset (train its methods with qgnn train)")
    top = max(sc.candidates + (sc.weight_candidates or ()))
    options = {"candidates": list(sc.candidates), "lambda": float(sc.lam), "penalty": sc.penalty,
               "weight_candidates": None if sc.weight_candidates is None else list(sc.weight_candidates),
               "temperature": sc.temperature, "sampling": sc.sampling,
               "init": sc.alpha_init}
    control = control or Control()
    search_cfg = dataclasses.replace(cfg, method="mixq", bits=top, quant={"options": options}, prompt={})
    searcher = Runner(search_cfg, root=root, progress=False)
    if sc.search_epochs:
        searcher.cfg = dataclasses.replace(searcher.cfg, epochs=sc.search_epochs)
    final_cfg = dataclasses.replace(cfg, method=sc.final_method, bits=top, quant={})
    trainer = _FixedBitRunner(final_cfg, root=root, state_path=state_path, progress=False, control=control,
                              save_every=save_every)
    base_final = trainer.cfg
    searched, trained = searcher.cfg.epochs, base_final.epochs
    state = _load_search_state(state_path, base_final, sc, searched) if resume else None
    runs: list[dict] = list(state["runs"]) if state else []
    best = state["best"] if state else None  # {"index", "val", "val_loss", "state"}
    current = state["current"] if state else None
    head = {"format": STATE_FORMAT, "kind": "search", "config": base_final.to_dict(), "search": sc.to_dict(),
            "search_epochs": searched}

    def save_state(cur: dict | None) -> None:
        # the finished runs, the best so far and the current run's place; a failed save warns once and the search
        # goes on (qgnn.train.outputs.save_state_or_warn)
        from qgnn.train.outputs import save_state_or_warn

        if state_path:
            save_state_or_warn(trainer, {**head, "runs": runs, "best": best, "current": cur})

    run_list = _run_list(trainer.cfg)
    total_epochs = len(run_list) * (searched + trained)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=total_epochs, disable=None if progress is None else not progress, unit="ep",
                   desc=f"search {cfg.dataset}/{cfg.model} λ={sc.lam:g}", dynamic_ncols=True)
    bar.update(len(runs) * (searched + trained))
    where = f"; resume with --resume (state in {state_path})" if state_path else ""
    t_start = time.perf_counter()
    try:
        for r in range(len(runs), len(run_list)):
            seed, fold = run_list[r]
            t_run = time.perf_counter()
            cur = current if current is not None and current["index"] == r else None
            current = None
            if cur is not None and cur["phase"] == "train":  # the assignment was found before the interruption
                found = dict(cur["found"])
                bar.update(searched)
            else:
                assignment, search_spe, expected, search_val = search_assignment(
                    searcher, seed, fold, sc, bar, control, index=r, current=cur["search"] if cur else None,
                    save=lambda progress, r=r: save_state({"index": r, "phase": "search", "search": progress}),
                    save_every=save_every, where=where)
                found = {"assignment": assignment.bits, "expected_bits": expected, "search_val_acc": search_val,
                         "search_seconds_per_epoch": search_spe}
                save_state({"index": r, "phase": "train", "found": found, "run": None})  # never searched again
            trainer.cfg = dataclasses.replace(
                base_final, quant={"overrides": BitAssignment(found["assignment"]).to_overrides()})
            trainer.save_phase = lambda run, r=r, found=found: save_state(
                {"index": r, "phase": "train", "found": found, "run": run})
            result, model_state = trainer._one_run(r, seed, fold, cur["run"] if cur is not None and
                                                   cur["phase"] == "train" else None, runs, best, bar)
            cost = trainer.cost(model_state)
            result.update({**found, "bitops_reduction": cost["bitops_reduction"],
                           "bitops_reduction_linear": cost["bitops_reduction_linear"],
                           "avg_bits": cost["avg_bits"], "cost": cost})
            runs.append(result)
            log_run(progress, bar, f"{cfg.dataset}/{cfg.model}/search λ={sc.lam:g}", r, len(run_list), result,
                    trainer.task_class.metric, time.perf_counter() - t_run)
            key = selection_key(trainer.task_class, result)  # the task's rule (regression: lowest val MAE)
            if best is None or better(key, (best["val"], best["val_loss"])):
                best = {"index": r, "val": key[0], "val_loss": key[1], "state": model_state}
            save_state(None)
    finally:
        if own_bar:
            bar.close()
    total = time.perf_counter() - t_start
    best_cfg = dataclasses.replace(
        base_final, quant={"overrides": BitAssignment(runs[best["index"]]["assignment"]).to_overrides()})
    trainer.cfg = best_cfg
    keys = [k for k in summary_keys(trainer.task_class) if k in runs[0]]
    results = {
        "config": best_cfg.to_dict(),
        "search": {**sc.to_dict(), "search_epochs": searched,
                   "assignments": [r["assignment"] for r in runs]},
        "metrics": summarize_runs(runs, keys),
        "cost": dict(runs[best["index"]]["cost"]),
        "cost_runs": {k: summarize([r[k] for r in runs])
                      for k in ("bitops_reduction", "bitops_reduction_linear", "avg_bits")},
        "timing": {"search_seconds_per_epoch": summarize([r["search_seconds_per_epoch"] for r in runs])["mean"],
                   "seconds_per_epoch": summarize([r["seconds_per_epoch"] for r in runs])["mean"],
                   "total_seconds": total},
        "runs": [{k: v for k, v in r.items() if k != "cost"} for r in runs],
        "selected_run": best["index"],
        **({"prompt": {**cfg.prompt, **prompt_report(trainer.build())}} if cfg.prompt else {}),
        "env": environment(),
    }
    meta = trainer.checkpoint_meta(results)

    def write_checkpoint(path: Path) -> None:
        save_checkpoint(path, best["state"], meta)
        results["checkpoint"] = str(path)

    # a write failing after the search (disk full...) still writes the rest, rescues the failed one and keeps the
    # resume state, from which --resume writes the outputs again without searching or training
    writes = [("--save", Path(save), write_checkpoint)] if save else []
    writes += [("--out", Path(out), lambda path: write_json(path, results))] if out else []
    write_outputs(writes, results, state_path, state_current=not getattr(trainer, "state_save_failed", False))
    return results
