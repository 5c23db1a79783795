"""MixQ-GNN search against FP32 and MixQ-GNN's own logs (issue: mixed precision).

Each group is what `qgnn sweep` runs (search, then fixed-bit training, per seed; GCN, 5 seeds), as cells of
the benchmark harness (benchmarks/_harness.py): one per λ, benchmarks/results/mixq-<name>/search-l<λ>.json, and
where the group asks for it the FP32 reference, fp32.json. A cell whose JSON holds the same experiment is
reused (results written by `qgnn sweep` before the harness included, matched on their recorded config and
search options), unless --force; a stopped cell continues; --dry-run lists the cells and what would happen to
each. Every search option a recipe would fill is given (GROUPS), so a group stays the experiment its name says.
After a group trained, its sweep.json (the rows, as `qgnn sweep` writes them) and sweep.png are rewritten. The
`mixq` section (docs/notes/mixq.md) is rebuilt from every sweep.json there. Reductions are given in both
measures: qgnn's BitOPs (MACs × b_a × b_w) and the linear one MixQ-GNN reports (its points are only
comparable with the latter).

    OMP_NUM_THREADS=1 python benchmarks/mixq.py --only cora-c248 cora-c48
    python benchmarks/mixq.py --render
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
import _report  # noqa: E402
from _report import RESULTS_DIR, update_section  # noqa: E402

SEEDS = 5
# The library's search defaults when the first groups ran (before the search recipe, qgnn.recipes.SEARCH):
# candidates {2, 4, 8} for every slot (no weight set of their own), α lr 0.01, plain QAT for the fixed-bit
# training. Each group gives every option the recipe would fill.
FORMER = dict(candidates=(2, 4, 8), weight_candidates=None, alpha_lr=0.01, final_method="qat")
C48 = dict(FORMER, candidates=(4, 8))
W248_A48_DQ = dict(C48, weight_candidates=(2, 4, 8), final_method="dq")
# the search recipe (qgnn.recipes.SEARCH) less its λ, which each group sweeps
RECIPE = dict(W248_A48_DQ, alpha_lr=0.05)
# name -> dataset, λ values, search options (qgnn.search.mixq.SearchConfig), FP32 reference run (`qgnn sweep`
# without --no-fp32)
GROUPS = {
    "cora-c248": dict(dataset="cora", lambdas=(0.1, 1.0), search=FORMER),
    "cora-c48": dict(dataset="cora", lambdas=(1.0,), search=C48),
    "citeseer-c48": dict(dataset="citeseer", lambdas=(1.0,), search=C48),
    # Degree-Quant for the fixed-bit training: at INT4 it keeps GCN Cora at 81.86 where plain QAT drops to 78.49
    "cora-c48-dq": dict(dataset="cora", lambdas=(0.1, 1.0, 3.0), search=dict(C48, final_method="dq"), fp32=True),
    "cora-c248-dq": dict(dataset="cora", lambdas=(0.1, 1.0), search=dict(FORMER, final_method="dq")),
    # weights {2, 4, 8}, activations {4, 8}: a 2-bit first-layer weight is what passes 8x (a 2-bit activation
    # costs 13-16 points, a 2-bit weight ~1 point: fixed-bit probe W2A4 in layer 0 = 81.18 ± 1.14 at 10.6x)
    "cora-w248-a48-dq": dict(dataset="cora", lambdas=(1.0, 3.0), search=W248_A48_DQ),
    # larger λ: λ = 1 and 3 kept W4 in the first layer (82.22 at 7.94x); λ = 10 moved its expected width to
    # 3.6-3.75 bits but the arg-max stayed 4 (81.70 at 7.95x): Adam steps α by ~alpha_lr whatever the
    # gradient's scale, so in 200 epochs α moves ~2 at 0.01; a faster α (0.05) lets the penalty finish the move
    "cora-w248-a48-dq-hi": dict(dataset="cora", lambdas=(10.0,), search=W248_A48_DQ),
    "cora-w248-a48-dq-alr": dict(dataset="cora", lambdas=(1.0, 10.0), search=dict(W248_A48_DQ, alpha_lr=0.05)),
    # α at 0.05 settles the first layer's weight firmly at 4 bits for λ = 1 and 10 (val loss prefers W4 in the
    # relaxed model); λ = 50 makes the penalty outweigh that
    "cora-w248-a48-dq-l50": dict(dataset="cora", lambdas=(50.0,), search=dict(W248_A48_DQ, alpha_lr=0.05)),
    "citeseer-w248-a48-dq": dict(dataset="citeseer", lambdas=(50.0,), search=dict(W248_A48_DQ, alpha_lr=0.05)),
    "citeseer-c48-dq": dict(dataset="citeseer", lambdas=(1.0,), search=dict(C48, final_method="dq")),
    # Graph classification (issue 27, item 2): GIN on the TU protocol (10 folds, one run each, the recipe's 350
    # epochs of fixed-bit training), the search recipe's options; λ 50 is the recipe (the plain `qgnn search`),
    # λ 0.25 MixQ-GNN's own value for its logged TU points (its penalty is scaled differently, so the value is a
    # starting point, not the same trade-off). The search phase runs 100 epochs: one search epoch costs about
    # 5x a training epoch (a validation batch per step and K grids per slot), and 350 would take 35 min a fold.
    "proteins-gin": dict(dataset="proteins", model="gin", seeds=1, folds=10, search_epochs=100,
                         lambdas=(0.25, 50.0), search=RECIPE),
    "imdb-binary-gin": dict(dataset="imdb-binary", model="gin", seeds=1, folds=10, search_epochs=100,
                            lambdas=(0.25, 50.0), search=RECIPE),
    # REDDIT-BINARY at the protocol of its other rows (results.md section 2: 3 folds of 100 epochs, where FP32 GIN
    # has 88.50 on the same folds): a search epoch takes about 40 s on one shared core, a fold about 1.5 hours
    "reddit-binary-gin": dict(dataset="reddit-binary", model="gin", seeds=1, folds=3, epochs=100, search_epochs=100,
                              lambdas=(0.25,), search=RECIPE),
}


def group_cells(name: str) -> list:
    """The cells of group ``name``: a search per λ (`qgnn sweep`'s search-l<λ>.json), then its FP32 reference
    (fp32.json) when the group has one."""
    from qgnn.search.mixq import SearchConfig
    from qgnn.train import TrainConfig

    g = GROUPS[name]
    cfg = TrainConfig(dataset=g["dataset"], model=g.get("model", "gcn"), seeds=g.get("seeds", SEEDS),
                      folds=g.get("folds"), epochs=g.get("epochs"))
    cells = [_harness.Cell(f"mixq-{name}/search-l{lam:g}", cfg,
                           search=SearchConfig(lam=lam, search_epochs=g.get("search_epochs"), **g["search"]),
                           legacy=True) for lam in g["lambdas"]]
    if g.get("fp32"):
        cells.append(_harness.Cell(f"mixq-{name}/fp32", cfg, legacy=True))
    return cells


def write_sweep(name: str) -> Path:
    """mixq-<name>/sweep.json and sweep.png from the group's results, as `qgnn sweep` writes them."""
    from qgnn.search.cli import _row, _write_summary, plot_sweep

    g, out_dir = GROUPS[name], _harness.path_of(f"mixq-{name}/sweep").parent
    # the λ values that have run (a group stopped part-way shows what it has; _sweep_current asks for every λ)
    done = [r for r in (_harness.load(f"mixq-{name}/search-l{lam:g}") for lam in g["lambdas"]) if r is not None]
    rows = [_row(r) for r in done]
    summary = _write_summary(out_dir, rows, _harness.load(f"mixq-{name}/fp32") if g.get("fp32") else None,
                             g["dataset"])
    plot_sweep(summary, out_dir / "sweep.png", title=f"{g['dataset']} / {g.get('model', 'gcn')}")
    return out_dir / "sweep.json"


def _sweep_current(name: str) -> bool:
    """Whether mixq-<name>/sweep.json has a row for every λ of the group (and the FP32 reference it asks for)."""
    summary = _harness.load(f"mixq-{name}/sweep")
    g = GROUPS[name]
    return (summary is not None and [r["lambda"] for r in summary["rows"]] == list(g["lambdas"])
            and (summary.get("fp32_test_acc") is not None) == bool(g.get("fp32")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, choices=sorted(GROUPS))
    p.add_argument("--root", default=None)
    _harness.add_arguments(p)
    args = p.parse_args(argv)
    if not args.render:
        groups = {name: group_cells(name) for name in args.only or GROUPS}
        trained = set()

        def after(cell, res, cached):
            group = cell.name.split("/")[0].removeprefix("mixq-")
            if not cached:
                trained.add(group)
            # after the group's last cell its rows are complete; a group whose cells were all reused keeps its
            # sweep.json unless it lacks a row
            if cell is groups[group][-1] and (group in trained or not _sweep_current(group)):
                print(f"{group}: {write_sweep(group)}", flush=True)

        _harness.run([c for cells in groups.values() for c in cells], root=args.root, force=args.force, after=after,
                     dry_run=args.dry_run)
    render()
    return 0


def render() -> None:
    lines = ["| sweep | λ | candidates | final training | runs | test acc (%) | val acc (%) | BitOPs reduction | "
             "linear reduction | search s/epoch | train s/epoch | search / FP32 epoch | command |", "|" + "---|" * 13]
    fp32_lines = []
    for d in sorted(RESULTS_DIR.glob("mixq-*/sweep.json")):
        name = d.parent.name.removeprefix("mixq-")
        summary = json.loads(d.read_text())
        for row in summary["rows"]:
            run = json.loads((d.parent / f"search-l{row['lambda']:g}.json").read_text())
            cands = run["search"]["candidates"]
            if run["search"].get("weight_candidates"):
                cands = f"W {run['search']['weight_candidates']} A {cands}"
            lines.append(
                f"| {name} | {row['lambda']:g} | {cands} | {run['search'].get('final_method', 'qat')} | "
                f"{_protocol(run)} | "
                f"{row['test_acc']:.2f} ± {row['test_std']:.2f} | "
                f"{row['val_acc']:.2f} | {row['bitops_reduction']:.1f}x | {row['bitops_reduction_linear']:.2f}x | "
                f"{row['search_s_per_epoch']:.3f} | {row['train_s_per_epoch']:.3f} | "
                f"{_ratio(row['search_s_per_epoch'], summary.get('fp32_s_per_epoch'))} | "
                f"`OMP_NUM_THREADS=1 python benchmarks/mixq.py --only {name}` |")
        if summary.get("fp32_test_acc") is not None:
            fp32_lines.append(f"- {name}: FP32 (same sweep) {summary['fp32_test_acc']:.2f}, "
                              f"{summary['fp32_s_per_epoch']:.3f} s / epoch")
    text = "\n".join(lines) + (
        "\n\nRuns: seeds (node tasks, GCN, search epochs = training epochs = the recipe's 200) or CV folds "
        "(graph tasks, GIN: a 100-epoch search, then the training epochs of the runs column, the recipe's 350 or "
        "REDDIT-BINARY's 100), α on the validation loss "
        "(bi-level), then fixed-bit training with the method in its column, selection on validation. "
        "MixQ-GNN's logs (linear measure): Cora 81.58 at 4.08x, 77.72 at 4.81x, 68.68 at 9.61x; "
        "CiteSeer 68.97 at 4.07x, 66.52 at 9.79x; its TU points with λ 0.25 are average widths (PROTEINS 73.12 at "
        "5.81 bits, IMDB-BINARY 73.05 at 6.76 bits; 32 / b: 5.51x, 4.73x; its FP32 70.46 and 75.25; "
        "REDDIT-BINARY 89.34). A uniform INT8 model is 16x in qgnn's BitOPs and 4x in the "
        "linear measure; INT4 64x / 8x. The search / FP32 ratio divides the search epoch by the FP32 epoch "
        "of the same sweep (the FP32 runs follow the searches in that process).")
    if _harness.load("mixq-reddit-binary-gin/search-l0.25") is None:
        text += (" REDDIT-BINARY: no fold run yet: its GIN training epoch takes 10-30 s on one shared core "
                 "(results.md section 2) and a search epoch about 3.4 training epochs (PROTEINS: 5.8 against 1.7 s), "
                 "so one fold of 100 search and 350 training epochs would take 2 to 4 hours, ten folds a day or "
                 "more; the group `reddit-binary-gin` runs 3 folds at the 100 epochs of the other REDDIT-BINARY "
                 "rows.")
    if fp32_lines:
        text += "\n\n" + "\n".join(fp32_lines)
    plots = [p for p in (pareto_plot(d) for d in ("cora", "citeseer", *CLI_NAMES)) if p]
    if plots:
        text += ("\n\nAll rows against MixQ-GNN's logged points (left: the linear measure; right: qgnn's BitOPs, "
                 "where MixQ-GNN logged no point), the Pareto front of the qgnn rows as a line: "
                 + ", ".join(f"[{p.name}]({p.name})" for p in plots) + ".")
    update_section("mixq", "## Mixed precision: MixQ-GNN search\n\n" + text)
    render_tu()


# MixQ-GNN's own FP32 on its logged TU points (the points: qgnn.search.cli.PUBLISHED_MIXQ), and its REDDIT-BINARY
# accuracy, logged without a width
MIXQ_FP32 = {"proteins": 70.46, "imdb-binary": 75.25}
MIXQ_NO_WIDTH = {"reddit-binary": 89.34}
# the datasets as the docs spell them on the command line
CLI_NAMES = {"proteins": "PROTEINS", "imdb-binary": "IMDB-BINARY", "reddit-binary": "REDDIT-BINARY"}


def plain_command(name: str, lam: float) -> str | None:
    """The `qgnn search` command that runs group ``name``'s cell at λ ``lam``: its dataset and model, and only the
    flags where the group differs from the library's defaults. Checked, not assumed: the command's parsed
    configuration must have the cell's fingerprint (qgnn.grid.fingerprint); None where it does not (a group that
    sets an option the command line would have to spell out)."""
    from qgnn.cli import build_parser
    from qgnn.grid import fingerprint
    from qgnn.recipes import search_recipe
    from qgnn.search.cli import _configs

    g = GROUPS[name]
    cell = next(c for c in group_cells(name) if c.search is not None and c.search.lam == lam)
    model = g.get("model", "gcn")
    args = ["search", "--dataset", CLI_NAMES.get(g["dataset"], g["dataset"]), "--model", model]
    if lam != search_recipe(g["dataset"], model).settings["lam"]:
        args += ["--lambda", f"{lam:g}"]
    if g.get("search_epochs"):
        args += ["--search-epochs", str(g["search_epochs"])]
    if g.get("seeds", SEEDS) != 1 or not g.get("folds"):  # node tasks: the groups' seeds are spelled out
        args += ["--seeds", str(g.get("seeds", SEEDS))]
    if g.get("folds") not in (None, 10):
        args += ["--folds", str(g["folds"])]
    if g.get("epochs"):
        args += ["--epochs", str(g["epochs"])]
    parsed = build_parser().parse_args(args)
    cfg, sc = _configs(parsed, parsed.lam)
    want, got = fingerprint(cell), fingerprint(_harness.Cell(cell.name, cfg, search=sc))
    for fp in (want, got):  # dataset names are case-insensitive (qgnn.data), the configs keep the spelling given
        fp["config"]["dataset"] = fp["config"]["dataset"].lower()
    return "qgnn " + " ".join(args) if want == got else None


def render_tu() -> None:
    """The `mixq-tu` section of docs/results.md: the graph-classification groups' rows (GIN, CV folds) beside
    MixQ-GNN's logged points and our FP32 GIN on the same folds (baseline-gin-<dataset>.json), with the plain
    command of each row."""
    from qgnn.search.cli import PUBLISHED_MIXQ
    from qgnn.train.results import summarize

    rows, notes, cost_ratio = [], [], {}
    for name, g in GROUPS.items():
        if not g.get("folds"):
            continue
        ds = g["dataset"]
        base = _harness.load(f"baseline-{g.get('model', 'gcn')}-{ds}")
        pub = "; ".join(f"{acc:.2f} at {32 / red:.2f} bits, λ 0.25 (its FP32 {MIXQ_FP32[ds]:.2f})"
                        for acc, red in PUBLISHED_MIXQ.get(ds, [])) or (f"{MIXQ_NO_WIDTH[ds]:.2f}"
                                                                      if ds in MIXQ_NO_WIDTH else "")
        for lam in g["lambdas"]:
            run = _harness.load(f"mixq-{name}/search-l{lam:g}")
            if run is None:
                notes.append(f"{CLI_NAMES.get(g['dataset'], g['dataset'])} λ {lam:g}")
                continue
            fp32 = _fp32_folds(base, run)
            accs = {r["fold"]: r["test_acc"] for r in run["runs"]}
            paired = [100 * (accs[f] - fp32[f]) for f in accs if f in fp32]
            acc = run["metrics"]["test_acc"]
            cost = run["cost_runs"]
            complete = len(paired) == len(accs)
            fp_txt = f"{100 * summarize([fp32[f] for f in accs])['mean']:.2f}" if complete else ""
            d = summarize(paired)
            delta = f"{d['mean']:+.2f} ± {d['std']:.2f}" if complete else ""
            t = run["timing"]
            cost_ratio[ds] = (t["search_seconds_per_epoch"], t["seconds_per_epoch"])
            cmd = plain_command(name, lam)
            rows.append(
                f"| {CLI_NAMES.get(g['dataset'], g['dataset'])} | {lam:g} | {_protocol(run)} | "
                f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} | {fp_txt} | {delta} | "
                f"{cost['avg_bits']['mean']:.2f} | {cost['bitops_reduction_linear']['mean']:.2f}x | "
                f"{cost['bitops_reduction']['mean']:.1f}x | {pub} | "
                + (f"`{cmd}`" if cmd else f"`OMP_NUM_THREADS=1 python benchmarks/mixq.py --only {name}`") + " |")
    head = ["dataset", "λ", "runs", "test acc (%)", "FP32 GIN, same folds (%)", "paired Δ (points)", "avg bits",
            "linear reduction", "BitOPs reduction", "MixQ-GNN (logged)", "command"]
    plots = [p for p in (_report.RESULTS_MD.parent / f"mixq-pareto-{d}.png" for d in CLI_NAMES) if p.exists()]
    text = ("### MixQ-GNN on graph classification (GIN, CV folds)\n\n"
            "The search recipe (activations {4, 8}, weights {2, 4, 8}, α lr 0.05, Degree-Quant training of the "
            "found widths) on the TU protocol: one run per fold, a 100-epoch search, then the recipe's 350 epochs of "
            "fixed-bit training (REDDIT-BINARY: 3 folds of 100 epochs, the protocol of its other rows above), "
            "selection on validation. λ 0.25 is MixQ-GNN's own value for its logged TU points "
            "(its penalty is scaled differently, so the same λ is a starting point, not the same trade-off); λ 50 is "
            "the recipe's (the plain `qgnn search`). Average bits and reductions: mean over the folds' selected "
            "models; the linear measure is MixQ-GNN's, BitOPs qgnn's (docs/cost.md). The paired Δ is against FP32 "
            "GIN on the same folds, seeds and epochs (the FP32 rows above). `--search-epochs 100` differs from the "
            "default (the search runs as many epochs as the training, here 350): a search epoch costs "
            + ", ".join(f"{search / train:.1f} ({CLI_NAMES.get(d, d)})" for d, (search, train) in cost_ratio.items())
            + " training epochs (a validation batch per step and a grid per candidate), and 350 of them would take "
            + ", ".join(f"{350 * search / 60:.0f} ({CLI_NAMES.get(d, d)})" for d, (search, _) in cost_ratio.items())
            + " minutes a fold.\n\n"
            + _harness.table(head, rows) if rows else "### MixQ-GNN on graph classification\n\nNo fold run yet.")
    if notes:
        text += "\n\nNot run yet (CPU time on the shared machine): " + ", ".join(notes) + "."
    if plots:
        text += ("\n\nPareto plots (left: the linear measure, MixQ-GNN's points as crosses; right: qgnn's BitOPs; the "
                 "uniform-width and A2Q rows of the same folds and epochs beside the search rows where they have run): "
                 + ", ".join(f"[{p.name}]({p.name})" for p in plots) + ". Every sweep: "
                 "[notes/mixq.md](notes/mixq.md).")
    update_section("mixq-tu", text)


def _fp32_folds(base: dict | None, run: dict) -> dict:
    """FP32 test accuracy by fold from the baselines' run ``base`` (baseline-<model>-<dataset>.json) where it has
    ``run``'s protocol (the same epochs), so a search row is paired fold by fold; {} where it has not."""
    same = base is not None and base["config"]["epochs"] == run["config"]["epochs"]
    return {r["fold"]: r["test_acc"] for r in base["runs"]} if same else {}


def _fp32_reference(run: dict) -> float | None:
    """Mean FP32 test accuracy (%) on ``run``'s folds (a graph task's search row), or None where the baselines'
    run lacks one of them or has another protocol."""
    from qgnn.train.results import summarize

    c = run["config"]
    fp32 = _fp32_folds(_harness.load(f"baseline-{c['model']}-{c['dataset'].lower()}"), run)
    folds = [r["fold"] for r in run["runs"]]
    if not folds or any(f not in fp32 for f in folds):
        return None
    return 100 * summarize([fp32[f] for f in folds])["mean"]


def pareto_plot(dataset: str) -> Path | None:
    """docs/mixq-pareto-<dataset>.png: every sweep row of ``dataset`` (test accuracy, ± std, against the reduction),
    the front of rows no other row beats on both axes, FP32, and MixQ-GNN's logged points, in two panels: the
    linear measure (MixQ-GNN's: 32 / average bits, where its points can stand) and qgnn's BitOPs (docs/cost.md;
    MixQ-GNN logged no BitOPs). FP32 is the sweep's own run (node tasks) or FP32 GIN on the same folds (graph
    tasks, baseline-<model>-<dataset>.json). None without matplotlib (qgnn.plotting)."""
    from qgnn.plotting import pyplot
    from qgnn.search.cli import PUBLISHED_MIXQ

    plt = pyplot()
    if plt is None:
        return None

    pts, fp32, models, protocols = [], [], set(), set()
    for d in sorted(RESULTS_DIR.glob("mixq-*/sweep.json")):
        summary = json.loads(d.read_text())
        for row in summary["rows"]:
            run = json.loads((d.parent / f"search-l{row['lambda']:g}.json").read_text())
            if run["config"]["dataset"].lower() == dataset:
                pts.append((row["bitops_reduction_linear"], row["bitops_reduction"], row["test_acc"], row["test_std"],
                            f"λ {row['lambda']:g}"))
                models.add(run["config"]["model"].upper())
                protocols.add(_protocol(run))
                ref = summary.get("fp32_test_acc")
                fp32.append(ref if ref is not None else _fp32_reference(run))
    if not pts:
        return None
    fp32 = [f for f in fp32 if f is not None]
    others = _other_points(dataset, protocols)
    pub = PUBLISHED_MIXQ.get(dataset, [])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, col, measure in ((axes[0], 0, "linear in bits (MixQ-GNN's measure)"), (axes[1], 1, "BitOPs (qgnn's)")):
        xs = [p[col] for p in pts]
        _pareto_panel(ax, xs, pts, protocols)
        for kind, fmt, color, label in (("uniform", "s", "0.45", "qgnn uniform widths"),
                                        ("a2q", "D", "C2", "qgnn A2Q (learnt per-node widths)")):
            got = others[kind]
            if got:
                ax.errorbar([u[col] for u in got], [u[2] for u in got], yerr=[u[3] for u in got], fmt=fmt,
                            color=color, capsize=3, alpha=0.8, label=f"{label}, same protocol")
                xs = xs + [u[col] for u in got]
        named = pts + others["uniform"] + others["a2q"]
        for p in (named if len(named) <= 6 else []):  # names where they stay legible
            ax.annotate(p[4], (p[col], p[2]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if col == 0:
            if pub:
                ax.scatter([p[1] for p in pub], [p[0] for p in pub], marker="x", s=60, color="r",
                           label="MixQ-GNN (logs)")
                xs = xs + [p[1] for p in pub]
            if pub and dataset in MIXQ_FP32:
                ax.scatter([1.0], [MIXQ_FP32[dataset]], marker="*", s=120, color="r", label="MixQ-GNN's FP32")
                xs.append(1.0)
            if dataset in MIXQ_NO_WIDTH:
                ax.axhline(MIXQ_NO_WIDTH[dataset], color="r", ls=":", label="MixQ-GNN (logged, width not given)")
        if fp32:
            ax.scatter([1.0], [fp32[0]], marker="*", s=120, color="k",
                       label="FP32, same folds" if any("folds" in p for p in protocols) else "FP32")
            xs.append(1.0)
        _log2_axis(ax, xs)
        ax.set_xlabel(f"reduction, {measure}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(f"{dataset}: {', '.join(sorted(models))}, mixed precision")
    fig.tight_layout()
    path = _report.RESULTS_MD.parent / f"mixq-pareto-{dataset}.png"
    from qgnn.train.checkpoint import atomic_write  # as qgnn.compare.plot: no torn file if the write fails

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path


def _other_points(dataset: str, protocols: set) -> dict:
    """The other methods' rows on ``dataset`` whose protocol is the sweep rows' only one, by kind: "uniform"
    (benchmarks/quant.py, quant-<model>-<dataset>-<method><bits>.json: the fixed widths a search has to beat)
    and "a2q" (benchmarks/a2q.py's learnt per-node widths, a2q-<model>-<dataset>.json); each row as (linear
    reduction, BitOPs reduction, test acc %, std, name). Rows without the linear measure (written before it
    existed) are left out."""
    out = {"uniform": [], "a2q": []}
    if len(protocols) != 1:
        return out
    paths = {"uniform": RESULTS_DIR.glob(f"quant-*-{dataset}-*.json"), "a2q": RESULTS_DIR.glob(f"a2q-*-{dataset}.json")}
    for kind, found in paths.items():
        for path in sorted(found):
            r = json.loads(path.read_text())
            c, cost, acc = r["config"], r.get("cost", {}), r["metrics"]["test_acc"]
            if (c["dataset"].lower() != dataset or _protocol(r) not in protocols
                    or "bitops_reduction_linear" not in cost):
                continue
            name = "a2q" if kind == "a2q" else f"{c['method']} {c['bits']}"
            out[kind].append((cost["bitops_reduction_linear"], cost["bitops_reduction"], 100 * acc["mean"],
                              100 * acc["std"], name))
    return out


def _pareto_panel(ax, xs: list, pts: list, protocols: set) -> None:
    """The qgnn rows at reductions ``xs`` (accuracy ± std from ``pts``) and their front (both axes maximised;
    equal points both stay on it)."""
    from qgnn.compare.table import pareto_optimal

    ys, err = [p[2] for p in pts], [p[3] for p in pts]
    on = pareto_optimal(list(zip(xs, ys, strict=True)))
    front = sorted((x, y) for x, y, o in zip(xs, ys, on, strict=True) if o)
    ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, alpha=0.6,
                label=f"qgnn MixQ search + fixed-bit training ({', '.join(sorted(protocols))})")
    ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="C0", label="Pareto front of the search rows")


def _log2_axis(ax, xs: list) -> None:
    """A log2 x axis with a labelled power of two on each side of every point: a front inside one octave
    (4x-8x) would otherwise show no tick label at all."""
    ax.set_xscale("log", base=2)
    lo, hi = math.floor(math.log2(min(xs))), math.ceil(math.log2(max(xs)))
    ticks = [2.0 ** k for k in range(lo, max(hi, lo + 1) + 1)]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(ticks[0] / 1.15, ticks[-1] * 1.15)


def _protocol(run: dict) -> str:
    """How many runs a row averages: "5 seeds" (node tasks) or "10 folds, 350 epochs" (graph tasks, one run per
    fold, and the fixed-bit training's epochs)."""
    c = run["config"]
    folds = len({r.get("fold") for r in run.get("runs", [])} - {None})
    return f"{folds} folds, {c['epochs']} epochs" if folds else f"{c.get('seeds')} seeds"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
