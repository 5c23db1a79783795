"""Run the grid of `qgnn compare` and report it (see the package docstring)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from qgnn.compare.plot import plot_compare
from qgnn.compare.spec import build_cells, grid_from_args
from qgnn.compare.table import format_table, mark_pareto, row_of, scores_for
from qgnn.data.registry import is_regression
from qgnn.env import check_device
from qgnn.grid import cell_epochs, load_cached, run_cell
from qgnn.train.checkpoint import write_json
from qgnn.train.outputs import OutputWriteError, check_dir_target, write_outputs
from qgnn.train.runner import Interrupted

COMPARE_FORMAT = "qgnn-compare/1"


def _summary(grid, rows: list[dict], done: int, total: int) -> dict:
    from qgnn.env import environment

    return {"format": COMPARE_FORMAT, "complete": done == total,
            "config": {"dataset": grid.dataset, "model": grid.model, "task": grid.task,
                       "methods": [m.label for m in grid.methods], "prompts": grid.prompts, "seeds": grid.seeds,
                       "seed": grid.seed, "folds": grid.folds, "epochs": grid.epochs,
                       "search_epochs": grid.search_epochs, "device": grid.device, "k": grid.k,
                       "pretrained": grid.pretrained},
            "pareto": "validation score vs BitOPs reduction (pareto_bitops) and vs model bytes (pareto_bytes)",
            "rows": rows, "env": environment()}


def _write_progress(grid, summary: dict) -> None:
    """compare.json while the grid runs (after each cell, and when stopped). A failed write is one error line:
    the finished cells are in their own files, so the same command continues once the folder is writable."""
    path = grid.out_dir / "compare.json"
    try:
        write_json(path, summary)
    except OSError as e:
        raise OutputWriteError(f"could not write --out-dir {path} ({e.strerror or e}); the finished cells are kept "
                               f"in {grid.cells_dir}: run the same command again once it is writable (they are "
                               "reused)", summary) from None


def run(args, control) -> int:
    grid = grid_from_args(args)
    cells = build_cells(grid)  # every cell validated before anything trains
    check_device(grid.device)  # a mixq cell (run_search) would otherwise meet a missing CUDA mid-grid
    # the outputs' folders, before anything trains (qgnn.train.outputs: one line naming --out-dir)
    check_dir_target(grid.out_dir, "--out-dir")
    check_dir_target(grid.cells_dir, "--out-dir")
    grid.cells_dir.mkdir(parents=True, exist_ok=True)
    scores = scores_for(grid.task, grid.k, regression=is_regression(grid.dataset))
    paths = {cell.name: grid.cells_dir / f"{cell.name}.json" for cell, _, _ in cells}
    todo = [c for c, _, _ in cells if args.force or load_cached(c, paths[c.name]) is None]
    bar = tqdm(total=sum(cell_epochs(c) for c in todo), unit="ep", dynamic_ncols=True,
               disable=True if args.quiet else None, desc="compare")
    rows, trained = [], 0
    try:
        for cell, spec, prompt in cells:
            bar.set_description(f"compare {cell.name}")
            try:
                results, cached = run_cell(cell, paths[cell.name], root=args.root, force=args.force,
                                           control=control, bar=bar)
            except Interrupted:
                _write_progress(grid, _summary(grid, rows, len(rows), len(cells)))
                raise Interrupted(f"stopped in cell {cell.name} ({len(rows)} of {len(cells)} cells finished); run the "
                                  "same command again to continue: finished cells are reused and this one resumes "
                                  "from its saved state") from None
            trained += not cached
            rows.append(row_of(cell.name, spec, prompt, results, scores, paths[cell.name]))
            # after every cell: a stopped comparison keeps its finished rows
            _write_progress(grid, _summary(grid, rows, len(rows), len(cells)))
    finally:
        bar.close()
    mark_pareto(rows, scores)
    summary = _summary(grid, rows, len(rows), len(cells))
    print(f"{grid.dataset} / {grid.model}: {len(cells)} cells, {trained} trained, {len(cells) - trained} cached "
          f"({grid.cells_dir})")
    print(format_table(rows, scores, grid.task))
    sys.stdout.flush()  # the table stays on screen above an error line, should a write below fail
    title = f"{grid.dataset} / {grid.model}"
    out, pngs = grid.out_dir / "compare.json", []
    # qgnn.train.outputs.write_outputs: a write that fails goes to a rescue folder, the other one is still
    # written, and one OutputWriteError line says where each went
    write_outputs([("--out-dir", out, lambda path: write_json(path, summary)),
                   ("--out-dir", grid.out_dir / "compare.png",
                    lambda path: pngs.append(plot_compare(rows, scores, path, title=title)))], summary)
    png = pngs[-1]
    print(f"results: {out}")
    print(f"plot: {png}" if png else "plot: skipped (pip install matplotlib)")
    sys.stdout.flush()
    return 0



