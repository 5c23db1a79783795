"""The one runner: node (full-batch and sampled mini-batch), graph and recommendation experiments.

For each run (a seed; for graph tasks a seed and a cross-validation fold): seed, build the model, make the
run's task (:mod:`qgnn.train.task`, the Task protocol), train with the optimizer, select the epoch on the
validation split, record that epoch's scores. Across runs: mean ± std of every score; the run with the best
validation score is the selected model (its weights go to the checkpoint).

The tasks: :class:`~qgnn.train.tasks.NodeTask` (full batch), :class:`~qgnn.train.minibatch.MiniBatchNodeTask`
(when the config gives a batch size or fanouts), :class:`~qgnn.train.tasks.GraphTask` (one per fold), and
:class:`~qgnn.train.rec.RecTrainTask` (recommendation). Everything else is the runner's, the same for all: the
loop, selection (:class:`~qgnn.train.selection.BestTracker` on the task's ``selection`` pair; the same rule
picks the selected run), early stopping, the scheduler, timing, the resume state and the results. What differs
by model kind is behind a few building blocks: :meth:`Runner.build`, :meth:`Runner.task_for`,
:meth:`Runner._optim`, :meth:`Runner.cost` and :meth:`Runner.checkpoint_meta` (GNNs here; the LightGCN family
through :mod:`qgnn.train.rec`, imported only when a recommendation dataset is run, so the modules depend one way).

An epoch: ``task.train_epoch``; then, every ``eval_every`` epochs and after the last, ``task.evaluate`` (and,
for a task with a test pass of its own, ``task.evaluate_test`` when the epoch improves validation); a task
without a validation split (a recommendation refit) is evaluated at its last epoch only (and, recording a test
curve, every ``eval_every`` epochs), and that epoch is the run's.

Interruptions lose no work: the runner saves a resume state at epoch boundaries every ``save_every`` seconds,
after each run, and when asked to stop (Ctrl-C): ``{"format", "config", "runs", "best", "current"}`` with the
finished runs, the best so far (``{"index", "val", "val_loss", "state"}``) and the current run's ``index``,
``epoch``, seconds (``seconds``; a task with split timing: ``train_s``, ``eval_s``, ``test_s``, ``train_cpu``),
``model``, ``optimizer``, ``scheduler``, ``tracker``, ``rng`` (every random stream, the task's
``generators()`` included), its ``history`` when the task keeps a curve, and the task's own ``state_dict()``
(the recommendation task's ``gen``). `resume=True` continues from it and gives the same result as an
uninterrupted run; states written before the one runner (a recommendation state's ``best`` with ``val2``, no
``scheduler``) load too.

Under torchrun (``dist``, :mod:`qgnn.train.distributed`) the same loop runs on every rank: each task takes its
rank's share of the data (``shard``), training steps go through DDP with quantizer statistics reduced over the
ranks, rank 0 alone evaluates (its scores and buffers broadcast) and writes, the stop / save decision at an epoch
boundary is agreed by all ranks, the resume state carries every rank's random streams (``rng_ranks``) and its
``world_size``, and each run ends with a check that all ranks hold the same parameters and buffers.
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
from qgnn.train.results import log_run, summarize_runs
from qgnn.train.seeding import load_rng_state, rng_state, set_seed
from qgnn.train.selection import BestTracker, validation_due
from qgnn.train.task import (
    better,
    curve_entry,
    has_validation,
    keeps_curve,
    load_task_state,
    prepare_task,
    selection_key,
    summary_keys,
    task_generators,
    task_state,
    timing_of,
    warm_up,
)
from qgnn.train.tasks import GraphTask, NodeTask, penalty_modules

__all__ = ["Control", "Interrupted", "Runner", "STATE_FORMAT", "apply_method", "load_for", "load_model",
           "run_experiment", "task_generators"]

STATE_FORMAT = "qgnn-state/1"
# Graphs per batch of the cost pass over a graph dataset (Runner.cost): the evaluation batch size of graph tasks.
COST_BATCH_GRAPHS = 256


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
    from qgnn.train.rec import dataset_options

    return load_dataset(cfg.dataset, root=root, **dataset_options(cfg))


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


def _run_list(cfg: TrainConfig) -> list[tuple[int, int | None]]:
    """(seed, fold) per run. Graph runs are seeded per fold so folds differ in their draws too."""
    if cfg.task in ("node", "rec"):
        return [(cfg.seed + r, None) for r in range(cfg.seeds)]
    return [(cfg.seed + 1000 * r + f, f) for r in range(cfg.seeds) for f in range(cfg.folds)]


@dataclass
class _Clock:
    """Seconds one run has spent: training (wall and CPU), validation passes, test passes of their own.

    Saved and reported in the task's layout (:func:`qgnn.train.task.timing_of`): ``"epoch"`` keeps one total
    (``seconds``), ``"split"`` keeps the parts (``train_s``, ``eval_s``, ``test_s``, ``train_cpu``)."""

    train: float = 0.0
    train_cpu: float = 0.0
    eval: float = 0.0
    test: float = 0.0

    @property
    def total(self) -> float:
        return self.train + self.eval + self.test

    def state_dict(self, timing: str) -> dict:
        if timing == "split":
            return {"train_s": self.train, "eval_s": self.eval, "test_s": self.test, "train_cpu": self.train_cpu}
        return {"seconds": self.total}

    @classmethod
    def from_state(cls, current: dict) -> _Clock:
        if "seconds" in current:
            return cls(train=current["seconds"])
        return cls(current["train_s"], current["train_cpu"], current["eval_s"], current["test_s"])

    def record(self, timing: str, epochs: int) -> dict:
        """The timing entries of a run's record."""
        e = max(epochs, 1)
        if timing == "split":
            return {"train_seconds_per_epoch": self.train / e, "train_cpu_seconds_per_epoch": self.train_cpu / e,
                    "eval_seconds_per_epoch": self.eval / e, "seconds_per_epoch": (self.train + self.eval) / e,
                    "train_seconds": self.total, "test_seconds": self.test}
        return {"seconds_per_epoch": self.total / e, "train_seconds": self.total}


