"""Graph regression on molecules (issue 27, item 1): MoleculeNet ESOL, FreeSolv, Lipophilicity with GIN / GCN.

Every experiment is a cell of the benchmark harness (benchmarks/_harness.py): it runs through
`qgnn.train.run_experiment` exactly as `qgnn train --dataset esol --model gin --method qat --bits 8` does (the
molecule recipe of qgnn.recipes: 5 seeded random 80 / 10 / 10 splits, 100 epochs, L1 on standardised targets,
selection on validation MAE), or, for the MixQ-GNN cell, through `run_search` as `qgnn search` does (the search
recipe, λ 50, then Degree-Quant training of the found widths; the search phase is shortened to
``--search-epochs``, 30 by default, and says so). Results: benchmarks/results/molecules/<dataset>-<model>-<method>.json;
the `molecules` section of docs/results.md is rebuilt from them (``--render``).

Methods: fp32, qat 8, dq 8, dq 4, lsq 4, a2q, dq 4 + GPF-LoRAP and the search (the molecules' recipe, λ 5 with
weights {4, 8}: ``search-w48``; the general recipe, λ 50, and λ 5 with weights {2, 4, 8}: ``search``,
``search-lam5``, by default on esol-gin only, a check of the molecules' recipe). Quantized cells keep
the readout heads' pooled input in float (the molecule recipe; why: the docs section). Targets (issue 27): FP32 GIN
inside the range MoleculeNet reports for graph networks on the random split; INT8 (qat, dq) within 5 % of FP32's RMSE;
INT4 dq within 15 %; the search at >= 4x linear reduction within 10 %.

    OMP_NUM_THREADS=1 python benchmarks/molecules.py --only esol-gin
    OMP_NUM_THREADS=1 python benchmarks/molecules.py --only esol-gin freesolv-gin --methods fp32 qat8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

DATASETS = ("esol", "freesolv", "lipo")
MODELS = ("gin", "gcn")
EXPERIMENTS = [f"{d}-{m}" for m in MODELS for d in DATASETS]
METHODS = {"fp32": ("fp32", None), "qat8": ("qat", 8), "dq8": ("dq", 8), "dq4": ("dq", 4), "search": ("search", None),
           "search-lam5": ("search", None), "search-w48": ("search", None), "lsq4": ("lsq", 4),
           "a2q": ("a2q", None), "dq4-gpf-lorap": ("dq", 4)}
# cells with a prompt (its library defaults, trained jointly with the host)
PROMPTS = {"dq4-gpf-lorap": "gpf-lorap"}
# SearchConfig settings of the search cells ({}: the general search recipe's, λ 50 and weights {2, 4, 8}, tuned
# on Cora's cross-entropy). On the standardised L1 loss λ 50 drives nearly every weight to 2 bits and activation
# to 4 (about 10x linear reduction, beyond INT4's 8x); λ 5 still keeps most weights at 2 bits; weights {4, 8} bound
# the search between INT8 (4x linear) and INT4 (8x), and are the molecules' search recipe since (qgnn.recipes).
# Each is a cell of its own, its settings explicit (a SearchConfig built here has the general recipe), compared on
# validation.
SEARCH_SETTINGS = {"search": {}, "search-lam5": {"lam": 5.0}, "search-w48": {"lam": 5.0, "weight_candidates": (4, 8)}}
# The general recipe's two search cells check the molecules' own search recipe (weights {4, 8}, chosen with sum
# pooling on ESOL GIN's validation figures) at today's mean pooling, on ESOL GIN only: on the other datasets and GCN
# they are not run by default (--methods names them), since each costs the time of a dq cell and answers no target.
GENERAL_SEARCH, GENERAL_SEARCH_ON = ("search", "search-lam5"), ("esol-gin",)
# Test RMSE on MoleculeNet's random split (Wu et al., "MoleculeNet: a benchmark for molecular machine learning",
# Chem. Sci. 2018, Table 3 / Fig. 9, physical chemistry): graph convolutions (GC) and MPNN, mean over random splits.
PUBLISHED = {"esol": {"GC": 0.97, "MPNN": 0.58}, "freesolv": {"GC": 1.40, "MPNN": 1.15},
             "lipo": {"GC": 0.655, "MPNN": 0.719}}
# relative to FP32's test RMSE
TOLERANCE = {"qat8": 0.05, "dq8": 0.05, "dq4": 0.15, **{m: 0.10 for m in SEARCH_SETTINGS}}  # no target: lsq4, a2q,
# dq4 + GPF-LoRAP (the methods beside the targeted ones)
MIN_LINEAR_REDUCTION = 4.0


def name_of(exp: str, method: str) -> str:
    return f"molecules/{exp}-{method}"


def default_methods(exp: str) -> list[str]:
    """The methods a plain run trains for ``exp``: every method, the general search recipe's only where it is
    checked (GENERAL_SEARCH_ON)."""
    return [m for m in METHODS if m not in GENERAL_SEARCH or exp in GENERAL_SEARCH_ON]


def cells(exps, methods, search_epochs: int, root_kw: dict):
    """The harness cells of experiments ``exps`` with ``methods`` (None: each one's :func:`default_methods`)."""
    from qgnn.search.mixq import SearchConfig
    from qgnn.train import TrainConfig

    out = []
    for exp in exps:
        ds, model = exp.split("-")
        for m in methods or default_methods(exp):
            method, bits = METHODS[m]
            if method == "search":
                cfg = TrainConfig(dataset=ds, model=model, **root_kw)
                out.append(_harness.Cell(name_of(exp, m), cfg,
                                         SearchConfig(search_epochs=search_epochs, **SEARCH_SETTINGS[m])))
            else:
                prompt = {"kind": PROMPTS[m]} if m in PROMPTS else {}
                cfg = TrainConfig(dataset=ds, model=model, method=method, bits=bits, prompt=prompt, **root_kw)
                out.append(_harness.Cell(name_of(exp, m), cfg))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, choices=EXPERIMENTS)
    p.add_argument("--methods", nargs="*", default=None, choices=list(METHODS),
                   help="default: every method, the general search recipe's (search, search-lam5) on esol-gin only")
    p.add_argument("--search-epochs", type=int, default=30, help="epochs of the MixQ search phase")
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default=None)
    p.add_argument("--sizes", action="store_true",
                   help="print each split's largest training and test molecule (heavy atoms) and stop")
    _harness.add_arguments(p)
    args = p.parse_args(argv)
    if args.sizes:
        print_sizes(args.root)
        return 0
    if not args.render:
        todo = cells(args.only or EXPERIMENTS, args.methods, args.search_epochs, {"device": args.device})

        def after(cell, res, cached):
            m = res["metrics"]
            print(cell.name, f"test RMSE {m['test_rmse']['mean']:.3f} ± {m['test_rmse']['std']:.3f}",
                  f"MAE {m['test_mae']['mean']:.3f}", flush=True)

        _harness.run(todo, root=args.root, force=args.force, dry_run=args.dry_run, after=after)
    render()
    return 0


