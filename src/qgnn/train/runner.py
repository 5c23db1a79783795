"""Run an experiment: several seeds (node tasks) or cross-validation folds (graph tasks).

For each run: seed, build the model, apply the quantization method, train with
Adam, select the epoch on the validation split, record that epoch's scores.
Across runs: mean ± std of every score, the run with the best validation score
is the selected model (its weights go to the checkpoint).

Node tasks train full-batch (:class:`~qgnn.train.tasks.NodeTask`) or, when the config gives a batch size or
fanouts, on sampled mini-batches (:class:`~qgnn.train.minibatch.MiniBatchNodeTask`).

Interruptions lose no work: the runner saves a resume state (finished runs, and
the current run's model, optimizer, scheduler, selection and RNG, the task's generators included) at epoch
boundaries every ``save_every`` seconds, after each run, and when asked to stop
(Ctrl-C); `resume=True` continues from it and gives the same result as an
uninterrupted run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qgnn.errors import CheckpointError, ConfigError, QgnnError
from qgnn.prompts.train import apply_prompts
from qgnn.train.checkpoint import load_state, save_checkpoint
from qgnn.train.config import TrainConfig
from qgnn.train.results import summarize_runs
from qgnn.train.seeding import load_rng_state, rng_state, set_seed
from qgnn.train.selection import BestTracker, validation_due
from qgnn.train.tasks import GraphTask, NodeTask, penalty_modules

STATE_FORMAT = "qgnn-state/1"


class Interrupted(QgnnError):
    """Training stopped on request; the resume state has been saved."""


@dataclass
class Control:
    """Lets a caller (a signal handler, a test) ask the runner to stop at the next epoch boundary."""

    stop_requested: bool = False
    on_epoch_end: list = field(default_factory=list)  # callables(run_index, epoch)


def _dataset_task(name: str) -> str:
    from qgnn.data import dataset_names
    from qgnn.errors import lookup

    table = {n: t for t in ("node", "graph", "rec") for n in dataset_names(t)}
    return lookup("dataset", name, table)


def load_for(cfg: TrainConfig, root=None):
    """Load the dataset of `cfg` with the options that apply to its task."""
    from qgnn.data import load_dataset

    task = _dataset_task(cfg.dataset)
    if task == "node":
        if cfg.normalize_features is None:
            raise ValueError("load_for needs a resolved TrainConfig (normalize_features is unset)")
        return load_dataset(cfg.dataset, root=root, normalize_features=cfg.normalize_features)
    if task == "graph":
        return load_dataset(cfg.dataset, root=root, node_features=cfg.node_features)
    return load_dataset(cfg.dataset, root=root)


def apply_method(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Turn the float model into the configured method's model (FP32: unchanged)."""
    if cfg.method == "fp32":
        return model
    try:
        from qgnn.methods import apply_method as _apply
    except ImportError:
        raise ConfigError(f"unknown method {cfg.method!r}; valid methods: fp32") from None
    return _apply(model, cfg)


def _normalised(config: dict) -> dict | None:
    """A saved config in today's dict form (a state written before configs carried a version compares equal to
    the same configuration now); None when it does not read as a TrainConfig at all."""
    try:
        return TrainConfig.from_dict(config).to_dict()
    except (ConfigError, TypeError):
        return None


def task_generators(task) -> dict[str, torch.Generator]:
    """The generators a task draws from (a mini-batch task's shuffle and sampler), for the resume state."""
    gens = getattr(task, "generators", None)
    return gens() if callable(gens) else {}


def _run_list(cfg: TrainConfig) -> list[tuple[int, int | None]]:
    """(seed, fold) per run. Graph runs are seeded per fold so folds differ in their draws too."""
    if cfg.task == "node":
        return [(cfg.seed + r, None) for r in range(cfg.seeds)]
    return [(cfg.seed + 1000 * r + f, f) for r in range(cfg.seeds) for f in range(cfg.folds)]


