"""A grid of experiment cells, each cached in its results JSON and resumable.

The loop `qgnn compare` and the benchmark scripts (``benchmarks/_harness.py``) share: cell -> config ->
run -> cache. A :class:`Cell` is one experiment: a :class:`~qgnn.train.TrainConfig` trained by
:func:`~qgnn.train.run_experiment`, or, with ``search`` set, MixQ-GNN's search and fixed-bit training
(:func:`~qgnn.search.mixq.run_search`). :func:`run_cell` runs it with its results JSON at ``path``:

* **cached**: when ``path`` holds the results of the configuration the cell would run *now*, they are
  returned without training. "Now" means after :meth:`TrainConfig.resolve`, so a changed flag *or* a changed
  recipe (:mod:`qgnn.recipes`) reruns the cell, and two requests that resolve to the same configuration share
  it. The comparison key (:func:`fingerprint`) is written into the JSON as ``"cell"``; a results file without
  it (written before this module, or by ``qgnn train``) is matched on its recorded ``config``.
* **resumable**: a cell keeps its resume state beside its JSON (``<path>.state.pt``: the runner's for a training
  cell, :func:`~qgnn.search.mixq.run_search`'s for a search cell, which holds the search's place too) while it
  runs; a stopped cell (Ctrl-C through :class:`~qgnn.train.Control`) continues from it, giving the result of an
  uninterrupted run. A state saved for another configuration cannot continue this cell: it is removed, with a
  note.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FINGERPRINT_FORMAT = "qgnn-cell/1"

# Keys of ``config["model_kwargs"]`` that the runner itself sets after resolving (the normalised readout for
# constant-feature TU datasets, qgnn.train.runner.Runner): a recorded config may carry them unasked.
RUNNER_SET_KWARGS = ("readout_norm",)
# Config keys that label where values came from (the recipe names) rather than hold values: the values they
# filled are compared, the labels are not.
LABEL_KEYS = ("recipes",)


@dataclass
class Cell:
    """One experiment of a grid. ``meta``: extra keys written into its results JSON (e.g. the command line);
    they are not part of the cache key."""

    name: str
    config: object                     # qgnn.train.TrainConfig (unresolved: recipes fill what is unset)
    search: object | None = None       # qgnn.search.mixq.SearchConfig: search, then fixed-bit training
    save: str | Path | None = None     # checkpoint of the selected model (reused only while the file exists)
    meta: dict = field(default_factory=dict)


def _plain(obj):
    """JSON-normalised copy (tuples become lists), so a config compares equal to its JSON record."""
    return json.loads(json.dumps(obj))


def task_of(cfg) -> str:
    from qgnn.train.runner import _dataset_task

    return _dataset_task(cfg.dataset)


def resolved(cell: Cell):
    """The TrainConfig the cell trains, as its runner will resolve it (the fixed-bit phase for a search)."""
    cfg = cell.config
    task = task_of(cfg)
    if cell.search is not None:  # as run_search trains it: the final method, at the widest candidate
        sc = cell.search.validate()
        cfg = dataclasses.replace(cfg, method=sc.final_method, bits=max(sc.candidates + (sc.weight_candidates or ())))
    if task == "rec":  # as the runner resolves it (qgnn.train.rec.resolve_config)
        from qgnn.train.rec import with_method_bits

        cfg = with_method_bits(cfg)
    return cfg.resolve(task)


def fingerprint(cell: Cell) -> dict:
    """What identifies the cell's result: the resolved config, and for a search the validated search options.
    Raises the config's own error (ConfigError, UnknownNameError) when the cell cannot run."""
    fp = {"format": FINGERPRINT_FORMAT, "kind": "search" if cell.search is not None else "train",
          "config": resolved(cell).to_dict()}
    if cell.search is not None:
        fp["search"] = cell.search.validate().to_dict()
    return _plain(fp)