def print_sizes(root=None) -> None:
    """Per dataset and split of the recipe: heavy atoms of the largest training and test molecule, and how many
    test molecules are larger than every training one (what a summed readout has to extrapolate to)."""
    import torch

    from qgnn.data import load_dataset
    from qgnn.recipes import dataset_recipe

    for ds_name in DATASETS:
        ds = load_dataset(ds_name, root=root)
        sizes = torch.tensor([g.num_nodes for g in ds.dataset])
        for i, s in enumerate(ds.folds(k=dataset_recipe(ds_name).train["folds"])):
            tr, te = sizes[s.train], sizes[s.test]
            print(f"{ds_name} split {i}: largest training molecule {int(tr.max())}, largest test molecule "
                  f"{int(te.max())}, test molecules larger than every training one: {int((te > tr.max()).sum())}")


def _verdict(m: str, rel: float, lin: float | None) -> str:
    ok = rel <= TOLERANCE[m] and (m not in SEARCH_SETTINGS or (lin is not None and lin >= MIN_LINEAR_REDUCTION))
    return "met" if ok else "not met"


SUM_POOLING = "molecules/sum-pooling"  # the first recipe's results (GIN's TU readout, sum pooling), kept as evidence
FREESOLV_100 = "molecules/freesolv-100-epochs"  # FreeSolv at the 100 epochs of the other sets, before its 200