class Runner:
    """Trains all runs of one TrainConfig; see the module docstring."""

    def __init__(self, cfg: TrainConfig, root=None, state_path: str | Path | None = None,
                 progress: bool | None = None, save_every: float = 60.0, control: Control | None = None):
        task = _dataset_task(cfg.dataset)
        if task == "rec":
            raise ConfigError(f"{cfg.dataset} is a recommendation dataset: train it with run_experiment "
                              "(qgnn.train.rec.RecRunner)")
        # Resolve first: the loader options (normalize_features) come from the resolved recipe.
        self.cfg = cfg.resolve(task)
        self.ds = load_for(self.cfg, root)
        if (self.ds.task == "graph" and getattr(self.ds, "node_features", None) == "constant"
                and "readout_norm" not in self.cfg.model_kwargs):
            # Constant node features + sum pooling: pool(h⁰) is the node count (up to thousands on
            # REDDIT-*), logits reach the hundreds and training diverges; normalise the pooled readout
            # (GINGraph's readout_norm). Recorded in the config, so the JSON says what ran.
            self.cfg.model_kwargs["readout_norm"] = True
        self.state_path = Path(state_path) if state_path else None
        self.progress = progress
        self.save_every = save_every
        self.control = control or Control()
        self.device = torch.device(self.cfg.device)
        self.splits = self.ds.folds(k=10, seed=self.cfg.fold_seed) if self.ds.task == "graph" else None

    # -- building blocks ---------------------------------------------------------------------
    def build(self) -> torch.nn.Module:
        from qgnn.models import build_model

        c = self.cfg
        model = build_model(c.model, c.task, self.ds.num_features, self.ds.num_classes,
                            hidden=c.hidden, num_layers=c.num_layers, dropout=c.dropout, **c.model_kwargs)
        model = apply_prompts(apply_method(model, c), c.prompt).to(self.device)
        if c.minibatch:  # a layer sees a different subgraph every batch: no cached normalisation
            from qgnn.train.minibatch import no_cached_normalisation

            no_cached_normalisation(model)
        return model

    def task_for(self, fold: int | None):
        if self.ds.task == "node" and self.cfg.minibatch:
            from qgnn.train.minibatch import MiniBatchNodeTask

            return MiniBatchNodeTask(self.ds.data, self.cfg.fanout, self.cfg.batch_size, self.device)
        if self.ds.task == "node":
            return NodeTask(self.ds.data, self.device)
        return GraphTask(self.ds.dataset, self.splits[fold], self.cfg.batch_size, self.device)

    def _optim(self, model):
        from qgnn.prompts import prompt_parameters
        from qgnn.prompts.train import prompt_optimizer_options

        params = [p for p in model.parameters() if p.requires_grad]
        # Prompts with their own lr / weight decay (TrainConfig.prompt) form a group of their own.
        prompt_opts = prompt_optimizer_options(self.cfg.prompt)
        prompt_ids = {id(p) for p in prompt_parameters(model).values()} if prompt_opts else set()
        prompts = [p for p in params if id(p) in prompt_ids]
        params = [p for p in params if id(p) not in prompt_ids]
        # Parameters marked qgnn_no_weight_decay (MixQ's bit logits α) are not decayed: decay would pull
        # them toward the uniform mixture, a preference for no width in particular.
        plain = [p for p in params if not getattr(p, "qgnn_no_weight_decay", False)]
        no_decay = [p for p in params if getattr(p, "qgnn_no_weight_decay", False)]
        groups = [{"params": plain}, {"params": no_decay, "weight_decay": 0.0}, {"params": prompts, **prompt_opts}]
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.Adam(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        sched = (torch.optim.lr_scheduler.StepLR(opt, self.cfg.lr_step, self.cfg.lr_gamma)
                 if self.cfg.lr_step else None)
        return opt, sched

    # -- resume state --------------------------------------------------------------------------
    def _load_state(self) -> dict | None:
        if not self.state_path or not self.state_path.exists():
            return None
        state = load_state(self.state_path)
        # a search's state (kind "search", qgnn.search.mixq) records its fixed-bit config: not a training run's
        if state.get("kind", "train") != "train" or _normalised(state["config"]) != self.cfg.to_dict():
            raise CheckpointError(
                f"{self.state_path} was saved for a different configuration; "
                "rerun with the same options, or delete it / pass --overwrite to start over")
        return state

    def _save_state(self, runs_done, best, current) -> None:
        # a failed save warns once and training goes on (qgnn.train.outputs.save_state_or_warn)
        if self.state_path:
            from qgnn.train.outputs import save_state_or_warn

            save_state_or_warn(self, {"format": STATE_FORMAT, "config": self.cfg.to_dict(),
                                      "runs": runs_done, "best": best, "current": current})

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        run_list = _run_list(self.cfg)
        state = self._load_state() if resume else None
        runs_done: list[dict] = list(state["runs"]) if state else []
        best = state["best"] if state else None   # {"index", "val", "val_loss", "state"}
        current = state["current"] if state else None
        t_start = time.perf_counter()
        total_epochs = len(run_list) * self.cfg.epochs
        bar = tqdm(total=total_epochs, disable=None if self.progress is None else not self.progress,
                   desc=f"{self.cfg.dataset}/{self.cfg.model}/{self.cfg.method}", unit="ep", dynamic_ncols=True)
        bar.update(len(runs_done) * self.cfg.epochs)
        try:
            for r in range(len(runs_done), len(run_list)):
                seed, fold = run_list[r]
                result, best_state = self._one_run(r, seed, fold, current if current and current["index"] == r
                                                   else None, runs_done, best, bar)
                current = None
                runs_done.append(result)
                if best is None or (result["val_acc"], -result["val_loss"]) > (best["val"], -best["val_loss"]):
                    best = {"index": r, "val": result["val_acc"], "val_loss": result["val_loss"],
                            "state": best_state}
                self._save_state(runs_done, best, None)
        finally:
            bar.close()
        total = time.perf_counter() - t_start
        return self._results(runs_done, best, total)

    def _one_run(self, r, seed, fold, current, runs_done, best, bar):
        set_seed(seed)
        model = self.build()
        task = self.task_for(fold)
        opt, sched = self._optim(model)
        pens = penalty_modules(model)
        tracker = BestTracker(self.cfg.patience)
        start_epoch, seconds = 0, 0.0
        if current is not None:  # continue an interrupted run where its state was saved
            model.load_state_dict(current["model"])
            opt.load_state_dict(current["optimizer"])
            if sched is not None and current["scheduler"] is not None:
                sched.load_state_dict(current["scheduler"])
            tracker.load_state_dict(current["tracker"])
            # every stream, the model's and the task's own generators included (qgnn.train.seeding): torch's
            # CPU state alone left Degree-Quant's percentile sampling to restart from its seed
            load_rng_state(current["rng"], model, task_generators(task))
            start_epoch, seconds = current["epoch"], current["seconds"]
            bar.update(start_epoch)
        last_save = time.monotonic()
        epochs_run = start_epoch
        for epoch in range(start_epoch, self.cfg.epochs):
            t0 = time.perf_counter()
            task.train_epoch(model, opt, pens)
            validate = validation_due(epoch, self.cfg)
            scores = task.evaluate(model) if validate else None
            if sched is not None:
                sched.step()
            seconds += time.perf_counter() - t0
            epochs_run = epoch + 1
            if validate:
                tracker.update(epoch, scores["val_acc"], scores["val_loss"], scores, model)
            bar.update(1)
            bar.set_postfix(run=f"{r + 1}", best_val=f"{tracker.best_val:.4f}", refresh=False)
            for cb in self.control.on_epoch_end:
                cb(r, epoch)
            stop = self.control.stop_requested
            if self.state_path and (stop or time.monotonic() - last_save > self.save_every):
                cur = {"index": r, "epoch": epochs_run, "seconds": seconds, "model": model.state_dict(),
                       "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                       "tracker": tracker.state_dict(), "rng": rng_state(model, task_generators(task))}
                self._save_state(runs_done, best, cur)
                last_save = time.monotonic()
            if stop:
                where = f"; resume with --resume (state in {self.state_path})" if self.state_path else ""
                raise Interrupted(f"stopped at run {r + 1}, epoch {epochs_run}{where}")
            if tracker.should_stop:
                bar.update(self.cfg.epochs - epochs_run)
                break
        result = {"seed": seed, "fold": fold, "best_epoch": tracker.best_epoch, "epochs_run": epochs_run,
                  "seconds_per_epoch": seconds / max(epochs_run, 1), "train_seconds": seconds,
                  **tracker.best_scores}
        return result, tracker.best_state

    def _results(self, runs, best, total) -> dict:
        from qgnn.env import environment
        from qgnn.prompts import prompt_report

        keys = [k for k in ("test_acc", "val_acc", "train_acc", "val_loss", "best_epoch") if k in runs[0]]
        return {
            "config": self.cfg.to_dict(),
            "metrics": summarize_runs(runs, keys),
            "cost": self.cost(best["state"]),
            "timing": {"seconds_per_epoch": sum(r["seconds_per_epoch"] for r in runs) / len(runs),
                       "total_seconds": total},
            "runs": runs,
            "selected_run": best["index"],
            **({"prompt": {**self.cfg.prompt, **prompt_report(self.build())}} if self.cfg.prompt else {}),
            "env": environment(),
            "_best_state": best["state"],  # popped by save(); not part of the JSON
        }

    def cost(self, state: dict) -> dict:
        """The ``cost`` entry (docs/cost.md) of the selected model, from one eval forward.

        Node tasks: the whole graph. Graph tasks: one batch of every graph of the dataset; the
        totals are divided by the number of graphs (``bitops`` is then per graph, ``per_layer``
        stays the whole batch's), so datasets of any size compare.
        """
        import warnings

        from torch_geometric.data import Batch

        from qgnn.search import cost_report

        model = self.build()
        model.load_state_dict(state)
        if self.ds.task == "node" and self.cfg.minibatch:
            return self._batch_cost(model)
        if self.ds.task == "node":
            data, graphs = self.ds.data, None
        else:
            graphs = len(self.ds.dataset)
            data = Batch.from_data_list(list(self.ds.dataset))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # layers without a cost model are listed below
            report = cost_report(model, data.to(self.device))
        cost = report.to_dict()
        cost["unsupported"] = list(report.unsupported)
        if graphs:
            for k in ("bitops", "bitops_fp32"):
                cost[k] = cost[k] / graphs
            cost["per"] = f"graph (mean over the {graphs} graphs of the dataset)"
        else:
            cost["per"] = f"forward over the whole graph ({report.num_nodes} nodes, {report.num_edges} edges)"
        return cost

    def _batch_cost(self, model) -> dict:
        """The cost of a mini-batch model on one sampled training batch (the first of a loader seeded with 0):
        a forward over a million-node graph would cost what mini-batches avoid. BitOPs and bytes of a batch
        compare across methods as the whole graph's do (every layer's count is linear in nodes and edges)."""
        import warnings

        from qgnn.search import cost_report
        from qgnn.train.minibatch import MiniBatchNodeTask

        state = torch.get_rng_state()
        torch.manual_seed(0)
        try:
            task = MiniBatchNodeTask(self.ds.data, self.cfg.fanout, self.cfg.batch_size, self.device)
        finally:
            torch.set_rng_state(state)
        task.prepare(model)
        batch = next(iter(task.loader)).to(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            report = cost_report(model, batch, forward=task.batch_forward)
        cost = report.to_dict()
        cost["unsupported"] = list(report.unsupported)
        cost["per"] = (f"forward over one sampled training batch ({batch.batch_size} seeds, fanout "
                       f"{list(self.cfg.fanout)}: {report.num_nodes} nodes, {report.num_edges} edges)")
        return cost

    def checkpoint_meta(self, results: dict) -> dict:
        sel = results["runs"][results["selected_run"]]
        return {"config": results["config"], "num_features": self.ds.num_features,
                "num_classes": self.ds.num_classes, "selected_run": sel}


def run_experiment(cfg: TrainConfig, *, root=None, out: str | Path | None = None,
                   save: str | Path | None = None, resume: bool = False, progress: bool | None = None,
                   control: Control | None = None, save_every: float = 60.0, overwrite: bool = False) -> dict:
    """Train `cfg`, write the results JSON to `out` and the selected model to `save`.

    The resume state lives beside the results (``<out>.state.pt``, else ``<save>.state.pt``)
    and is removed once the experiment has finished. Before anything is loaded: `out` and `save` must be
    writable, the device usable, and an interrupted run's state is either resumed (`resume`) or replaced
    (`overwrite`), never silently deleted. A write that fails after training keeps the state and raises
    :class:`~qgnn.train.outputs.OutputWriteError` (:func:`~qgnn.train.outputs.write_outputs`).
    """
    from qgnn.env import check_device
    from qgnn.train.checkpoint import write_json
    from qgnn.train.outputs import check_file_target, check_stale_state, state_path_for, write_outputs

    for flag, target in (("--out", out), ("--save", save)):
        if target:
            check_file_target(target, flag)
    state_path = state_path_for(out, save)
    check_stale_state(state_path, resume, overwrite)
    check_device(cfg.device)
    runner_cls = Runner
    if _dataset_task(cfg.dataset) == "rec":  # recommendation: its own loop, same interface (qgnn.train.rec)
        from qgnn.train.rec import RecRunner as runner_cls
    runner = runner_cls(cfg, root=root, state_path=state_path, progress=progress, control=control,
                        save_every=save_every)
    results = runner.run(resume=resume)
    best_state = results.pop("_best_state")
    meta = runner.checkpoint_meta(results)

    def write_checkpoint(path: Path) -> None:
        save_checkpoint(path, best_state, meta)
        results["checkpoint"] = str(path)

    writes = [("--save", Path(save), write_checkpoint)] if save else []
    writes += [("--out", Path(out), lambda path: write_json(path, results))] if out else []
    write_outputs(writes, results, state_path, state_current=not getattr(runner, "state_save_failed", False))
    return results


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model saved by ``run_experiment(save=...)`` / ``qgnn train --save``, in eval mode.

    The architecture and quantization method come from the checkpoint's metadata (its ``config``);
    the weights and quantizer state (scales, zero points, ranges) from its tensors. Returns
    (model, metadata). A checkpoint whose tensors do not fit the rebuilt model raises CheckpointError.
    """
    from qgnn.models import build_model
    from qgnn.train.checkpoint import load_checkpoint

    state, meta = load_checkpoint(path)
    if isinstance(meta.get("config"), dict) and meta["config"].get("task") == "rec":
        from qgnn.train.rec import load_rec_model  # needs the dataset: the training graph is propagated

        return load_rec_model(path)
    try:
        cfg = TrainConfig.from_dict(meta["config"])
        model = build_model(cfg.model, cfg.task, meta["num_features"], meta["num_classes"], hidden=cfg.hidden,
                            num_layers=cfg.num_layers, dropout=cfg.dropout, **cfg.model_kwargs)
        model = apply_prompts(apply_method(model, cfg), cfg.prompt, load_backbone=False)
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: metadata does not describe a qgnn model ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit the model its metadata describes: {e}") from None
    return model.eval(), meta
