"""MixQ-GNN end to end: search the bit assignment, then train the fixed-bit model it names.

Per run (seed, or cross-validation fold):

1. **Search.** The model is quantized with method ``mixq`` (every slot a
   :class:`~qgnn.quant.RelaxedQuantizer` over the candidates) and trained for ``search_epochs`` with
   L = L_task + λ · E[BitOPs] / BitOPs_FP32. The assignment is the arg-max of α *at the end* of the
   search (as differentiable architecture search does), not at the best-validation epoch, which would
   favour the early, wide epochs.
2. **Fixed-bit training.** A fresh model with the same seed is quantized by ``final_method`` (plain
   ``qat`` by default, as MixQ-GNN; ``lsq`` / ``dq`` work too) with the assignment as per-module
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
from qgnn.errors import ConfigError
from qgnn.quant import RelaxedQuantizer, parse_candidates
from qgnn.quant.relaxed import SAMPLINGS
from qgnn.recipes import SEARCH
from qgnn.search.assignment import BitAssignment
from qgnn.search.penalty import PENALTY_KINDS
from qgnn.train.config import TrainConfig
from qgnn.train.results import summarize, summarize_runs
from qgnn.train.runner import Runner, _run_list
from qgnn.train.seeding import set_seed
from qgnn.train.tasks import GraphTask, NodeTask, penalty, penalty_modules

__all__ = ["SearchConfig", "run_search", "search_assignment"]

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


def _graph_step(task: GraphTask, model, opt_w, opt_a, alphas, pens, split: str, val_iter) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in task.train_loader:
        if batch.num_graphs < 2:
            continue  # BatchNorm cannot normalise one graph's pooled row
        opt_w.zero_grad(set_to_none=True)
        opt_a.zero_grad(set_to_none=True)
        out, y = task._forward(model, batch)
        loss = F.cross_entropy(out, y)
        if split == "train":
            (loss + penalty(pens)).backward()
            opt_w.step()
            opt_a.step()
        else:
            loss.backward()
            for a in alphas:
                a.grad = None
            opt_w.step()
            vb = next(val_iter)
            opt_w.zero_grad(set_to_none=True)
            out_v, y_v = task._forward(model, vb)
            (F.cross_entropy(out_v, y_v) + penalty(pens)).backward()
            opt_a.step()
        total += loss.item() * batch.num_graphs
        count += batch.num_graphs
    return total / max(count, 1)


def _cycle(loader):
    while True:
        yielded = False
        for b in loader:
            if b.num_graphs >= 2:
                yielded = True
                yield b
        if not yielded:
            raise ConfigError("the validation split has no batch of two or more graphs to search on")


def search_assignment(runner: Runner, seed: int, fold: int | None, sc: SearchConfig, bar=None, control=None
                      ) -> tuple[BitAssignment, float, dict, float]:
    """Run the search of one run on ``runner`` (configured with method ``mixq``); returns
    (assignment, seconds per search epoch, {slot path: E[b] at the end}, the searched model's val acc).
    ``control`` (:class:`~qgnn.train.Control`): a stop request ends the search at the epoch boundary
    (Interrupted; a search keeps no resume state)."""
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
    val_iter = _cycle(task.val_loader) if isinstance(task, GraphTask) and sc.alpha_split == "val" else None
    seconds = 0.0
    for _ in range(c.epochs):
        t0 = time.perf_counter()
        if isinstance(task, NodeTask):
            _node_step(task, model, opt_w, opt_a, alphas, pens, sc.alpha_split)
        else:
            _graph_step(task, model, opt_w, opt_a, alphas, pens, sc.alpha_split, val_iter)
        if sched is not None:
            sched.step()
        seconds += time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        if control is not None and control.stop_requested:
            from qgnn.train.runner import Interrupted

            raise Interrupted(f"stopped in the search of seed {seed}" + (f", fold {fold}" if fold is not None else ""))
    expected = {f"{n}": round(float(m.bit_width), 3) for n, m in model.named_modules()
                if isinstance(m, RelaxedQuantizer)}
    # Validation accuracy of the searched model itself (relaxed widths; arg-max with gumbel sampling).
    search_val_acc = task.evaluate(model)["val_acc"]
    return BitAssignment.from_model(model), seconds / c.epochs, expected, search_val_acc


# ------------------------------------------------------------------------------------------- both phases
def run_search(cfg: TrainConfig, sc: SearchConfig, *, root=None, out: str | Path | None = None,
               save: str | Path | None = None, progress: bool | None = None, control=None, bar=None) -> dict:
    """Search and train every run of ``cfg`` (seeds or folds); returns the results dict (also written to
    ``out``; the selected run's fixed-bit model to ``save``). See the module docstring. ``control``
    (:class:`~qgnn.train.Control`) stops both phases at an epoch boundary; ``bar``: a caller's tqdm to advance
    one step per epoch instead of this function's own bar (`qgnn compare`: one bar over its whole grid)."""
    from qgnn.env import check_device, environment
    from qgnn.prompts import prompt_report
    from qgnn.train.checkpoint import save_checkpoint, write_json
    from qgnn.train.outputs import check_file_target, write_outputs

    sc.validate()
    for flag, target in (("--out", out), ("--save", save)):  # before any data is loaded or epoch trained
        if target:
            check_file_target(target, flag)
    check_device(cfg.device)
    if cfg.method not in ("fp32",) + FINAL_METHODS:
        raise ConfigError(f"qgnn search trains the found assignment with --final-method; got --method {cfg.method}")
    top = max(sc.candidates + (sc.weight_candidates or ()))
    options = {"candidates": list(sc.candidates), "lambda": float(sc.lam), "penalty": sc.penalty,
               "weight_candidates": None if sc.weight_candidates is None else list(sc.weight_candidates),
               "temperature": sc.temperature, "sampling": sc.sampling,
               "init": sc.alpha_init}
    search_cfg = dataclasses.replace(cfg, method="mixq", bits=top, quant={"options": options}, prompt={})
    searcher = Runner(search_cfg, root=root, progress=False)
    if sc.search_epochs:
        searcher.cfg = dataclasses.replace(searcher.cfg, epochs=sc.search_epochs)
    final_cfg = dataclasses.replace(cfg, method=sc.final_method, bits=top, quant={})
    trainer = Runner(final_cfg, root=root, progress=False, control=control)
    base_final = trainer.cfg
    run_list = _run_list(trainer.cfg)
    total_epochs = len(run_list) * (searcher.cfg.epochs + trainer.cfg.epochs)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=total_epochs, disable=None if progress is None else not progress, unit="ep",
                   desc=f"search {cfg.dataset}/{cfg.model} λ={sc.lam:g}", dynamic_ncols=True)
    t_start = time.perf_counter()
    runs, best, best_cfg = [], None, None
    try:
        for r, (seed, fold) in enumerate(run_list):
            assignment, search_spe, expected, search_val = search_assignment(searcher, seed, fold, sc, bar, control)
            trainer.cfg = dataclasses.replace(base_final, quant={"overrides": assignment.to_overrides()})
            result, state = trainer._one_run(r, seed, fold, None, runs, best, bar)
            cost = trainer.cost(state)
            result.update({"assignment": assignment.bits, "expected_bits": expected, "search_val_acc": search_val,
                           "search_seconds_per_epoch": search_spe,
                           "bitops_reduction": cost["bitops_reduction"],
                           "bitops_reduction_linear": cost["bitops_reduction_linear"],
                           "avg_bits": cost["avg_bits"], "cost": cost})
            runs.append(result)
            if best is None or (result["val_acc"], -result["val_loss"]) > (best["val"], -best["val_loss"]):
                best = {"index": r, "val": result["val_acc"], "val_loss": result["val_loss"], "state": state}
                best_cfg = trainer.cfg
    finally:
        if own_bar:
            bar.close()
    total = time.perf_counter() - t_start
    keys = [k for k in ("test_acc", "val_acc", "train_acc", "val_loss", "best_epoch") if k in runs[0]]
    results = {
        "config": best_cfg.to_dict(),
        "search": {**sc.to_dict(), "search_epochs": searcher.cfg.epochs,
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
    trainer.cfg = best_cfg
    meta = trainer.checkpoint_meta(results)

    def write_checkpoint(path: Path) -> None:
        save_checkpoint(path, best["state"], meta)
        results["checkpoint"] = str(path)

    # a write failing after the search (disk full...) still writes the rest and rescues the failed one
    writes = [("--save", Path(save), write_checkpoint)] if save else []
    writes += [("--out", Path(out), lambda path: write_json(path, results))] if out else []
    write_outputs(writes, results)
    return results