def _table_rows(folder: str, with_targets: bool) -> tuple[list[str], set, list[str]]:
    """(table rows, commands, missing cells) of the results under benchmarks/results/<folder>/."""
    rows, cmds, missing = [], set(), []
    for exp in EXPERIMENTS:
        fp = _harness.load(f"{folder}/{exp}-fp32")
        ds = exp.split("-")[0]
        for m in METHODS:
            r = _harness.load(f"{folder}/{exp}-{m}")
            if r is None:
                if m in default_methods(exp):
                    missing.append(f"{exp} {m}")
                continue
            met, cost = r["metrics"], r["cost"]
            rmse = met["test_rmse"]["mean"]
            rel = (rmse / fp["metrics"]["test_rmse"]["mean"] - 1) if fp else None
            lin = cost.get("bitops_reduction_linear")
            if m in SEARCH_SETTINGS:
                red = r["cost_runs"]["bitops_reduction"]["mean"]
                lin = r["cost_runs"]["bitops_reduction_linear"]["mean"]
                bits = r["cost_runs"]["avg_bits"]["mean"]
                w = r["search"].get("weight_candidates") or r["search"]["candidates"]
                label = (f"MixQ search (λ {r['search']['lam']:g}, weights {{{', '.join(map(str, w))}}}, "
                         f"{r['search']['search_epochs']} ep) + dq")
            else:
                red, bits = cost.get("bitops_reduction"), cost.get("avg_bits")
                c = r["config"]
                label = "fp32" if c["method"] == "fp32" else f"{c['method']} {c['bits']}"
                label += f" + {PROMPTS[m]}" if m in PROMPTS else ""
                label += " (start width; learnt per node)" if c["method"] == "a2q" else ""
            if not with_targets:
                target = ""
            elif m == "fp32":
                lo, hi = sorted(PUBLISHED[ds].values())
                target = (f"in [{lo}, {hi}]: " + ("met" if lo <= rmse <= hi else "below the range (better)"
                                                   if rmse < lo else "not met")) if exp.endswith("gin") else ""
            elif m not in TOLERANCE:
                target = "no target"
            else:
                target = (f"<= +{TOLERANCE[m]:.0%}" + (f", >= {MIN_LINEAR_REDUCTION:g}x linear" if m in SEARCH_SETTINGS
                                                        else "") + (f": {_verdict(m, rel, lin)}" if rel is not None
                                                                    else ""))
            red_txt = f"{red:.1f}x ({lin:.1f}x)" if red is not None and lin is not None else "1x"
            rows.append(
                f"| {exp} | {label} | {len(r['runs'])} | {rmse:.3f} ± {met['test_rmse']['std']:.3f} | "
                f"{met['test_mae']['mean']:.3f} ± {met['test_mae']['std']:.3f} | {met['val_mae']['mean']:.3f} | "
                f"{'' if rel is None else f'{rel:+.1%}'} | {red_txt} | {bits if bits is None else f'{bits:.2f}'} | "
                f"{r['timing']['seconds_per_epoch']:.3f} | {target} |")
            if r.get("command"):
                cmds.add(r["command"])
    return rows, cmds, missing


def _grouped(missing: list[str]) -> str:
    """"esol-gin (qat8, dq8); lipo-gin (...)" from ["esol-gin qat8", ...]."""
    by: dict[str, list[str]] = {}
    for item in missing:
        exp, m = item.split(" ")
        by.setdefault(exp, []).append(m)
    return "; ".join(f"{exp} ({', '.join(ms)})" if len(ms) < len(default_methods(exp)) else f"{exp} (every method)"
                     for exp, ms in by.items())


