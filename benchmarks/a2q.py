"""A2Q (Zhu et al., ICLR 2023): learned per-node bit-widths (issue: mixed precision), beside FP32.

Every experiment is a cell of the benchmark harness (benchmarks/_harness.py): it runs through
`qgnn.train.run_experiment`, exactly as `qgnn train --dataset D --model M --method a2q --bits 4` does (the
recipe's epochs, validation-based selection; graph tasks: the nearest-neighbour strategy, set by the recipe),
and writes benchmarks/results/a2q-<name>.json; the FP32 run of the same protocol beside it writes
a2q-<name>-fp32.json. A cell whose JSON holds the same configuration is reused (unless --force); a stopped one
continues. The `a2q` section of docs/results.md is rebuilt from those files.

Reported: test accuracy; average bits of all quantized operands, of the activations (node features, what
A2Q learns per node) and of the weights; feature compression = 32 / activation bits (the A2Q paper's
"compression" counts the node features); model bytes (weights + every per-node / per-channel table).

    OMP_NUM_THREADS=1 python benchmarks/a2q.py --only gcn-cora
    OMP_NUM_THREADS=1 python benchmarks/a2q.py --only gin-reddit-binary --folds 3 --epochs 100
    OMP_NUM_THREADS=1 python benchmarks/a2q.py --only gin-proteins gin-imdb-binary
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _report import pct  # noqa: E402

EXPERIMENTS = {
    "gcn-cora": dict(dataset="cora", model="gcn", seeds=5),
    "gcn-citeseer": dict(dataset="citeseer", model="gcn", seeds=5),
    "gin-reddit-binary": dict(dataset="reddit-binary", model="gin"),
    # the TU rows of results.md section 2 at the full protocol (10 folds, the recipe's 350 epochs)
    "gin-proteins": dict(dataset="proteins", model="gin"),
    "gin-imdb-binary": dict(dataset="imdb-binary", model="gin"),
}
TARGETS = {"gcn-cora": ">= 80 at <= 2.5 avg bits", "gin-reddit-binary": ">= 88"}
PUBLISHED = {"gcn-cora": "A2Q abstract: 1.70 bits average, up to 18.6x compression",
             "gin-reddit-binary": "88.85 (MixQ-GNN's rerun of A2Q)"}


def _met(name: str, acc: float, bits: float) -> str:
    if name == "gcn-cora":
        return " (met)" if acc >= 80 and bits <= 2.5 else " (not met)"
    if name == "gin-reddit-binary":
        return " (met)" if acc >= 88 else " (not met)"
    return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, choices=sorted(EXPERIMENTS))
    p.add_argument("--bits", type=int, default=4, help="A2Q's starting / largest width")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--folds", type=int, default=None, help="graph tasks: run only the first N folds")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default=None)
    p.add_argument("--render", action="store_true", help="only rebuild the docs section")
    _harness.add_arguments(p, render=False)
    args = p.parse_args(argv)
    if not args.render:
        from qgnn.train import TrainConfig

        cells = []
        for name in args.only or list(EXPERIMENTS):
            kw = dict(EXPERIMENTS[name])
            if args.seeds is not None:
                kw["seeds"] = args.seeds
            cfg = TrainConfig(**kw, method="a2q", bits=args.bits, folds=args.folds, epochs=args.epochs,
                              device=args.device)
            cells += [fp32_cell(name, cfg), _harness.Cell(f"a2q-{name}", cfg)]
        _harness.run(cells, root=args.root, force=args.force, dry_run=args.dry_run,
                     after=lambda cell, res, cached: print(cell.name, pct(res["metrics"]["test_acc"]), flush=True))
    render()
    return 0


def fp32_cell(name: str, cfg) -> _harness.Cell:
    """The FP32 run beside A2Q cell ``name``: the baselines' result (benchmarks/baselines.py,
    baseline-<model>-<dataset>.json) where it holds this very configuration, so that one FP32 protocol trains once
    (REDDIT-BINARY GIN: 100 epochs of 12-15 s a fold); else a cell of its own, a2q-<name>-fp32."""
    fp = dataclasses.replace(cfg, method="fp32", bits=None)
    shared = _harness.Cell(f"baseline-{cfg.model}-{cfg.dataset}", fp, legacy=True)
    return shared if _harness.status(shared)[0].startswith("reused") else _harness.Cell(f"a2q-{name}-fp32", fp)


def _fp32_beside(name: str, r: dict) -> dict | None:
    """The FP32 results of A2Q results ``r``'s protocol (same runs and epochs): its own cell's, else the
    baselines' (:func:`fp32_cell`); None when neither ran it."""
    c = r["config"]
    for fp in (_harness.load(f"a2q-{name}-fp32"), _harness.load(f"baseline-{c['model']}-{c['dataset']}")):
        if fp and len(fp["runs"]) == len(r["runs"]) and fp["config"]["epochs"] == c["epochs"]:
            return fp
    return None


