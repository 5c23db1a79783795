"""`qgnn search` (one λ: search, then train the found assignment) and `qgnn sweep` (several λ, a table,
JSON and a plot of accuracy against BitOPs reduction)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path

# MixQ-GNN's own logs (the figures): (test accuracy %, BitOPs reduction in MixQ's linear measure).
PUBLISHED_MIXQ = {
    "cora": [(81.58, 4.08), (77.72, 4.81), (68.68, 9.61)],
    "citeseer": [(68.97, 4.07), (66.52, 9.79)],
    # graph classification, λ 0.25: the logs give average widths (5.81, 6.76 bits); 32 / b is the linear measure
    "proteins": [(73.12, 32 / 5.81)],
    "imdb-binary": [(73.05, 32 / 6.76)],
}


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"lambda must be a finite number, got {text}")
    return v


def _bits(text: str) -> int:
    try:
        b = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a bit-width: {text!r}") from None
    if not 1 <= b <= 8:
        raise argparse.ArgumentTypeError(f"bit-widths must be in 1..8, got {b}")
    return b


def _recipe(key: str) -> str:
    """How the help shows a search default: the validated recipe's value (qgnn.recipes.SEARCH, torch-free)."""
    from qgnn.recipes import RECIPES, SEARCH

    def show(v):
        return " ".join(map(str, v)) if isinstance(v, (tuple, list)) else v

    # the molecules' own search recipe where it differs (read from the table: the lookup would import torch)
    mol = RECIPES["datasets"][("esol", "*")].search
    other = f"; molecules: {show(mol[key])}" if key in mol else ""
    return f"(default: {show(SEARCH.settings[key])}, the validated search recipe{other})"