def _freesolv_epochs_probe() -> str:
    """The 200-epoch FreeSolv probe (benchmarks/results/molecules/probes/, `qgnn train ... --epochs 200
    --patience 200`): a sentence with its validation and test figures beside the 100-epoch cells', or ""."""
    got = {m: _harness.load(f"molecules/freesolv-gin-{m}") for m in ("fp32", "dq4")}
    base = {m: _harness.load(f"{FREESOLV_100}/freesolv-gin-{m}") for m in ("fp32", "dq4")}
    if None in got.values() or None in base.values() or got["fp32"]["config"]["epochs"] != 200:
        return ""

    def m(d, k):
        return d["metrics"][k]["mean"]

    gap = m(got["dq4"], "test_rmse") / m(got["fp32"], "test_rmse") - 1
    return (f" **Why FreeSolv trains 200 epochs**: at 100, an epoch of about 8 steps, GIN dq 4 had its best "
            "validation epoch at 94-98 on three of five splits. At 200 epochs (first run as a probe, `qgnn train "
            "--dataset freesolv --model gin [--method dq --bits 4] --epochs 200 --patience 200`, the same 5 "
            f"splits; a copy in `benchmarks/results/molecules/probes/`) both fit better on validation: MAE FP32 "
            f"{m(base['fp32'], 'val_mae'):.3f} -> {m(got['fp32'], 'val_mae'):.3f}, dq 4 "
            f"{m(base['dq4'], 'val_mae'):.3f} -> {m(got['dq4'], 'val_mae'):.3f}, so FreeSolv's recipe is 200 "
            f"epochs (`qgnn.recipes`). Test RMSE there: FP32 {m(got['fp32'], 'test_rmse'):.3f}, dq 4 "
            f"{m(got['dq4'], 'test_rmse'):.3f} ({100 * gap:+.1f} %).{_freesolv_int8()} The 100-epoch rows are in "
            "their own table "
            f"below (`benchmarks/results/{FREESOLV_100}/`); the FreeSolv cells not yet rerun at 200 are in the "
            "list of cells not run.")


# GCN dq 4's probes on ESOL (benchmarks/results/molecules/probes/esol-gcn-dq4-<name>.json, each with its
# `qgnn train --config` file): one slot of every conv at 8 bits, the rest at 4; "noprot": Degree-Quant without its
# protective masking (`--method-opt p_min=0 --method-opt p_max=0`). The 5-split probes, then the 2-split ones.
GCN_PROBES_5 = {"edge8": "`edge` (the coefficients)", "xw8": "`xw`", "xwedge8": "`xw` and `edge`"}
GCN_PROBES_2 = {"xw8": "`xw`", "weight8": "`weight`", "input8": "`input`", "noprot": "no protective masking"}