# the per-epoch means of the results' "timing", per layout, in the order the JSON lists them
_TIMING_MEANS = {"epoch": ("seconds_per_epoch",),
                 "split": ("seconds_per_epoch", "train_seconds_per_epoch", "train_cpu_seconds_per_epoch",
                           "eval_seconds_per_epoch")}


class Runner:
    """Trains all runs of one TrainConfig, for every task (module docstring).

    Attributes callers use: ``cfg`` (the resolved config; the MixQ search swaps it between its phases), ``ds``
    (the dataset), ``device``, ``splits`` (graph tasks: the ten cross-validation splits), ``rec_task``
    (recommendation: the :class:`~qgnn.train.rec.RecTask` every run shares, its indices built once; None
    otherwise). Scripts that drive training themselves (benchmarks, the MixQ search) use the building blocks
    :meth:`build`, :meth:`task_for`, :meth:`_optim` and :meth:`cost`.
    """

    def __init__(self, cfg: TrainConfig, root=None, state_path: str | Path | None = None,
                 progress: bool | None = None, save_every: float = 60.0, control: Control | None = None,
                 dist=None):
        # dist: this rank's qgnn.train.distributed.Dist under torchrun (None: one process)
        self.dist = dist
        if dist is not None and not dist.main:
            progress = False  # one bar, rank 0's
        kind = _dataset_task(cfg.dataset)
        if kind == "rec":
            from qgnn.train.rec import resolve_config

            self.cfg = resolve_config(cfg)  # checks --pretrained before any data is loaded
        else:
            # Resolve first: the loader options (normalize_features) come from the resolved recipe.
            self.cfg = cfg.resolve(kind)
        if dist is not None and kind == "node":  # the machine holds the graph once (Dist.load_shared_graph)
            self.ds = dist.load_shared_graph(lambda: load_for(self.cfg, root))
        else:
            if dist is not None and not dist.local_main:
                dist.barrier()  # the machine's first rank loads first: it writes the processed caches the rest read
            self.ds = load_for(self.cfg, root)
            if dist is not None and dist.local_main:
                dist.barrier()
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
        self.device = dist.device if dist is not None else torch.device(self.cfg.device)
        self.splits = self.ds.folds(k=10, seed=self.cfg.fold_seed) if self.ds.task == "graph" else None
        self.rec_task = None  # recommendation: the sampling / ranking task every run shares (qgnn.train.rec)
        if kind == "rec":
            from qgnn.train.rec import make_rec_task

            self.rec_task = make_rec_task(self.cfg, self.ds, self.device)

    # -- building blocks (what differs by model kind) ------------------------------------------------
    def build(self) -> torch.nn.Module:
        """A fresh model of the config on the device: the method applied, prompts injected."""
        c = self.cfg
        if self.rec_task is not None:
            from qgnn.train.rec import build_run_model

            return build_run_model(c, self.ds, self.rec_task, self.device)
        from qgnn.models import build_model

        model = build_model(c.model, c.task, self.ds.num_features, self.ds.num_classes,
                            hidden=c.hidden, num_layers=c.num_layers, dropout=c.dropout, **c.model_kwargs)
        model = apply_prompts(apply_method(model, c), c.prompt).to(self.device)
        if c.minibatch:  # a layer sees a different subgraph every batch: no cached normalisation
            from qgnn.train.minibatch import no_cached_normalisation

            no_cached_normalisation(model)
        return model

    @property
    def task_class(self) -> type:
        """The class of this config's tasks: where the runner reads the task's class-level facts (selection,
        summary keys, timing layout) when no task instance is at hand."""
        if self.rec_task is not None:
            from qgnn.train.rec import RecTrainTask

            return RecTrainTask
        if self.ds.task == "node" and self.cfg.minibatch:
            from qgnn.train.minibatch import MiniBatchNodeTask

            return MiniBatchNodeTask
        if getattr(self.ds, "regression", False):  # molecules: one float per graph (qgnn.train.regression)
            from qgnn.train.regression import RegressionTask

            return RegressionTask
        return NodeTask if self.ds.task == "node" else GraphTask

    def task_for(self, fold: int | None):
        """The task of one run (a :class:`~qgnn.train.task.Task`); ``fold``: the graph task's split. Built right
        after ``set_seed(seed)`` (and the model): a task seeded per run takes the seed from there."""
        cls = self.task_class
        shard = {"shard": self.dist.shard} if self.dist is not None else {}  # this rank's share of the data
        if self.rec_task is not None:
            # the run's seed, which set_seed has just given torch: the sampling stream of run r is that of
            # seed + r whatever the model drew while being built (the same on every rank: each takes its share)
            return cls(self.rec_task, torch.initial_seed(), self.cfg.weight_decay,
                       test_curve=bool(self.cfg.quant.get("test_curve", False)), **shard)
        if self.ds.task == "node" and self.cfg.minibatch:
            return cls(self.ds.data, self.cfg.fanout, self.cfg.batch_size, self.device, progress=self.progress,
                       **shard)
        if self.ds.task == "node":
            return cls(self.ds.data, self.device, **shard)
        return cls(self.ds.dataset, self.splits[fold], self.cfg.batch_size, self.device, **shard)

    def _optim(self, model):
        """(optimizer, scheduler or None) for ``model``."""
        params = [p for p in model.parameters() if p.requires_grad]
        if self.rec_task is not None:  # LightGCN's L2 is in the loss (qgnn.train.rec); no schedule
            from qgnn.train.rec import make_adam

            return make_adam(params, self.cfg.lr), None
        from qgnn.prompts import prompt_parameters
        from qgnn.prompts.train import prompt_optimizer_options

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
        world = self.dist.world_size if self.dist is not None else 1
        if self.dist is None:
            state = self._read_state()
        else:
            state = self._shared_state()
        if state is not None and state.get("world_size", 1) != world:
            raise CheckpointError(f"{self.state_path} was saved by {state.get('world_size', 1)} process(es); "
                                  f"resume with as many (torchrun --nproc_per_node {state.get('world_size', 1)})")
        return state

    def _shared_state(self) -> dict | None:
        # rank 0 reads the state it wrote, every rank resumes from it (no shared file system needed)
        try:
            got = ("ok", self._read_state()) if self.dist.main else None
        except CheckpointError as e:
            got = ("error", str(e))
        got = self.dist.broadcast(got)
        if got[0] == "error":
            raise CheckpointError(got[1])
        return got[1]

    def _read_state(self) -> dict | None:
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
        if self.state_path and (self.dist is None or self.dist.main):  # one writer: rank 0
            from qgnn.train.outputs import save_state_or_warn

            extra = {"world_size": self.dist.world_size} if self.dist is not None else {}
            save_state_or_warn(self, {"format": STATE_FORMAT, "config": self.cfg.to_dict(),
                                      "runs": runs_done, "best": best, "current": current, **extra})

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
                t_run = time.perf_counter()
                result, best_state = self._one_run(r, seed, fold, current if current and current["index"] == r
                                                   else None, runs_done, best, bar)
                current = None
                log_run(self.progress, bar, f"{self.cfg.dataset}/{self.cfg.model}/{self.cfg.method}", r,
                        len(run_list), result, self.task_class.metric, time.perf_counter() - t_run)
                # the selected run: the task's selection rule on the runs' records (each holds its selected
                # epoch's scores), compared with the best run's record, so a state of any earlier layout works
                key = selection_key(self.task_class, result)
                if best is None or better(key, selection_key(self.task_class, runs_done[best["index"]])):
                    best = {"index": r, "val": key[0], "val_loss": key[1], "state": best_state}
                runs_done.append(result)
                self._save_state(runs_done, best, None)
        finally:
            bar.close()
        total = time.perf_counter() - t_start
        return self._results(runs_done, best, total)

    def _one_run(self, r, seed, fold, current, runs_done, best, bar):
        set_seed(seed)
        model = self.build()
        task = self.task_for(fold)
        dist = self.dist
        if dist is not None:  # rank > 0: streams of its own (a resumed run loads its own below)
            dist.split_streams(seed, {k: g for k, g in task_generators(task).items() if not k.startswith("shard")})
        opt, sched = self._optim(model)
        pens = penalty_modules(model)
        tracker = BestTracker(self.cfg.patience)
        timing = timing_of(task)
        clock = _Clock()
        history: list[dict] | None = [] if keeps_curve(task) else None  # one entry per evaluation
        start_epoch = 0
        if current is not None:  # continue an interrupted run where its state was saved
            model.load_state_dict(current["model"])
            opt.load_state_dict(current["optimizer"])
            if sched is not None and current.get("scheduler") is not None:
                sched.load_state_dict(current["scheduler"])
            tracker.load_state_dict(current["tracker"])
            load_task_state(task, current)
            # every stream, the model's and the task's own generators included (qgnn.train.seeding): torch's
            # CPU state alone left Degree-Quant's percentile sampling to restart from its seed
            rng = current["rng_ranks"][dist.rank] if dist is not None else current["rng"]
            load_rng_state(rng, model, task_generators(task))
            start_epoch, clock = current["epoch"], _Clock.from_state(current)
            if history is not None:
                history = list(current.get("history", []))
            bar.update(start_epoch)
        prepare_task(task, model)
        train_model = model
        if dist is not None:  # DDP for the training steps; evaluation and saving use the model itself
            if not getattr(task, "trains_through_forward", True):  # no forward for DDP to hook: average here
                opt.register_step_pre_hook(lambda *_: dist.average_gradients(model))
            else:
                if any(p.numel() == 0 for p in model.parameters()):
                    with dist.training():  # DDP needs every parameter's shape: size the lazy ones first
                        warm_up(task, model)
                train_model = dist.wrap(model)
            opt.register_step_post_hook(lambda *_: dist.average_buffers(model))
        last_save = time.monotonic()
        epochs_run = start_epoch
        for epoch in range(start_epoch, self.cfg.epochs):
            t0, cpu = time.perf_counter(), time.process_time()
            if dist is not None:
                with dist.training():
                    loss = task.train_epoch(train_model, opt, pens)
            else:
                loss = task.train_epoch(model, opt, pens)
            clock.train_cpu += time.process_time() - cpu
            clock.train += time.perf_counter() - t0
            self._evaluate(task, model, epoch, tracker, clock, history)
            if sched is not None:
                sched.step()
            epochs_run = epoch + 1
            bar.update(1)
            bar.set_postfix(run=f"{r + 1}", loss=f"{loss:.4f}", best_val=f"{tracker.best_val:.4f}", refresh=False)
            for cb in self.control.on_epoch_end:
                cb(r, epoch)
            stop = self.control.stop_requested
            save = bool(self.state_path) and time.monotonic() - last_save > self.save_every
            if dist is not None:  # the ranks agree: a stop on any rank stops all, at this same epoch
                stop, save = dist.any(stop, save)
            if self.state_path and (stop or save):
                rng = rng_state(model, task_generators(task))
                cur = {"index": r, "epoch": epochs_run, **clock.state_dict(timing), "model": model.state_dict(),
                       "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                       "tracker": tracker.state_dict(), "rng": rng,
                       **({"history": history} if history is not None else {}), **task_state(task)}
                if dist is not None:  # every rank's streams, so each resumes its own
                    cur["rng_ranks"] = dist.gather(rng)
                self._save_state(runs_done, best, cur)
                last_save = time.monotonic()
            if stop:
                if dist is not None:
                    dist.barrier()  # nobody leaves (and has the launcher stop the rest) before rank 0 has saved
                where = f"; resume with --resume (state in {self.state_path})" if self.state_path else ""
                raise Interrupted(f"stopped at run {r + 1}, epoch {epochs_run}{where}")
            if tracker.should_stop:
                bar.update(self.cfg.epochs - epochs_run)
                break
        if dist is not None:
            bad = dist.mismatched(model)
            if bad:
                from qgnn.train.distributed import DistError

                raise DistError(f"after run {r + 1} the ranks hold different values of {', '.join(bad[:5])}"
                                + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        result = {"seed": seed, **({} if self.rec_task is not None else {"fold": fold}),  # rec runs: no folds
                  "best_epoch": tracker.best_epoch, "epochs_run": epochs_run, **clock.record(timing, epochs_run),
                  **tracker.best_scores, **({"history": history} if history is not None else {})}
        return result, tracker.best_state

    def _evaluate(self, task, model, epoch: int, tracker: BestTracker, clock: _Clock, history) -> None:
        """The evaluation that ends ``epoch`` (module docstring), its time on ``clock``, its scores to
        ``tracker`` and the curve."""
        due = validation_due(epoch, self.cfg)
        t0 = time.perf_counter()
        if has_validation(task):
            if not due:
                return
            scores = self._once(task.evaluate, model)
            t1 = time.perf_counter()
            clock.eval += t1 - t0
            key = selection_key(task, scores)
            test = getattr(task, "evaluate_test", None)
            if callable(test) and better(key, (tracker.best_val, tracker.best_val_loss)):
                scores = {**scores, **self._once(test, model)}  # only for an epoch that may be selected
                clock.test += time.perf_counter() - t1
            tracker.update(epoch, *key, scores, model)
        else:  # no validation split: nothing to select; the run is its last epoch
            last = epoch + 1 == self.cfg.epochs
            if not (last or (due and getattr(task, "test_curve", False))):
                return
            scores = self._once(task.evaluate, model)  # the test scores
            clock.test += time.perf_counter() - t0
            if last:
                tracker.update(epoch, *selection_key(task, scores), scores, model)
        if history is not None:
            history.append(curve_entry(task, epoch, scores))

    def _once(self, evaluate, model) -> dict:
        """``evaluate(model)``: in one process, or under torchrun on rank 0 alone (the whole split, as one
        process computes it), its scores sent to every rank so that all select and stop alike."""
        if self.dist is None:
            return evaluate(model)
        scores = self.dist.broadcast(evaluate(model) if self.dist.main else None)
        self.dist.broadcast_buffers(model)  # what the evaluation wrote into the model (GNAQ's codes)
        return scores

    def _results(self, runs, best, total) -> dict:
        from qgnn.env import environment
        from qgnn.prompts import prompt_report

        cls = self.task_class
        keys = [k for k in summary_keys(cls) if k in runs[0]]
        timing = {k: sum(r[k] for r in runs) / len(runs) for k in _TIMING_MEANS[timing_of(cls)]}
        if self.rec_task is not None:
            timing["batches_per_epoch"] = self.rec_task.batches_per_epoch
        return {
            "config": self.cfg.to_dict(),
            "metrics": summarize_runs(runs, keys),
            "cost": self.cost(best["state"]),
            "timing": {**timing, "total_seconds": total},
            "runs": runs,
            "selected_run": best["index"],
            **({"prompt": {**self.cfg.prompt, **prompt_report(self.build())}} if self.cfg.prompt else {}),
            "env": {**environment(), "world_size": self.dist.world_size if self.dist is not None else 1},
            "_best_state": best["state"],  # popped by save(); not part of the JSON
        }

    def cost(self, state: dict) -> dict:
        """The ``cost`` entry (docs/cost.md) of the selected model, from eval forwards.

        Node tasks: the whole graph. Graph tasks: every graph of the dataset, in batches of
        ``COST_BATCH_GRAPHS`` (the counts add up over batches: the totals of one batch of every graph, at the
        memory of one evaluation batch); the totals are divided by the number of graphs (``bitops`` is then
        per graph; ``per_layer`` keeps the whole dataset's MACs, its ``shape`` the last batch's), so datasets
        of any size compare. Recommendation: the stored embedding table (:func:`~qgnn.train.rec.rec_cost`).
        """
        import warnings

        from torch_geometric.loader import DataLoader

        from qgnn.search import cost_report

        model = self.build()
        model.load_state_dict(state)
        if self.rec_task is not None:
            from qgnn.train.rec import rec_cost

            return rec_cost(model)
        if self.ds.task == "node" and self.cfg.minibatch:
            return self._batch_cost(model)
        if self.ds.task == "node":
            data, graphs = self.ds.data.to(self.device), None
        else:
            # One batch of all graphs held every activation of the dataset at once: on REDDIT-BINARY (2000
            # graphs, 860k nodes) it set a GIN a2q run's peak memory (`qgnn train --dataset reddit-binary --model
            # gin --method a2q --folds 1 --epochs 1`: peak RSS 2.63 GB, 1.46 GB in batches).
            graphs = len(self.ds.dataset)
            loader = DataLoader(self.ds.dataset, batch_size=COST_BATCH_GRAPHS, shuffle=False)
            data = (b.to(self.device) for b in loader)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # layers without a cost model are listed below
            report = cost_report(model, data)
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
        """The checkpoint's metadata: the config, the selected run's record and what rebuilds the model's
        shape (:func:`load_model`)."""
        sel = results["runs"][results["selected_run"]]
        if self.rec_task is not None:
            return {"config": results["config"], "num_users": self.ds.num_users, "num_items": self.ds.num_items,
                    "selected_run": sel}
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
    from qgnn.train.distributed import from_environ, start
    from qgnn.train.outputs import check_file_target, check_stale_state, state_path_for, write_outputs

    launch = from_environ()  # under torchrun: this rank joins the others (qgnn.train.distributed)
    main = launch is None or launch.rank == 0
    if main:  # rank 0 alone writes; the checks are its own
        for flag, target in (("--out", out), ("--save", save)):
            if target:
                check_file_target(target, flag)
    state_path = state_path_for(out, save)
    if main:
        check_stale_state(state_path, resume, overwrite)
    check_device(cfg.device)
    dist = start(launch, cfg.device) if launch is not None else None
    runner = Runner(cfg, root=root, state_path=state_path, progress=progress, control=control,
                    save_every=save_every, dist=dist)
    results = runner.run(resume=resume)
    best_state = results.pop("_best_state")
    if not main:
        return results
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