def _common(p: argparse.ArgumentParser) -> None:
    from qgnn.catalog import DATASETS, MODELS

    p.add_argument("--dataset", default="cora", help="node or graph dataset, case-insensitive: "
                   + ", ".join(DATASETS["node"] + DATASETS["graph"]))
    p.add_argument("--model", default="gcn", help=f"{' | '.join(MODELS['node'])} (node); "
                                                  f"{' | '.join(MODELS['graph'])} (graph)")
    p.add_argument("--seeds", type=int, default=None, help="runs per fold (default: 10 node, 1 graph)")
    p.add_argument("--seed", type=int, default=0, help="first seed; run r uses seed + r")
    p.add_argument("--folds", type=int, default=None, help="graph tasks: how many of the 10 CV folds (default: 10)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the fixed-bit training (default: the model's recipe)")
    p.add_argument("--search-epochs", type=int, default=None, help="epochs of the search (default: --epochs)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="node tasks: seed nodes per sampled mini-batch (search and final training); graph tasks: "
                        "graphs per batch")
    p.add_argument("--fanout", type=int, nargs="+", default=None, metavar="N",
                   help="node tasks: search and train on sampled mini-batches, N in-neighbours per node at each "
                        "layer (-1 = all); unset: full batch")
    p.add_argument("--hidden", type=int, default=None, help="hidden width (default: the model's recipe)")
    p.add_argument("--candidates", type=_bits, nargs="+", default=None,
                   help=f"candidate bit-widths of the activation slots {_recipe('candidates')}")
    p.add_argument("--weight-candidates", type=_bits, nargs="+", default=None,
                   help=f"the weight slots' own candidate widths {_recipe('weight_candidates')}")
    p.add_argument("--penalty", default="bitops", help="bitops (E[BitOPs] / FP32) | memory (stored bits)")
    p.add_argument("--alpha-split", default="val", help="val (bi-level) | train (MixQ-GNN's single level)")
    p.add_argument("--alpha-lr", type=float, default=None, help=f"learning rate of the bit logits α "
                                                               f"{_recipe('alpha_lr')}")
    p.add_argument("--sampling", default="softmax", help="softmax (mixture) | gumbel (hard samples)")
    p.add_argument("--alpha-init", default="uniform", help="uniform | a candidate width to start near")
    p.add_argument("--final-method", default=None,
                   help=f"method of the fixed-bit training: qat | lsq | dq {_recipe('final_method')}")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps")
    p.add_argument("--root", default=None, help="data folder (default: $QGNN_DATA, else the user cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parsers(sub) -> None:
    from qgnn.cli import add_output_arguments

    p = sub.add_parser("search", help="MixQ-GNN: search a bit assignment, then train it")
    _common(p)
    p.add_argument("--lambda", dest="lam", type=_finite_float, default=None,
                   help=f"weight of the penalty {_recipe('lam')}")
    add_output_arguments(p, "runs/search-<dataset>-<model>-l<λ>.json", "search", "the selected fixed-bit model")
    p.set_defaults(func=cmd_search)
    p = sub.add_parser("sweep", help="MixQ-GNN over several λ: table, JSON and accuracy-vs-BitOPs plot")
    _common(p)
    # 0: no penalty (the widest widths); 1 and 50: the two plateaus of the search recipe on Cora GCN (W4 in the
    # first layer at ~63x BitOPs, W2 at ~126x; docs/notes/mixq.md), 50 being the recipe's own λ
    p.add_argument("--lambdas", type=_finite_float, nargs="+", default=[0.0, 1.0, 50.0],
                   help="the λ values, one search each")
    p.add_argument("--out-dir", default="runs/sweep", help="folder for the JSON files and the plot")
    p.add_argument("--no-fp32", action="store_true", help="skip the FP32 reference run")
    p.add_argument("--overwrite", action="store_true",
                   help="start every λ and the FP32 reference over, deleting the interrupted ones' resume states "
                        "(<out-dir>/*.json.state.pt; default: an interrupted one continues from its state)")
    p.set_defaults(func=cmd_sweep)


def _configs(args, lam):
    """(TrainConfig, SearchConfig) of the flags; a flag left unset takes the dataset's search recipe
    (qgnn.recipes.search_recipe: the general one, the molecules' own)."""
    from qgnn.recipes import search_recipe
    from qgnn.search.mixq import SearchConfig
    from qgnn.train import TrainConfig

    init = int(args.alpha_init) if args.alpha_init.isdigit() else args.alpha_init
    cfg = TrainConfig(dataset=args.dataset, model=args.model, seeds=args.seeds, seed=args.seed, folds=args.folds,
                      epochs=args.epochs, device=args.device, batch_size=args.batch_size, fanout=args.fanout,
                      hidden=args.hidden)
    given = {"lam": lam, "candidates": args.candidates, "weight_candidates": args.weight_candidates,
             "alpha_lr": args.alpha_lr, "final_method": args.final_method}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    # the dataset's search recipe (the molecules have their own) where a flag is unset
    given = {**search_recipe(args.dataset, args.model).settings, **given}
    sc = SearchConfig(penalty=args.penalty, search_epochs=args.search_epochs, alpha_split=args.alpha_split,
                      sampling=args.sampling, alpha_init=init, **given)
    return cfg, sc.validate()


def _row(results: dict) -> dict:
    """A sweep row: classification in accuracy (%), a regression task (qgnn.train.regression) in test RMSE / MAE
    and validation MAE, the target's units."""
    m, c = results["metrics"], results["cost_runs"]
    row = {"lambda": results["search"]["lam"]}
    if "test_rmse" in m:
        row.update(test_rmse=m["test_rmse"]["mean"], test_rmse_std=m["test_rmse"]["std"],
                   test_mae=m["test_mae"]["mean"], val_mae=m["val_mae"]["mean"])
    else:
        row.update(test_acc=m["test_acc"]["mean"] * 100, test_std=m["test_acc"]["std"] * 100,
                   val_acc=m["val_acc"]["mean"] * 100)
    row.update({"bitops_reduction": c["bitops_reduction"]["mean"],
                "bitops_reduction_linear": c["bitops_reduction_linear"]["mean"], "avg_bits": c["avg_bits"]["mean"],
                "search_s_per_epoch": results["timing"]["search_seconds_per_epoch"],
                "train_s_per_epoch": results["timing"]["seconds_per_epoch"]})
    return row


def _headline(row: dict) -> tuple[float, float]:
    """(test score, its std) of a sweep row: accuracy in %, or a regression row's test RMSE."""
    if "test_rmse" in row:
        return row["test_rmse"], row["test_rmse_std"]
    return row["test_acc"], row["test_std"]


def format_rows(rows: list[dict]) -> str:
    from qgnn.train.results import format_ratio

    regression = bool(rows) and "test_rmse" in rows[0]
    scores = ("test RMSE", "val MAE") if regression else ("test acc (%)", "val acc (%)")
    head = ("λ", *scores, "BitOPs red.", "linear red.", "avg bits", "search s/ep", "train s/ep")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lam = "fp32" if r["lambda"] is None else f"{r['lambda']:g}"
        test, std = _headline(r)
        nd = 3 if regression else 2
        val = r["val_mae"] if regression else r["val_acc"]
        lines.append(" | ".join([lam, f"{test:.{nd}f} ± {std:.{nd}f}", f"{val:.{nd}f}",
                                 format_ratio(r["bitops_reduction"]), format_ratio(r["bitops_reduction_linear"]),
                                 f"{r['avg_bits']:.2f}", f"{r['search_s_per_epoch']:.4f}",
                                 f"{r['train_s_per_epoch']:.4f}"]))
    return "\n".join(lines)


def cmd_search(args) -> int:
    from qgnn.grid import stop_on_sigint
    from qgnn.search.mixq import run_search
    from qgnn.train import Control
    from qgnn.train.config import check_names
    from qgnn.train.outputs import OutputWriteError
    from qgnn.train.results import format_table

    cfg, sc = _configs(args, args.lam)
    check_names(cfg)
    out = Path(args.out or f"runs/search-{cfg.dataset.lower()}-{cfg.model.lower()}-l{sc.lam:g}.json")
    control = Control()
    try:
        with stop_on_sigint(control):  # Ctrl-C: save the resume state at the epoch's end, then exit 130
            results = run_search(cfg, sc, root=args.root, out=out, save=args.save, resume=args.resume,
                                 overwrite=args.overwrite, progress=False if args.quiet else None, control=control)
    except OutputWriteError as e:  # the run finished: show it before the line saying where it went
        if e.results:
            print(format_table(e.results))
        raise
    print(format_table(results))
    print(format_rows([_row(results)]))
    print("assignment of the selected run: " + json.dumps(results["runs"][results["selected_run"]]["assignment"]))
    print(f"results: {out}" + (f"\ncheckpoint: {args.save}" if args.save else ""))
    return 0


def _write_summary(out_dir: Path, rows: list[dict], fp32: dict | None, dataset: str) -> dict:
    """sweep.json: the rows so far, the FP32 reference (when run) and the published points."""
    from qgnn.train.checkpoint import write_json

    if fp32 is not None and "test_rmse" in fp32["metrics"]:  # regression: the FP32 test RMSE
        fp32_score = {"fp32_test_rmse": fp32["metrics"]["test_rmse"]["mean"]}
    else:
        fp32_score = {"fp32_test_acc": fp32["metrics"]["test_acc"]["mean"] * 100 if fp32 else None}
    summary = {"rows": rows, **fp32_score,
               "fp32_s_per_epoch": fp32["timing"]["seconds_per_epoch"] if fp32 else None,
               "published_mixq": PUBLISHED_MIXQ.get(dataset.lower(), [])}
    write_json(out_dir / "sweep.json", summary)
    return summary


def cmd_sweep(args) -> int:
    from qgnn.grid import stop_on_sigint
    from qgnn.train import Control

    control = Control()
    with stop_on_sigint(control, "this epoch; the same command continues from there"):
        return _sweep(args, control)


@contextlib.contextmanager
def _continue_hint(what: str, out: Path):
    """A stopped λ (or FP32 reference) says how a sweep continues: the same command again (a sweep resumes by
    default and has no --resume flag, which the runners' own stop message names)."""
    from qgnn.train.runner import Interrupted

    try:
        yield
    except Interrupted as e:
        where = str(e).partition(";")[0]  # "stopped at run 1, epoch 2", without the runner's --resume advice
        raise Interrupted(f"{what}: {where}; run the same command again to continue from there (state in "
                          f"{out}.state.pt)") from None


def _sweep(args, control) -> int:
    from qgnn.env import check_device
    from qgnn.search.mixq import run_search
    from qgnn.train import run_experiment
    from qgnn.train.config import check_names
    from qgnn.train.outputs import check_dir_target

    out_dir = check_dir_target(args.out_dir, "--out-dir")  # before the first search starts
    check_device(args.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    fp32 = None
    # Unless --overwrite: a sweep stopped in a λ's search or in its FP32 reference continues it from its resume
    # state (a rerun never deletes one); a λ without a state starts afresh.
    resume = not args.overwrite
    quiet = False if args.quiet else None
    for lam in args.lambdas:
        cfg, sc = _configs(args, lam)
        check_names(cfg)
        out = out_dir / f"search-l{lam:g}.json"
        with _continue_hint(f"λ = {lam:g}", out):
            res = run_search(cfg, sc, root=args.root, out=out, resume=resume, overwrite=args.overwrite,
                             progress=quiet, control=control)
        rows.append(_row(res))
        print(format_rows(rows[-1:]))
        _write_summary(out_dir, rows, None, args.dataset)  # after every λ: a stopped sweep keeps its rows
    if not args.no_fp32:
        cfg, _ = _configs(args, 0.0)
        with _continue_hint("the FP32 reference", out_dir / "fp32.json"):
            fp32 = run_experiment(cfg, root=args.root, out=out_dir / "fp32.json", resume=resume,
                                  overwrite=args.overwrite, progress=quiet, control=control)
    summary = _write_summary(out_dir, rows, fp32, args.dataset)
    print(format_rows(rows))
    if fp32:
        print(f"FP32: {_fp32_score(summary)[0]:.{3 if 'fp32_test_rmse' in summary else 2}f}")
    png = plot_sweep(summary, out_dir / "sweep.png", title=f"{args.dataset} / {args.model}")
    plot = f"plot: {png}" if png else "plot: skipped (pip install matplotlib)"
    print(f"results: {out_dir / 'sweep.json'}\n{plot}")
    return 0


def _fp32_score(summary: dict) -> tuple[float | None, str]:
    """(FP32's test score or None, the score in words for the plot's axis)."""
    if "fp32_test_rmse" in summary or (summary["rows"] and "test_rmse" in summary["rows"][0]):
        return summary.get("fp32_test_rmse"), "test RMSE (lower is better)"
    return summary.get("fp32_test_acc"), "test accuracy (%)"


def plot_sweep(summary: dict, path: Path, title: str = "") -> Path | None:
    """Two panels: accuracy against qgnn's BitOPs reduction, and against the linear (MixQ-GNN) measure with
    MixQ-GNN's published points. Returns the path, or None without matplotlib."""
    from qgnn.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return None
    rows = summary["rows"]
    fp32, ylabel = _fp32_score(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "bitops_reduction", "BitOPs reduction (qgnn: MACs·b_a·b_w)"),
                           (axes[1], "bitops_reduction_linear", "reduction, linear in bits (MixQ-GNN's measure)")):
        xs = [r[key] for r in rows]
        ys, errs = zip(*(_headline(r) for r in rows), strict=True) if rows else ((), ())
        ax.errorbar(xs, ys, yerr=errs, fmt="o-", label="qgnn MixQ search", capsize=3)
        for x, y, r in zip(xs, ys, rows, strict=True):
            ax.annotate(f"λ={r['lambda']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if fp32 is not None:
            ax.scatter([1.0], [fp32], marker="*", s=120, color="k", label="FP32")
        if key == "bitops_reduction_linear" and summary.get("published_mixq"):
            pub = summary["published_mixq"]
            ax.scatter([p[1] for p in pub], [p[0] for p in pub], marker="x", color="r", label="MixQ-GNN (logs)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    from qgnn.train.checkpoint import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path
