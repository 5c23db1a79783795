"""The loop every benchmark script that trains cells shares: cell -> config -> run -> cache -> render.

A script names its experiments as cells (:class:`Cell`: a results name, a ``TrainConfig`` and, for a MixQ-GNN
cell, a ``SearchConfig``). :func:`run` trains each cell through :func:`qgnn.grid.run_cell`, the code
`qgnn compare` runs its cells with, so the benchmarks inherit its rules:

* a cell whose ``benchmarks/results/<name>.json`` records the configuration it would run now (resolved with
  today's recipes) is reused, not retrained; ``--force`` retrains it. A name may hold a folder
  (``mixq-cora-c48/search-l1``: benchmarks/results/mixq-cora-c48/search-l1.json);
* a stopped cell (Ctrl-C) keeps its resume state beside its JSON, and the same command continues it;
* the JSON records the command that produced it (``"command"``, what the docs quote);
* ``--dry-run`` lists every cell the command would run and whether its JSON is reused or the cell would
  train (:func:`preview`), and exits without training or writing anything.

Results written before this harness (no ``"cell"`` key) are reused when the cell says so: ``Cell(...,
legacy=True)`` accepts such a file when the fields that define its experiment match (:func:`legacy_match`), read
in the layout the file was written in. Scripts whose cells are named experiments (prompts.py, mixq.py) give
every setting a recipe (:mod:`qgnn.recipes`) would otherwise fill, so that a cell stays the experiment its name
says when a default changes; defaults.py measures the recipes themselves and leaves them unset.

:func:`publish` replaces the script's section of the docs; scripts rebuild it from the JSON files alone
(``--render``), so re-laying out a table never needs a rerun. :func:`table` and :func:`commands` are the
Markdown pieces the sections share.

Not every script is a grid of training cells, and those that are not keep loops of their own (sharing
:mod:`_report`): the timing scripts (overhead.py, train_cost.py, input_dropout.py, lorap_kernel.py, export.py,
and prompts.py's ``--timing``) measure seconds in one process; prompts.py's ``--tune`` and ``--ranges`` train host
and prompt per seed in turn and keep a paired summary (kept while it exists; listed by ``--dry-run`` through
``preview``'s ``others``); recsys.py chains an FP32 run into quantized fine-tuning from its checkpoint, which is
not committed (a cell's config would name a path that no other checkout has) and writes its sections as it
runs, with no render-only mode. benchmarks/check_reuse.py runs every documented command of the harness scripts
with ``--dry-run`` and lists any committed result a command would train again.
"""

# No `from __future__ import annotations`: with string annotations, @dataclass looks this module up in sys.modules,
# where a file loaded by path (tests/test_benchmark_harness.py) is not registered.
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS_DIR, command_line, update_section  # noqa: E402
from qgnn import grid  # noqa: E402
from qgnn.grid import run_cell, stop_on_sigint  # noqa: E402

__all__ = ["Cell", "RESULTS_DIR", "add_arguments", "commands", "legacy_match", "load", "preview", "publish", "run",
           "status", "table"]

# What run_search adds to the search options in a results file's "search": results, not options.
SEARCH_RESULT_KEYS = ("assignments", "expected_bits")


@dataclass
class Cell(grid.Cell):
    """A :class:`qgnn.grid.Cell`; ``legacy=True`` also accepts a results file written before the ``"cell"`` key
    (by the script's own loop) when it holds the same experiment (:func:`legacy_match`)."""

    legacy: bool = False


def add_arguments(p, *, render: bool = True) -> None:
    """The options every harness script has: --force, --dry-run (and --render, unless the script defines its
    own)."""
    p.add_argument("--force", action="store_true",
                   help="retrain cells whose results JSON already holds the same configuration")
    p.add_argument("--dry-run", action="store_true",
                   help="list every cell this command would run, reused or to train; train and write nothing")
    if render:
        p.add_argument("--render", action="store_true", help="only rebuild the docs section from the JSON files")


