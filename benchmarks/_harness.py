"""The loop every benchmark script shares: cell -> config -> run -> cache -> render.

A script names its experiments as cells (:class:`qgnn.grid.Cell`: a results name, a ``TrainConfig`` and, for a
MixQ-GNN cell, a ``SearchConfig``). :func:`run` trains each cell through :func:`qgnn.grid.run_cell`, the code
`qgnn compare` runs its cells with, so the benchmarks inherit its rules:

* a cell whose ``benchmarks/results/<name>.json`` records the configuration it would run now (resolved with
  today's recipes) is reused, not retrained; ``--force`` retrains it;
* a stopped cell (Ctrl-C) keeps its resume state beside its JSON, and the same command continues it;
* the JSON records the command that produced it (``"command"``, what the docs quote).

:func:`publish` replaces the script's section of docs/results.md; scripts rebuild it from the JSON files alone
(``--render``), so re-laying out a table never needs a rerun. :func:`table` and :func:`commands` are the
Markdown pieces the sections share.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS_DIR, command_line, update_section  # noqa: E402
from qgnn.grid import Cell, run_cell, stop_on_sigint  # noqa: E402

__all__ = ["Cell", "RESULTS_DIR", "add_arguments", "commands", "load", "publish", "run", "table"]


def add_arguments(p, *, render: bool = True) -> None:
    """The options every harness script has: --force (and --render, unless the script defines its own)."""
    p.add_argument("--force", action="store_true",
                   help="retrain cells whose results JSON already holds the same configuration")
    if render:
        p.add_argument("--render", action="store_true", help="only rebuild the docs section from the JSON files")


def path_of(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def run(cells: Iterable[Cell], *, root=None, force: bool = False, progress: bool | None = False,
        after: Callable[[Cell, dict, bool], None] | None = None) -> dict[str, dict]:
    """Run (or reuse) every cell in order; ``after(cell, results, cached)`` follows each one. Ctrl-C stops at
    the next epoch boundary and exits with status 130 after saying how to continue."""
    from qgnn.train import Control, Interrupted

    control, out = Control(), {}
    with stop_on_sigint(control, "this epoch; the same command continues from there"):
        for cell in cells:
            cell.meta.setdefault("command", command_line())
            try:
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
    """Replace ``section`` of docs/results.md (see _report.update_section)."""
    update_section(section, markdown)