def _as_current(recorded: dict) -> dict:
    """A recorded config in today's dict form: ``TrainConfig.from_dict`` fills the keys added since it was written
    with their defaults (the behaviour of the code that wrote it), so an older file still compares."""
    from qgnn.errors import QgnnError
    from qgnn.train import TrainConfig

    try:
        return TrainConfig.from_dict(dict(recorded)).to_dict()
    except (QgnnError, TypeError, ValueError):
        return recorded  # not loadable as a config: compared as written (and so unequal to any resolved one)


def same_config(want: dict, got: dict) -> bool:
    """``got`` (a recorded config) is ``want`` (a resolved one), allowing the keys the runner adds itself and the
    keys added to the config since ``got`` was written (at their defaults)."""
    want, got = _plain(want), _plain(_as_current(got))
    for key in LABEL_KEYS:
        want.pop(key, None)
        got.pop(key, None)
    if isinstance(got.get("model_kwargs"), dict) and isinstance(want.get("model_kwargs"), dict):
        got["model_kwargs"] = {k: v for k, v in got["model_kwargs"].items()
                               if k in want["model_kwargs"] or k not in RUNNER_SET_KWARGS}
    return want == got


def matches(fp: dict, results: dict) -> bool:
    """Whether ``results`` (a results JSON) are the result of the cell with fingerprint ``fp``."""
    if isinstance(results.get("cell"), dict):  # written by run_cell: same kind, search options and config
        rec = _plain(results["cell"])
        return (rec.get("kind") == fp["kind"] and rec.get("search") == fp.get("search")
                and isinstance(rec.get("config"), dict) and same_config(fp["config"], rec["config"]))
    # A results file from before the "cell" key: a training cell's recorded config must be its config.
    return fp["kind"] == "train" and isinstance(results.get("config"), dict) and \
        same_config(fp["config"], results["config"])


def load_cached(cell: Cell, path: str | Path, fp: dict | None = None) -> dict | None:
    """The cell's results from ``path`` when they match it (and its checkpoint exists), else None."""
    path = Path(path)
    if not path.is_file() or (cell.save and not Path(cell.save).is_file()):
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a torn or foreign file is not a result: the cell runs again and replaces it
    fp = fp or fingerprint(cell)
    return results if isinstance(results, dict) and matches(fp, results) else None


def runs_of(cfg) -> int:
    """Runs of a resolved config: seeds, times folds for graph tasks (qgnn.train.runner._run_list)."""
    return cfg.seeds * (cfg.folds if cfg.task == "graph" else 1)


def cell_epochs(cell: Cell) -> int:
    """Epochs the cell trains when none stops early: what a progress bar over the grid counts."""
    cfg = resolved(cell)
    per_run = cfg.epochs + ((cell.search.search_epochs or cfg.epochs) if cell.search is not None else 0)
    return runs_of(cfg) * per_run


def state_path(path: str | Path) -> Path:
    """Where :func:`~qgnn.train.run_experiment` keeps the resume state of results ``path``
    (:func:`qgnn.train.outputs.state_path_for`: ``<path>.state.pt``)."""
    from qgnn.train.outputs import state_path_for

    return state_path_for(path, None)


def _note(msg: str) -> None:
    print(f"qgnn: {msg}", file=sys.stderr)


def _continues(fp: dict, state: dict) -> bool:
    """Whether a resume state continues the cell of fingerprint ``fp``: same kind (a training run's state has no
    "kind"), same fixed-bit config and, for a search, the same search options and search epochs."""
    if state.get("kind", "train") != fp["kind"] or not same_config(fp["config"], state.get("config", {})):
        return False
    if fp["kind"] != "search":
        return True
    search = fp["search"]
    return (_plain(state.get("search")) == search
            and state.get("search_epochs") == (search.get("search_epochs") or fp["config"]["epochs"]))


def _usable_state(fp: dict, spath: Path, force: bool, note: Callable[[str], None]) -> dict | None:
    """The resume state at ``spath`` when it continues this cell; a state of anything else is removed."""
    from qgnn.errors import CheckpointError
    from qgnn.train.checkpoint import load_state

    if not spath.exists():
        return None
    why = "--force" if force else None
    state = None
    if not force:
        try:
            state = load_state(spath)
        except CheckpointError as e:
            why = f"unreadable ({e})"
        else:
            if not _continues(fp, state):
                why, state = "saved for another configuration", None
    if state is None:
        note(f"removing the resume state {spath}: {why}")
        spath.unlink()
    return state