def path_of(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def _prompt_now(prompt):
    """A recorded prompt dict in today's layout: the PromptConfig fields added since it was written (align,
    normalize, node_after_quant) at their field defaults, which are the behaviour of the code that wrote it. An
    absent ``lr`` stays absent: the prompts trained at the run's lr."""
    from qgnn.errors import QgnnError
    from qgnn.prompts.train import resolve_prompt

    try:
        return resolve_prompt(prompt)
    except (QgnnError, TypeError, ValueError):
        return prompt  # not readable as a prompt: compared as written (and so unequal)


def legacy_match(cell: Cell, results: dict) -> bool:
    """Whether ``results``, a results file without the ``"cell"`` key, hold the experiment ``cell`` defines.

    The recorded ``config`` must be the cell's resolved config (:func:`qgnn.grid.same_config`: keys added to the
    config since at their defaults, the runner's own keys allowed), its prompt read in today's layout
    (:func:`_prompt_now`). For a search cell the recorded config is the fixed-bit phase's with the found
    assignment in ``quant.overrides`` (a result, dropped), and the recorded search options must be the cell's:
    an absent ``weight_candidates`` is None (the weight slots searched the activation candidates; the option
    came later), ``search_epochs`` is recorded as the epochs searched (the cell's None: the training epochs). A
    value that differs, a recipe's included, is another experiment: the cell trains."""
    fp = grid.fingerprint(cell)
    rec = results.get("config")
    if not isinstance(rec, dict):
        return False
    rec = dict(rec)
    if isinstance(rec.get("prompt"), dict):
        rec["prompt"] = _prompt_now(rec["prompt"])
    if fp["kind"] == "train":
        return grid.same_config(fp["config"], rec)
    searched = results.get("search")
    if not isinstance(searched, dict) or not isinstance(rec.get("quant"), dict):
        return False
    rec["quant"] = {k: v for k, v in rec["quant"].items() if k != "overrides"}
    want = {k: v for k, v in fp["search"].items() if k != "version"}
    want["search_epochs"] = want["search_epochs"] or fp["config"]["epochs"]
    got = {"weight_candidates": None, **{k: v for k, v in searched.items() if k not in SEARCH_RESULT_KEYS}}
    got.pop("version", None)
    return grid.same_config(fp["config"], rec) and json.loads(json.dumps(got)) == want


def _legacy_cached(cell: Cell) -> dict | None:
    """The cell's legacy results (no "cell" key, :func:`legacy_match`) when it accepts them, else None."""
    path = path_of(cell.name)
    if not getattr(cell, "legacy", False) or not path.is_file() or (cell.save and not Path(cell.save).is_file()):
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = isinstance(results, dict) and "cell" not in results and legacy_match(cell, results)
    return results if ok else None


def status(cell) -> tuple[str, dict | None]:
    """What :func:`run` would do with ``cell``, without training: ("reused", results), ("reused (legacy record)",
    results) or ("would train (why)", None)."""
    path = path_of(cell.name)
    cached = grid.load_cached(cell, path)
    if cached is not None:
        return "reused", cached
    legacy = _legacy_cached(cell)
    if legacy is not None:
        return "reused (legacy record)", legacy
    if grid.state_path(path).exists():
        return "would train (continuing its resume state, if it is this configuration's)", None
    if not path.exists():
        return "would train (no results JSON)", None
    if cell.save and not Path(cell.save).is_file():
        return "would train (its checkpoint is missing)", None
    return "would train (the JSON holds another configuration)", None


def preview(cells: Iterable, others: Iterable[tuple[str, bool]] = ()) -> dict[str, int]:
    """Print every cell with what :func:`run` would do with it, and the totals; trains and writes nothing.
    ``others``: (results name, JSON exists) of results a script keeps by its own rule (kept when the file exists).
    Returns the counts {"reused": n, "legacy": n (of the reused), "train": n}."""
    counts = {"reused": 0, "legacy": 0, "train": 0}
    for cell in cells:
        what, _ = status(cell)
        reused = what.startswith("reused")
        counts["reused" if reused else "train"] += 1
        counts["legacy"] += what == "reused (legacy record)"
        print(f"{'reused' if reused else 'would train':<12} {cell.name}" + (f"  [{what}]" if what != "reused" else ""))
    for name, exists in others:
        counts["reused" if exists else "train"] += 1
        print(f"{'reused' if exists else 'would train':<12} {name}  [a study kept while its JSON exists]")
    print(f"dry run: {counts['reused'] + counts['train']} cells, {counts['reused']} reused "
          f"({counts['legacy']} legacy records), {counts['train']} would train", flush=True)
    return counts


def run(cells: Iterable, *, root=None, force: bool = False, progress: bool | None = None,
        after: Callable[[Cell, dict, bool], None] | None = None, dry_run: bool = False) -> dict[str, dict]:
    """Run (or reuse) every cell in order; ``after(cell, results, cached)`` follows each one. Ctrl-C stops at
    the next epoch boundary and exits with status 130 after saying how to continue. ``dry_run``: print what
    would happen (:func:`preview`) and exit with status 0, so that the script writes nothing after it.
    ``progress`` None: a bar per cell on a terminal, else a line per finished run on stderr (a log file shows
    the runs as they end, :func:`qgnn.train.results.log_run`); False: silent."""
    from qgnn.train import Control, Interrupted

    if dry_run:
        preview(cells)
        raise SystemExit(0)
    control, out = Control(), {}
    with stop_on_sigint(control, "this epoch; the same command continues from there"):
        for cell in cells:
            cell.meta.setdefault("command", command_line())
            legacy = None if force else _legacy_cached(cell)
            try:
                if legacy is not None:  # as written by the script's loop before the harness: left as it is
                    results, cached = legacy, True
                else:
                    results, cached = run_cell(cell, path_of(cell.name), root=root, force=force, control=control,
                                               progress=progress)
            except Interrupted as e:
                print(f"{cell.name}: interrupted ({e}); run the same command again to continue", file=sys.stderr)
                raise SystemExit(130) from None
            if cached:
                print(f"{cell.name}: reused {path_of(cell.name)} (same configuration; --force retrains)", flush=True)
            out[cell.name] = results
            if after is not None:
                after(cell, results, cached)
    return out


def load(name: str) -> dict | None:
    """benchmarks/results/<name>.json, or None when it does not exist."""
    path = path_of(name)
    return json.loads(path.read_text()) if path.exists() else None


def table(head: list[str], rows: list[str]) -> str:
    """A Markdown table: the header, its rule and the (already formatted) rows."""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows])


def commands(cmds: Iterable[str]) -> str:
    """The "Commands:" list under a table: every distinct command, sorted, empty ones left out."""
    return "\n\nCommands:\n\n" + "\n".join(f"- `{c}`" for c in sorted(set(cmds)) if c)


def publish(section: str, markdown: str) -> None:
    """Replace ``section`` of the docs (see _report.update_section)."""
    update_section(section, markdown)