def _reduction(cost: dict) -> str:
    """qgnn's BitOPs reduction and MixQ-GNN's linear one (docs/cost.md), or "not recorded" for a file written
    before the cost model counted them."""
    if "bitops_reduction" not in cost or "bitops_reduction_linear" not in cost:
        return "not recorded"
    return f"{cost['bitops_reduction']:.1f}x ({cost['bitops_reduction_linear']:.1f}x)"


def render() -> None:
    head = ["experiment", "protocol", "test acc (%)", "FP32 same protocol (%)",
            "avg bits (all / activations / weights)", "feature compression", "BitOPs reduction (linear)",
            "model bytes (FP32 / A2Q)",
            "s / epoch (FP32)", "target", "published"]
    rows, cmds = [], set()
    for name in EXPERIMENTS:
        r = _harness.load(f"a2q-{name}")
        if r is None:
            continue
        fp = _fp32_beside(name, r)  # another protocol is not comparable
        c, m, cost = r["config"], r["metrics"], r["cost"]
        proto = f"{c['seeds']} seeds" if c["task"] == "node" else f"{len(r['runs'])} of 10 folds"
        proto += f", {c['epochs']} epochs"
        acc, act = 100 * m["test_acc"]["mean"], cost["avg_bits_activations"]
        fp_txt = pct(fp["metrics"]["test_acc"]) if fp else "not run"
        fp_t = f" ({fp['timing']['seconds_per_epoch']:.3f})" if fp else ""
        rows.append(
            f"| {name} | {proto} | {pct(m['test_acc'])} | {fp_txt} | {cost['avg_bits']:.2f} / {act:.2f} / "
            f"{cost['avg_bits_weights']:.2f} | {32 / act:.1f}x | {_reduction(cost)} | "
            f"{cost['model_bytes_fp32']} / {cost['model_bytes']} "
            f"| {r['timing']['seconds_per_epoch']:.3f}{fp_t} | {TARGETS.get(name, '')}"
            f"{_met(name, acc, cost['avg_bits']) if name in TARGETS else ''} | {PUBLISHED.get(name, '')} |")
        cmds.add(r.get("command", ""))
    _harness.publish(
        "a2q",
        "## A2Q: learned per-node bit-widths\n\n"
        "A2Q at its defaults (docs/methods.md: starting width 4, memory penalty toward 2 average bits on the "
        "node features, local gradient on); validation-based selection; mean ± population std. Average bits "
        "are element-weighted over the quantized operands of one forward (cost model, docs/cost.md); feature "
        "compression is 32 / activation bits; model bytes count the weights at their widths plus every "
        "per-node and per-channel step / width table. Average bits, BitOPs and bytes are those of the selected "
        "run (graph tasks: per graph, over the dataset).\n\n"
        + _harness.table(head, rows) + _harness.commands(cmds))


if __name__ == "__main__":
    raise SystemExit(main())