def _gcn_probe() -> str:
    """Why GCN dq 4 misses on molecules: its train error against FP32's and GIN's, the slot probes on ESOL
    (GCN_PROBES_5 / _2) and the widths the MixQ search gives GCN's slots: a paragraph, or "" without the files."""
    load = _harness.load
    cell, fp = load("molecules/esol-gcn-dq4"), load("molecules/esol-gcn-fp32")
    probes = {k: load(f"molecules/probes/esol-gcn-dq4-{k}") for k in {**GCN_PROBES_5, **GCN_PROBES_2}}
    if None in (cell, fp) or None in probes.values():
        return ""

    def m(d, k, n=None):  # mean over the first n runs (splits 0..n-1), or all
        runs = d["runs"][:n] if n else d["runs"]
        return sum(r[k] for r in runs) / len(runs)

    fits = []
    for ds, label in (("esol", "ESOL"), ("freesolv", "FreeSolv"), ("lipo", "Lipophilicity")):
        q, f = load(f"molecules/{ds}-gcn-dq4"), load(f"molecules/{ds}-gcn-fp32")
        if q and f:
            fits.append(f"{label} {m(q, 'train_mae'):.3f} against {m(f, 'train_mae'):.3f}")
    gin, gin_fp = load("molecules/esol-gin-dq4"), load("molecules/esol-gin-fp32")
    gin_txt = (f"; GIN dq 4 on ESOL: {m(gin, 'train_mae'):.3f} against {m(gin_fp, 'train_mae'):.3f}"
               if gin and gin_fp else "")
    five = "; ".join(
        f"{label}: train MAE {m(p, 'train_mae'):.3f}, validation MAE {m(p, 'val_mae'):.3f}, test RMSE "
        f"{m(p, 'test_rmse'):.3f} ({100 * (m(p, 'test_rmse') / m(fp, 'test_rmse') - 1):+.1f} %), "
        f"{p['cost']['bitops_reduction']:.1f}x BitOPs" for k, label in GCN_PROBES_5.items() for p in [probes[k]])
    two = "; ".join(f"{label} {m(p, 'train_mae', 2):.3f} / {m(p, 'val_mae', 2):.3f} at "
                    f"{p['cost']['bitops_reduction']:.1f}x" for k, label in GCN_PROBES_2.items() for p in [probes[k]])
    extra = 100 * (cell["cost"]["bitops_reduction"] / probes["xw8"]["cost"]["bitops_reduction"] - 1)
    fs, fs_cell, fs_fp = (load(f"molecules/{n}") for n in ("probes/freesolv-gcn-dq4-xw8", "freesolv-gcn-dq4",
                                                           "freesolv-gcn-fp32"))
    freesolv = (f" On FreeSolv (5 splits), `xw` at 8 bits: train MAE {m(fs, 'train_mae'):.3f}, validation MAE "
                f"{m(fs, 'val_mae'):.3f}, test RMSE {m(fs, 'test_rmse'):.3f} "
                f"({100 * (m(fs, 'test_rmse') / m(fs_fp, 'test_rmse') - 1):+.1f} % against FP32), where dq 4 has "
                f"{m(fs_cell, 'train_mae'):.3f}, {m(fs_cell, 'val_mae'):.3f} and {m(fs_cell, 'test_rmse'):.3f} "
                f"({100 * (m(fs_cell, 'test_rmse') / m(fs_fp, 'test_rmse') - 1):+.1f} %)."
                if None not in (fs, fs_cell, fs_fp) else "")
    widths = {}  # slot -> [layers at 8 bits, layers]
    for ds in ("esol", "freesolv", "lipo"):
        r = load(f"molecules/{ds}-gcn-search-w48")
        for a in (r or {}).get("search", {}).get("assignments", []):
            for name, slots in a.items():
                if name.startswith("convs."):
                    for slot, b in slots.items():
                        w = widths.setdefault(slot, [0, 0])
                        w[0], w[1] = w[0] + (b == 8), w[1] + 1
    search = (" The MixQ search (weights {4, 8}) finds the same slot: over the three sets' 5 splits it puts `xw` at "
              f"8 bits in {widths['xw'][0]} of {widths['xw'][1]} GCN layers ("
              + ", ".join(f"`{k}` {w[0]} of {w[1]}" for k, w in sorted(widths.items()) if k != "xw")
              + "), so its GCN rows sit near INT4's BitOPs with a smaller error than dq 4."
              if "xw" in widths else "")
    closed = 100 * (m(cell, "train_mae") - m(probes["xwedge8"], "train_mae")) / (
        m(cell, "train_mae") - m(fp, "train_mae"))
    return ("\n\n**Why GCN at 4 bits misses** (probes, not adopted). GCN dq 4's gap is one of fit, not of "
            "generalisation: its train MAE is far above FP32's (" + ", ".join(fits) + gin_txt + "). GCN "
            "quantizes the features X·W that its aggregation sums (the `xw` slot) and the normalised coefficients "
            "`1 / sqrt(d_i d_j)` (the `edge` slot; a molecule's atoms have 1-4 neighbours, so at 4 bits over "
            "[0, 1], a step of about 1/15, coefficients of 0.2-0.5 move by up to about 17 %). One slot of every "
            "GCN layer at 8 bits, the rest at 4, on ESOL (`qgnn train --config` with `slot_bits`; configs and "
            "results in `benchmarks/results/molecules/probes/esol-gcn-dq4-*`), 5 splits, against dq 4's train MAE "
            f"{m(cell, 'train_mae'):.3f}, validation MAE {m(cell, 'val_mae'):.3f}, test RMSE "
            f"{m(cell, 'test_rmse'):.3f} and {cell['cost']['bitops_reduction']:.1f}x: {five}. On the first two "
            f"splits (train / validation MAE; dq 4 {m(cell, 'train_mae', 2):.3f} / {m(cell, 'val_mae', 2):.3f}, "
            f"FP32 {m(fp, 'train_mae', 2):.3f} / {m(fp, 'val_mae', 2):.3f}): {two}. So the aggregation's "
            f"operands at 4 bits cost much of the fit: `xw` and `edge` at 8 bits close {closed:.0f} % of "
            f"the train-MAE gap to FP32, and `xw` at 8 bits costs {extra:.1f} % more BitOPs (the "
            "aggregation's MACs are per edge and channel, the linear map's per node and channel pair)." + freesolv
            + search
            + " The dq 4 rows stay uniform 4 bits, what their target names.")


