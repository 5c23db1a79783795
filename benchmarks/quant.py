"""Quantization-aware training against FP32 (issue: quantization core): accuracy, BitOPs, bytes, time.

Every experiment is a cell of the benchmark harness (benchmarks/_harness.py): it runs through
`qgnn.train.run_experiment`, exactly as `qgnn train --method M --bits B` does, and writes
benchmarks/results/quant-<name>.json, reused while it holds the same configuration (--force retrains; a stopped
run continues). The `quant` section of docs/results.md is
rebuilt from every such JSON: each quantized result sits beside the FP32 result of the same dataset,
model and protocol (seeds, folds, epochs), found among all results JSON (baseline-*.json included),
and the difference is only reported when both exist.

    OMP_NUM_THREADS=1 python benchmarks/quant.py --group int8 --seeds 5
    OMP_NUM_THREADS=1 python benchmarks/quant.py --only gcn-cora-dq4 gcn-cora-qat4 gcn-cora-fp32
    OMP_NUM_THREADS=1 python benchmarks/quant.py --group reddit --folds 3 --epochs 100
    OMP_NUM_THREADS=1 python benchmarks/quant.py --group tu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _report import RESULTS_DIR, pct  # noqa: E402

NODE = [(m, d) for m in ("gcn", "gat", "gin") for d in ("cora", "citeseer")]


def _name(model, dataset, method, bits):
    return f"{model}-{dataset}-{method}{bits or ''}"


# name -> (group, TrainConfig kwargs)
EXPERIMENTS: dict[str, tuple[str, dict]] = {}
for _m, _d in NODE:
    for _method, _bits in (("fp32", None), ("qat", 8)):
        EXPERIMENTS[_name(_m, _d, _method, _bits)] = ("int8", dict(dataset=_d, model=_m, method=_method, bits=_bits))
# "INT8 with any method": Degree-Quant and LSQ at 8 bits beside plain QAT, for the cells where QAT misses.
for _m, _d in NODE:
    for _method in ("dq", "lsq"):
        EXPERIMENTS[_name(_m, _d, _method, 8)] = ("int8-alt", dict(dataset=_d, model=_m, method=_method, bits=8))
for _method, _bits in (("fp32", None), ("dq", 4), ("qat", 4), ("lsq", 4)):
    EXPERIMENTS.setdefault(_name("gcn", "cora", _method, _bits),
                           ("int4", dict(dataset="cora", model="gcn", method=_method, bits=_bits)))
for _method, _bits in (("fp32", None), ("dq", 8), ("dq", 4), ("qat", 4)):
    EXPERIMENTS[_name("gin", "reddit-binary", _method, _bits)] = (
        "reddit", dict(dataset="reddit-binary", model="gin", method=_method, bits=_bits))
# The TU rows of results.md section 2 at the full protocol (10 folds, the recipe's 350 epochs), beside FP32 GIN
# (baseline-gin-<dataset>.json) and the MixQ search rows on the same folds: the uniform widths a search must beat
for _d in ("proteins", "imdb-binary"):
    for _method, _bits in (("dq", 8), ("dq", 4), ("qat", 4)):
        EXPERIMENTS[_name("gin", _d, _method, _bits)] = (
            "tu", dict(dataset=_d, model="gin", method=_method, bits=_bits))

# Targets (issue text) and the papers' figures, keyed by experiment name.
TARGETS = {
    "gcn-cora-dq4": ("FP32 − 3", None),
    "gin-reddit-binary-dq8": (">= 91.8", 91.8),
    "gin-reddit-binary-dq4": (">= 81.3", 81.3),
}
PUBLISHED = {
    "gcn-cora-dq4": "81.0 ± 0.7 (Tailor et al. 2021, INT4 DQ)",
    "gcn-cora-qat4": "about 66 (Tailor et al. 2021, INT4 QAT)",
    "gin-reddit-binary-dq8": "91.8 (Tailor et al. 2021); 92.4 their rerun",
    "gin-reddit-binary-dq4": "81.3 (Tailor et al. 2021); 86.2 their rerun",
    "gin-reddit-binary-qat4": "54.1 (Tailor et al. 2021)",
}
PROTOCOL_KEYS = ("dataset", "model", "seeds", "folds", "epochs", "seed", "fold_seed")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, choices=sorted(EXPERIMENTS))
    p.add_argument("--group", nargs="*", default=None, choices=["int8", "int8-alt", "int4", "reddit", "tu"])
    p.add_argument("--seeds", type=int, default=None, help="runs per fold (default: the recipe's)")
    p.add_argument("--folds", type=int, default=None, help="graph tasks: run only the first N folds")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", default=None)
    p.add_argument("--render", action="store_true", help="only rebuild the docs table from the JSON files")
    _harness.add_arguments(p, render=False)
    args = p.parse_args(argv)
    if args.render:
        render()
        return 0

    from qgnn.train import TrainConfig
    from qgnn.train.results import format_table

    def show(cell, res, cached):
        print(cell.name.removeprefix("quant-"))
        print(format_table(res), flush=True)
        render()

    names = args.only or [n for n, (g, _) in EXPERIMENTS.items() if not args.group or g in args.group]
    cells = [_harness.Cell(f"quant-{name}", TrainConfig(**EXPERIMENTS[name][1], seeds=args.seeds, folds=args.folds,
                                                        epochs=args.epochs, device=args.device))
             for name in names]
    _harness.run(cells, root=args.root, force=args.force, progress=None, after=show, dry_run=args.dry_run)
    return 0


def _fp32_reference(cfg: dict) -> dict | None:
    """The FP32 result with the same dataset, model and protocol, from any results JSON.

    Graph tasks: an FP32 run over more folds also serves, restricted to the folds the quantized run has
    (its runs of folds 0..N-1 are exactly what an N-fold run trains: each fold's seed is seed + fold)."""
    for path in sorted(RESULTS_DIR.glob("*.json")):
        try:
            r = json.loads(path.read_text())
            c = r["config"]
        except (KeyError, TypeError, json.JSONDecodeError):
            continue
        same = [k for k in PROTOCOL_KEYS if k != "folds"]
        if c.get("method") != "fp32" or not all(c.get(k) == cfg.get(k) for k in same):
            continue
        if c["task"] == "node":
            if c.get("folds") == cfg.get("folds"):
                return r
            continue
        if len(r["runs"]) == _runs(cfg) and c.get("folds") == cfg.get("folds"):
            return r
        if c.get("seeds") == 1 == cfg.get("seeds") and (c.get("folds") or 10) > (cfg.get("folds") or 10):
            runs = [run for run in r["runs"] if run["fold"] < cfg["folds"]]
            if len(runs) == _runs(cfg):
                acc = [run["test_acc"] for run in runs]
                mean = statistics.fmean(acc)
                return {**r, "runs": runs, "subset_of": f"folds 0-{cfg['folds'] - 1} of {path.name}",
                        "metrics": {**r["metrics"], "test_acc": {"mean": mean, "std": statistics.pstdev(acc),
                                                                 "runs": acc}},
                        "timing": {**r["timing"], "seconds_per_epoch": statistics.fmean(
                            run["seconds_per_epoch"] for run in runs)}}
    return None


def _runs(cfg: dict) -> int:
    return cfg["seeds"] * (cfg["folds"] if cfg["task"] == "graph" else 1)


def render() -> None:
    """Rebuild the `quant` section of docs/results.md from benchmarks/results/quant-*.json."""
    head = ["experiment", "protocol", "test acc (%)", "FP32 same protocol (%)", "Δ (points)", "target", "published",
            "BitOPs reduction", "avg bits", "bytes (FP32 / quantized)", "s / epoch (FP32)"]
    rows = []
    for name in EXPERIMENTS:
        r = None if name.endswith("-fp32") else _harness.load(f"quant-{name}")
        if r is None:
            continue
        c, m, cost = r["config"], r["metrics"], r.get("cost", {})
        ref = _fp32_reference(c)
        acc = 100 * m["test_acc"]["mean"]
        proto = (f"{c['seeds']} seeds" if c["task"] == "node" else f"{len(r['runs'])} of 10 folds")
        proto += f", {c['epochs']} epochs"
        if ref:
            ref_acc = 100 * ref["metrics"]["test_acc"]["mean"]
            ref_s, delta = pct(ref["metrics"]["test_acc"]), f"{acc - ref_acc:+.2f}"
            ref_t = f" ({ref['timing']['seconds_per_epoch']:.3f})"
        else:
            ref_acc, ref_s, delta, ref_t = None, "not run", "", ""
        target, verdict = _target(name, c, acc, ref_acc)
        rows.append(
            f"| {name} | {proto} | {pct(m['test_acc'])} | {ref_s} | {delta} | {target}{verdict} "
            f"| {PUBLISHED.get(name, '')} | {cost.get('bitops_reduction', float('nan')):.1f}x "
            f"| {cost.get('avg_bits', float('nan')):.2f} | {cost.get('model_bytes_fp32', '')} / "
            f"{cost.get('model_bytes', '')} | {r['timing']['seconds_per_epoch']:.3f}{ref_t} |")
    cmds = [json.loads(p.read_text()).get("command", "") for p in RESULTS_DIR.glob("quant-*.json")]
    _harness.publish(
        "quant",
        "## Quantization-aware training vs. FP32\n\n"
        "Same protocol as the FP32 baselines (validation-based selection, mean ± population std), each "
        "quantized result beside the FP32 run of the same seeds / folds and epochs. BitOPs, average bits and "
        "bytes as defined in [cost.md](cost.md); bytes are the model's parameters at their bit-widths plus "
        "scales and zero points. The s / epoch figures come from separate runs that shared the machine's two "
        "cores with other benchmarks: compare them only loosely, and see the training-cost section for "
        "ratios measured in one run.\n\n" + _harness.table(head, rows) + _harness.commands(cmds))


def _target(name: str, cfg: dict, acc: float, ref_acc: float | None) -> tuple[str, str]:
    if cfg.get("bits") == 8 and cfg["task"] == "node":
        goal = None if ref_acc is None else ref_acc - 1.0
        return "FP32 − 1", "" if goal is None else (" (met)" if acc >= goal else " (NOT met)")
    if name in TARGETS:
        text, absolute = TARGETS[name]
        goal = absolute if absolute is not None else (None if ref_acc is None else ref_acc - 3.0)
        return text, "" if goal is None else (" (met)" if acc >= goal else " (NOT met)")
    return "", ""


if __name__ == "__main__":
    raise SystemExit(main())
