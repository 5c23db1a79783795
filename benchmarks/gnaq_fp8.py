"""GNAQ with FP8 levels against QAT / LSQ at equal bytes, and FP8 against float32 levels (issue 27, item 5).

GNAQ (Li et al., CIKM 2025) stores b-bit codes plus 2^b levels per node; the paper keeps the levels ("scaling
factors") in FP8. Bytes of an [N, d] table (``qgnn.train.rec.rec_cost``):

    GNAQ:      N d b / 8  +  N 2^b · (1 byte FP8 | 4 bytes float32)
    QAT / LSQ: N d b / 8  +  8 (one scale and zero-point)

so at d = 64 and b = 2, GNAQ compresses 256 / (16 + 4) = 12.8x with FP8 levels, 8x with float32 levels; the
per-tensor baselines compress 16x at 2 bits, 10.7x at 3 and 8x at 4 bits. The table sets GNAQ 2-bit (FP8)
between 2- and 3-bit QAT / LSQ, and GNAQ 2-bit with float32 levels beside 4-bit QAT / LSQ (both 8x).

Every row is a cell of the shared harness (benchmarks/_harness.py), run as ``qgnn train`` runs it: the FP32
LightGCN (the recsys rows' budget: 3 seeds, lr 5e-3, up to 300 epochs, patience 30) saves its selected
checkpoint, and each quantized cell fine-tunes it with the method's recipe (lr 5e-3, up to 15 epochs,
patience 5; GNAQ's level dtype FP8), every setting a recipe fills left unset, so a GNAQ cell is the plain
``qgnn train --dataset D --model lightgcn --method gnaq --bits 2 --pretrained CKPT --seeds 3``. Selection on
validation Recall@20; test figures of the selected epoch.

    OMP_NUM_THREADS=1 python benchmarks/gnaq_fp8.py                  # ml-100k and Last.fm
    OMP_NUM_THREADS=1 python benchmarks/gnaq_fp8.py --only ml100k
    OMP_NUM_THREADS=1 python benchmarks/gnaq_fp8.py --only gowalla       # 1 seed, the recsys gowalla budget
    OMP_NUM_THREADS=1 python benchmarks/gnaq_fp8.py --render         # rebuild the docs section from the JSON

Run from the repository root (the quantized cells name their checkpoint by a path relative to it, so that
their configs do not depend on where the checkout lives). The checkpoints are not committed: a checkout
without them trains the FP32 cells again.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _report import ROOT, write_json  # noqa: E402

SECTION = "gnaq-fp8"
DATASETS = {  # slug -> (dataset, label)
    "ml100k": ("ml-100k", "ml-100k"),
    "lastfm": ("lastfm", "Last.fm"),
    "gowalla": ("gowalla", "gowalla (1 seed)"),
}
DEFAULT = ("ml100k", "lastfm")  # gowalla only with --only gowalla (hours on two shared cores)
FP32 = dict(model="lightgcn", seeds=3, lr=5e-3, epochs=300, patience=30)  # the recsys rows' FP32 budget
# gowalla: the recsys gowalla rows' budget (recsys.py gowalla-fp32 --epochs 100 --lr 0.005, then gowalla-quant
# --seeds 1 --quant-epochs 5): one seed, FP32 up to 100 epochs evaluated every 5, quantized rows 5 epochs
FP32_OVERRIDES = {"gowalla": dict(seeds=1, epochs=100, patience=10, eval_every=5)}
QUANT_OVERRIDES = {"gowalla": dict(seeds=1, epochs=5)}
# gowalla trains its rows in this order (the FP8 / float32 pair and the equal-bytes neighbours first), so that a
# run stopped for time has the comparisons the section reports
ORDER = {"gowalla": ("gnaq2", "gnaq2-fp32", "lsq3", "lsq2", "qat3", "qat2", "lsq4", "qat4")}
# (key, label, method, bits, method options): the quantized rows, in table order
ROWS = (("gnaq2", "GNAQ, FP8 levels (default)", "gnaq", 2, {}),
        ("qat2", "QAT (STE, per tensor)", "qat", 2, {}),
        ("lsq2", "LSQ (per tensor)", "lsq", 2, {}),
        ("qat3", "QAT (STE, per tensor)", "qat", 3, {}),
        ("lsq3", "LSQ (per tensor)", "lsq", 3, {}),
        ("gnaq2-fp32", "GNAQ, float32 levels", "gnaq", 2, {"level_dtype": "fp32"}),
        ("qat4", "QAT (STE, per tensor)", "qat", 4, {}),
        ("lsq4", "LSQ (per tensor)", "lsq", 4, {}))
METRICS = ("recall@20", "ndcg@20", "val_recall@20")


def ckpt_of(slug: str) -> str:
    """The FP32 checkpoint, relative to the repository root (see the module docstring)."""
    return f"benchmarks/results/{SECTION}/{slug}-fp32.ckpt"


def cells(slugs) -> list:
    from qgnn.train import TrainConfig

    out = []
    for slug in slugs:
        dataset = DATASETS[slug][0]
        fp32 = {**FP32, **FP32_OVERRIDES.get(slug, {})}
        out.append(_harness.Cell(f"{SECTION}/{slug}-fp32", TrainConfig(dataset=dataset, **fp32), save=ckpt_of(slug)))
        order = ORDER.get(slug)
        rows = sorted(ROWS, key=lambda r: order.index(r[0])) if order else ROWS
        for key, _, method, bits, opts in rows:
            quant = {"pretrained": ckpt_of(slug), **({"options": opts} if opts else {})}
            budget = {"seeds": FP32["seeds"], **QUANT_OVERRIDES.get(slug, {})}
            cfg = TrainConfig(dataset=dataset, model="lightgcn", method=method, bits=bits, quant=quant, **budget)
            out.append(_harness.Cell(f"{SECTION}/{slug}-{key}", cfg))
    return out


def level_rounding(slug: str) -> dict:
    """How far FP8 moves GNAQ's initial levels (uniform over each node's range of the FP32 checkpoint), per
    code width: the rounding error in units of the level step Δ_i, and the distinct FP8 levels per node."""
    import torch

    from qgnn.quant.nodewise import round_fp8
    from qgnn.train.checkpoint import load_checkpoint

    w = load_checkpoint(ckpt_of(slug))[0]["embedding.weight"]
    mn, mx = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    out = {}
    for bits in (2, 3, 4, 8):
        step = (mx - mn) / (2 ** bits - 1)
        lv = mn + torch.arange(2 ** bits) * step
        err = (round_fp8(lv) - lv).abs() / step
        distinct = torch.tensor([float(torch.unique(r).numel()) for r in round_fp8(lv)])
        out[str(bits)] = {"max_err_steps": float(err.max()), "mean_err_steps": float(err.mean()),
                          "distinct_levels_mean": float(distinct.mean()), "distinct_levels_min": float(distinct.min())}
    write_json(f"{SECTION}/{slug}-levels", {"checkpoint": ckpt_of(slug), "by_bits": out})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, choices=sorted(DATASETS))
    p.add_argument("--fp32-only", action="store_true", help="train only the FP32 cells (their checkpoints)")
    _harness.add_arguments(p)
    args = p.parse_args(argv)
    os.chdir(ROOT)  # the cells' checkpoint paths are relative to the repository root
    if not args.render:
        todo = cells(args.only or list(DEFAULT))
        if args.fp32_only:
            todo = [c for c in todo if c.name.endswith("-fp32") and c.config.method == "fp32"]
        (ROOT / "benchmarks" / "results" / SECTION).mkdir(parents=True, exist_ok=True)
        def after(cell, res, cached):
            print(f"{cell.name}: test recall@20 {res['metrics']['recall@20']['mean']:.4f} "
                  f"({res['cost']['compression']:.2f}x)", flush=True)
            if cell.config.method == "fp32":
                level_rounding(cell.name.split("/")[1].removesuffix("-fp32"))

        _harness.run(todo, force=args.force, dry_run=args.dry_run, after=after)
    render()
    return 0


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def render() -> None:
    head = ["dataset", "method", "bits", "test Recall@20", "test NDCG@20", "val Recall@20", "R@20 / FP32",
            "bytes (compression)", "level bytes", "train s / epoch"]
    rows, cmds, checks, levels = [], set(), [], []
    for slug, (_, label) in DATASETS.items():
        fp = _harness.load(f"{SECTION}/{slug}-fp32")
        if fp is None:
            continue
        ref = fp["metrics"]["recall@20"]["mean"]
        found = {"fp32": fp}
        for key, name, *_ in (("fp32", "FP32 LightGCN"), *ROWS):
            r = found.get(key) or _harness.load(f"{SECTION}/{slug}-{key}")
            if r is None:
                continue
            found[key] = r
            m, c = r["metrics"], r["cost"]
            bits = r["config"]["bits"] or 32
            rows.append(f"| {label} | {name} | {bits} | " + " | ".join(_fmt(m[k]) for k in METRICS) +
                        f" | {m['recall@20']['mean'] / ref:.3f} | {c['model_bytes']} ({c['compression']:.2f}x) | "
                        f"{c.get('level_bytes', 0)} | {r['timing']['train_seconds_per_epoch']:.2f} |")
            cmds.add(r.get("command", ""))
        checks += _checks(label, found)
        missing = [k for k, *_ in ROWS if k not in found]
        if missing:
            checks.append(f"- {label}: not run (stopped for time): {', '.join(missing)}.")
        lv = _harness.load(f"{SECTION}/{slug}-levels")
        if lv:
            b = lv["by_bits"]
            levels.append(f"- {label}: FP8 rounding of the initial levels moves them by at most "
                          f"{b['2']['max_err_steps']:.2f} of a level step at 2 bits "
                          f"(mean {b['2']['mean_err_steps']:.3f}), "
                          f"{b['4']['max_err_steps']:.2f} at 4 bits; at 8 bits a node's 256 levels fall on "
                          f"{b['8']['distinct_levels_mean']:.0f} distinct FP8 values on average (min "
                          f"{b['8']['distinct_levels_min']:.0f}): finer than FP8's 3 mantissa bits, so wide codes "
                          "want `level_dtype=fp32`.")
    text = ["### GNAQ with FP8 levels: equal bytes against QAT / LSQ", "",
            "GNAQ stores b-bit codes and 2^b levels per node; the levels are FP8 (e4m3) by default, as the paper "
            "stores them, trained with straight-through rounding (`qgnn.quant.nodewise`). Bytes of the "
            "embedding table: N·d·b/8 of codes + N·2^b levels at 1 byte (FP8) or 4 (float32); QAT / LSQ add "
            "one scale and zero-point. At d = 64, 2-bit GNAQ is 12.8x (FP8) or 8x (float32); 2 / 3 / 4-bit "
            "QAT / LSQ are 16x / 10.7x / 8x. Each quantized row fine-tunes its dataset's FP32 checkpoint with "
            "the method's recipe (lr 5e-3, up to 15 epochs, patience 5); 3 seeds, mean ± std; selection on "
            "validation Recall@20, test figures of the selected epoch. " + (
                "gowalla: the recsys rows' budget, one seed, FP32 up to 100 epochs, quantized rows 5 epochs."
                if _harness.load(f"{SECTION}/gowalla-fp32") else
                "gowalla was not run (`--only gowalla`: its FP32 checkpoint alone takes about an hour on the "
                "shared cores)."), "", _harness.table(head, rows)]
    if checks or levels:
        text += ["", *checks, *levels]
    text += ["", "By hand (ml-100k; Last.fm likewise): `qgnn train --dataset ml-100k --model lightgcn --seeds 3 "
             "--lr 5e-3 --epochs 300 --patience 30 --save fp32.ckpt`, then the plain `qgnn train --dataset ml-100k "
             "--model lightgcn --method gnaq --bits 2 --pretrained fp32.ckpt --seeds 3` (FP8 levels come from the "
             "recipe; `--method-opt level_dtype=fp32` for float32 levels) and `--method lsq --bits 3` (or qat, "
             "2 / 3 / 4 bits) for the rows beside it."]
    text.append(_harness.commands(cmds))
    _harness.publish(SECTION, "\n".join(text))


def _checks(label: str, found: dict) -> list[str]:
    """The issue's two comparisons in words: FP8 against float32 levels, GNAQ against the equal-bytes rows."""
    out = []
    g8, g32 = found.get("gnaq2"), found.get("gnaq2-fp32")
    if g8 and g32:
        parts = []
        for k, what in (("val_recall@20", "validation"), ("recall@20", "test")):
            a, b = g8["metrics"][k]["mean"], g32["metrics"][k]["mean"]
            parts.append(f"{what} {a:.4f} vs {b:.4f} ({100 * (a / b - 1):+.2f} %)")
        ok = all(g8["metrics"][k]["mean"] / g32["metrics"][k]["mean"] - 1 >= -0.005
                 for k in ("val_recall@20", "recall@20"))
        out.append(f"- {label}, FP8 vs float32 levels, Recall@20: " + "; ".join(parts) +
                   f" (target: FP8 no more than 0.5 % below float32: {'met' if ok else 'not met'}).")
    if g8:
        a = g8["metrics"]["recall@20"]["mean"]
        near = [f"{k.upper()} {found[k]['metrics']['recall@20']['mean']:.4f} at {found[k]['cost']['compression']:.1f}x"
                for k in ("qat2", "lsq2", "qat3", "lsq3") if k in found]
        if near:
            v = g8["metrics"]["val_recall@20"]["mean"]
            near_v = [f"{k.upper()} {found[k]['metrics']['val_recall@20']['mean']:.4f}"
                      for k in ("qat2", "lsq2", "qat3", "lsq3") if k in found]
            out.append(f"- {label}, GNAQ 2-bit FP8 test Recall@20 {a:.4f} at {g8['cost']['compression']:.1f}x; "
                       "beside it: " + ", ".join(near) + f". On validation: GNAQ {v:.4f}, " + ", ".join(near_v) + ".")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