def _search_check() -> str:
    """The three search settings on ESOL GIN at mean pooling (the table's rows), by the selection metric: a
    sentence, or "" until all three have run."""
    rows = {k: _harness.load(f"molecules/esol-gin-{k}") for k in ("search", "search-lam5", "search-w48")}
    if None in rows.values():
        return ""
    val = {k: r["metrics"]["val_mae"]["mean"] for k, r in rows.items()}
    best = min(val, key=val.get)
    names = {"search": "the general recipe", "search-lam5": "λ 5 alone", "search-w48": "weights {4, 8} with λ 5"}
    return (" At mean pooling (the rows above) the check gives validation MAE " + ", ".join(
        f"{val[k]:.3f} ({names[k]})" for k in rows) + f": {names[best]} "
        + ("stays the best on validation, so the recipe stands." if best == "search-w48" else
           "is now the best on validation; the recipe was chosen with sum pooling and is not changed here."))


def _freesolv_int8() -> str:
    """A sentence on GIN's 8-bit FreeSolv cells at 200 epochs: validation MAE and test RMSE against FP32's."""
    fp = _harness.load("molecules/freesolv-gin-fp32")
    parts = []
    for key, label in (("qat8", "qat 8"), ("dq8", "dq 8")):
        r = _harness.load(f"molecules/freesolv-gin-{key}")
        if fp is None or r is None:
            continue
        v, vf = r["metrics"]["val_mae"]["mean"], fp["metrics"]["val_mae"]["mean"]
        t = r["metrics"]["test_rmse"]["mean"] / fp["metrics"]["test_rmse"]["mean"] - 1
        parts.append(f"{label} validation MAE {v:.3f} against FP32's {vf:.3f}, test RMSE {100 * t:+.1f} %")
    return (" At 8 bits: " + "; ".join(parts) + " (about 64 test molecules a split: a few points on test are "
            "within the splits' spread when validation is level).") if parts else ""


# Cells whose seconds include time the process did not run: (experiment, method) -> seconds it was stopped (kill
# -STOP while a CI run had both cores; the stop's length by the clock)
PAUSED = {("lipo-gcn", "search-w48"): 730}


def _timing_notes() -> str:
    """A line per cell of :data:`PAUSED` that has run: its stop's share of the seconds per epoch (the stop spread
    over the cell's epochs in proportion to their recorded time)."""
    lines = []
    for (exp, m), paused in PAUSED.items():
        r = _harness.load(name_of(exp, m))
        if r is None:
            continue
        t = r["timing"]
        lines.append(f"- {exp} {m}: its seconds include a stop of the process of about {paused} s (kill -STOP while "
                     f"a CI run had both cores), about {t['seconds_per_epoch'] * paused / t['total_seconds']:.1f} s "
                     f"of its {t['seconds_per_epoch']:.3f} s an epoch.")
    return "\n\n" + "\n".join(lines) if lines else ""