def run_cell(cell: Cell, path: str | Path, *, root=None, force: bool = False, control=None, bar=None,
             progress: bool | None = False, note: Callable[[str], None] = _note) -> tuple[dict, bool]:
    """Run ``cell`` with its results JSON at ``path``, or reuse that JSON; returns (results, cached).

    ``bar``: a tqdm advanced by one per epoch trained (resumed epochs count as done); without it the runner
    draws its own bar when ``progress`` allows. ``control``: stops the cell at an epoch boundary
    (:class:`~qgnn.train.Interrupted`, after saving the cell's resume state). ``force``: train again
    even when a matching result (or resume state) exists.
    """
    from qgnn.train import Control
    from qgnn.train.checkpoint import write_json

    path = Path(path)
    fp = fingerprint(cell)
    if not force:
        cached = load_cached(cell, path, fp)
        if cached is not None:
            return cached, True
    control = control or Control()
    spath = state_path(path)
    state = _usable_state(fp, spath, force, note)
    start = bar.n if bar is not None else 0
    total = cell_epochs(cell)
    if state is not None:
        if cell.search is None:
            cfg = resolved(cell)
            done = len(state.get("runs", [])) * cfg.epochs + ((state.get("current") or {}).get("epoch") or 0)
        else:
            from qgnn.search.mixq import state_epochs

            done = state_epochs(state)
        note(f"{cell.name}: resuming after {done} of {total} epochs ({spath})")
        if bar is not None and cell.search is None:  # run_search advances the bar it is given by its done epochs
            bar.update(done)

    def tick(run, epoch):
        bar.update(1)

    own_tick = bar is not None and cell.search is None
    if own_tick:
        control.on_epoch_end.append(tick)
    run_progress = False if bar is not None else progress
    try:
        if cell.search is None:
            from qgnn.train import run_experiment

            results = run_experiment(cell.config, root=root, out=path, save=cell.save, resume=state is not None,
                                     progress=run_progress, control=control)
        else:
            from qgnn.search.mixq import run_search

            results = run_search(cell.config, cell.search, root=root, out=path, save=cell.save,
                                 resume=state is not None, progress=run_progress, control=control, bar=bar)
    finally:
        if own_tick:
            control.on_epoch_end.remove(tick)
    if bar is not None:  # early stopping skips epochs: the bar still ends where this cell's share ends
        bar.update(max(0, start + total - bar.n))
    results.update({"cell": fp, **cell.meta})
    write_json(path, results)
    return results, False


@contextlib.contextmanager
def stop_on_sigint(control, what: str = "this epoch", launched: bool = False) -> Iterator[None]:
    """While inside: the first Ctrl-C asks ``control`` to stop at the next epoch boundary (the runner saves
    its resume state and raises Interrupted); a second one aborts at once (KeyboardInterrupt).

    ``launched`` (a rank under torchrun): SIGTERM asks to stop too, and a repeated signal does not abort. The
    launcher forwards the terminal's Ctrl-C to every rank (which got it already) and then SIGTERM: both mean
    "stop", and the ranks must reach the epoch boundary where they stop and save together."""
    def on_sigint(signum, frame):
        if control.stop_requested:
            if launched:
                return
            raise KeyboardInterrupt
        control.stop_requested = True
        again = "" if launched else " (Ctrl-C again to abort without saving)"
        if not launched or os.environ.get("RANK", "0") == "0":  # under torchrun one line, rank 0's
            print(f"\nqgnn: stopping after {what}{again}", file=sys.stderr)

    signals = (signal.SIGINT, signal.SIGTERM) if launched else (signal.SIGINT,)
    try:
        previous = {s: signal.signal(s, on_sigint) for s in signals}
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