def render() -> None:
    head = ["dataset / model", "method", "runs", "test RMSE", "test MAE", "val MAE", "RMSE vs FP32",
            "BitOPs red. (linear)", "avg bits", "s / epoch", "target"]
    rows, cmds, missing = _table_rows("molecules", True)
    sum_rows, _, _ = _table_rows(SUM_POOLING, False)
    fs_rows, _, _ = _table_rows(FREESOLV_100, True)
    pub = "; ".join(f"{d}: GC {v['GC']}, MPNN {v['MPNN']}" for d, v in PUBLISHED.items())
    sum_table = ("\n\n**The first recipe: sum pooling** (GIN's TU readout; these files are in "
                 f"`benchmarks/results/{SUM_POOLING}/`, the same splits and training). The paragraphs below quote "
                 "them; the recipe moved to mean pooling on ESOL's validation figures and Lipophilicity's "
                 "validation MAE (see *Why mean pooling*).\n\n" + _harness.table(head, sum_rows)) if sum_rows else ""
    fs_table = ("\n\n**FreeSolv at 100 epochs** (mean pooling, the other sets' budget; these files are in "
                f"`benchmarks/results/{FREESOLV_100}/`, the same splits). FreeSolv's recipe moved to 200 epochs "
                "on validation MAE (see *Why FreeSolv trains 200 epochs*).\n\n" + _harness.table(head, fs_rows)
                ) if fs_rows else ""
    _harness.publish(
        "molecules",
        "## 8. Graph regression on molecules (MoleculeNet)\n\n"
        "ESOL (log solubility, log mol/L), FreeSolv (hydration free energy, kcal/mol) and Lipophilicity (logD) from "
        "the staged MoleculeNet CSVs (data README section 6), through PyG's `MoleculeNet` loader; one-hot atom "
        "features (PyG's 9 columns, 177 features: an OGB AtomEncoder as the first linear map), no bond features. "
        "Protocol (the molecule recipe, `qgnn.recipes`): 5 seeded random 80 / 10 / 10 splits (MoleculeNet's "
        "recommended split for these sets; split i = `default_rng([0, i])`), targets standardised on each "
        "split's training molecules, L1 loss, Adam lr 1e-3, batch 64, 100 epochs (FreeSolv 200), dropout 0, the "
        "readout averaging "
        "each layer's node features (mean pooling), the epoch with the lowest validation MAE; errors in the targets' "
        "units, mean ± population std over the 5 splits. Quantized rows keep the readout heads' input (each "
        "layer's pooled node features) in float, their weights quantized: see *Why the pooled readout input stays "
        "float* below. The search rows: λ 5 with weights {4, 8} (the molecules' search recipe), the general recipe "
        "(activations {4, 8}, weights {2, 4, 8}, λ 50) and λ 5 alone (these two on ESOL GIN only: a check of the "
        "molecules' recipe, chosen with sum pooling, at mean pooling), each with a search phase of "
        "30 epochs, then Degree-Quant training of the found widths. BitOPs "
        "and average bits: the selected run "
        "(search: mean over runs), per molecule (docs/cost.md). Seconds per epoch: one CPU thread, shared machine.\n\n"
        f"Published (MoleculeNet, Wu et al. 2018, test RMSE on the random split, from the paper's figures): {pub}. "
        "The GIN FP32 target is the range between those two graph networks. Those models use bond features "
        "(MPNN) and were tuned per dataset; ours is GIN / GCN without bond features at one recipe. "
        "ZINC (`--dataset zinc`, PyG's `ZINC(subset=True)`) is supported for users with network, but no ZINC "
        "figure was run here: only its validation and test molecules could be staged.\n\n"
        + (_harness.table(head, rows) + _timing_notes() + _harness.commands(cmds) if rows
           else "No run of the current recipe yet.")
        + (f"\n\nNot run yet with this recipe (CPU time on the shared machine): {_grouped(missing)}; "
           "`OMP_NUM_THREADS=1 python benchmarks/molecules.py` runs them (finished cells are reused)."
           if missing else "")
        + fs_table
        + sum_table
        + "\n\n**Why mean pooling** (the molecule recipe's `model_kwargs`). A sum over a molecule's atoms grows with "
        "its size, and a test molecule larger than every training one is an extrapolation. Lipophilicity's split 3 "
        "holds two test molecules of up to 115 heavy atoms where its largest training molecule has 72; with sum "
        "pooling its FP32 test RMSE was 1.171, against 0.60-0.79 on the other splits (`sum-pooling/lipo-gin-fp32`; "
        "the molecule sizes: `python benchmarks/molecules.py --sizes`). "
        "GIN FP32, the same 5 splits, sum against mean pooling: ESOL validation MAE 0.648 against 0.482 and RMSE "
        "0.922 against 0.671 (test RMSE 0.958 and 0.722); Lipophilicity validation MAE (the selection metric) "
        "0.525 against 0.495 (test RMSE 0.789 and 0.626), but validation RMSE 0.769 against 0.872: on three "
        "splits the mean-pooled model misses a few validation molecules by more (the fp32 rows of the two tables, "
        "their val RMSE in the results files). OGB's and chemprop's molecule baselines average too. GIN on the TU "
        "datasets keeps its sum."
        + "\n\n**Why the pooled readout input stays float** (the molecule recipe, for every quantized method; "
        "measured with sum pooling, not measured again since). A summed readout input grows with the molecule's "
        "size (ESOL: 1 to 55 heavy atoms). With it quantized per tensor, as every other "
        "activation, its range (QAT: EMA of batch maxima; Degree-Quant: the 0.999 percentile) sits near a typical "
        "batch's largest molecule: larger molecules are clipped in training and at test, "
        "and the model fits the training molecules worse. QAT 8 with the readout input quantized "
        f"(`benchmarks/results/{SUM_POOLING}/esol-gin-qat8-readout-quantized.json`, same 5 "
        "splits): train MAE 0.702 against FP32's 0.578, validation RMSE 0.989 against 0.922 (+7.3 %), test RMSE "
        "1.150 ± 0.245 (+20 %, one split at 1.61). With it float: train MAE 0.585, validation RMSE "
        "0.947 (+2.7 %); the recipe was chosen on those validation figures. The heads are about 500 "
        "multiply-accumulates per molecule against about 640k in the convolutions, so BitOPs barely move (15.96x to "
        "15.92x for QAT 8); the cost report counts the float inputs at 32 bits (average bits 8.74 instead of 8.00). "
        "A user's own `quant.overrides` replace the recipe's."
        + "\n\n**The search on regression** (sum pooling). The general search recipe (λ 50, weights {2, 4, 8}; "
        "chosen on Cora's cross-entropy, docs/notes/mixq.md) puts most GIN MLP weights at 2 bits (ternary codes) "
        "on ESOL, and the Degree-Quant training of those widths underfits (train MAE 0.970 against dq 4's 0.743; "
        "validation MAE 0.940 against 0.737). λ 5 keeps most weights at 2 bits and does not help (validation MAE "
        "0.955). Leaving 2 bits out of the weight candidates (`--weight-candidates 4 8 --lambda 5`), the search "
        "lands between INT8 and INT4 (6.9x linear): its validation MAE / RMSE, 0.713 / 0.959, are better than "
        "dq 4's 0.737 / 1.010, and its test RMSE was +10.4 % against FP32. Chosen on those validation "
        "figures, weights {4, 8} with λ 5 are the molecules' own search recipe (`qgnn.recipes`, the molecule "
        "dataset recipe's `search`): the plain `qgnn search --dataset esol --model gin --search-epochs 30` gives "
        "that row; the other search rows set the general recipe's values explicitly." + _search_check()
        + "\n\n**FreeSolv** (642 molecules: about 64 per validation / test split, split std of the test RMSE "
        "0.2-0.36). With sum pooling, on validation QAT 8 was level with FP32 (RMSE 1.395 against 1.424, MAE 1.005 "
        "against 0.993) but its test RMSE was +12.8 %; dq 8 +5.8 % on test; dq 4 underfit at this recipe's budget "
        "(100 epochs of about 8 steps: train MAE 1.096 against FP32's 0.782) and was +32.8 %. With mean pooling "
        "at 100 epochs (the FreeSolv table below): qat 8 +2.1 %, dq 8 +0.1 %, the search +9.1 %, and dq 4 +18.5 % on "
        "test, outside its "
        "15 % target, where on validation its MAE is 0.826 against FP32's 0.787 (+5 %): with about 64 test "
        "molecules a split, the split std of the test RMSE (0.28-0.38) is larger than the gap."
        + _freesolv_epochs_probe()
        + _gcn_probe()
        + "\n\nThe plain commands give these rows (the recipe carries the protocol, the mean pooling and the float "
        "readout input): `qgnn train --dataset esol --model gin` (FP32), `qgnn train --dataset esol --model gin "
        "--method qat --bits 8`, `... --method dq --bits 4`, `qgnn search --dataset esol --model gin --search-epochs "
        "30` (the weights {4, 8} row; `--lambda 50 --weight-candidates 2 4 8` for the general recipe's row, "
        "`--lambda 5 --weight-candidates 2 4 8` for λ 5 alone). `qgnn eval` of an exported "
        "regression model reports MAE and RMSE in the target's units.")


if __name__ == "__main__":
    raise SystemExit(main())
