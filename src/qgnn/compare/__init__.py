"""`qgnn compare`: methods x prompts on one dataset and model, one table, compare.json and compare.png.

    qgnn compare --dataset Cora --model gcn --methods fp32 qat:8 lsq:4 dq:4 a2q:4 mixq \\
        --prompts none gpf-lorap --seeds 5 --out-dir runs/cmp

Each cell (a method, a prompt) is an ordinary run whose results JSON is ``<out-dir>/cells/<cell>.json``
(:mod:`qgnn.grid`): a finished cell is reused while its configuration is unchanged, a stopped one resumes, so
after Ctrl-C the same command continues where it stopped. One progress bar counts every epoch of the grid.
This module only registers the command; the work is imported when it runs (`qgnn --help` stays fast).
"""

from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "compare", help="several methods (x prompts) on one dataset: table, compare.json and compare.png",
        description="Train a grid of methods (x prompts), each cell cached and resumable, and compare them: test "
                    "and validation scores, average bits, BitOPs reduction, bytes, time, Pareto fronts (chosen on "
                    "validation).")
    from qgnn.catalog import DATASETS, MODELS, PROMPTS

    p.add_argument("--dataset", default="cora", help="node, graph or recommendation dataset, case-insensitive: "
                   + ", ".join(DATASETS["node"] + DATASETS["graph"] + DATASETS["rec"]) + " (default: cora)")
    p.add_argument("--model", default=None,
                   help=f"{' | '.join(MODELS['node'])} (node); {' | '.join(MODELS['graph'])} (graph); "
                        f"{' | '.join(MODELS['rec'])} (recommendation) (default: gcn; lightgcn for recommendation)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME[:BITS]",
                   help="method specs NAME or NAME:BITS (no BITS: the method's validated recipe); mixq is MixQ-GNN's "
                        "search, then fixed-bit training of the widths found (default: fp32 qat:8 lsq:4 dq:4 a2q "
                        "mixq; recommendation: fp32 qat:2 lsq:2 gnaq:2 bigear)")
    p.add_argument("--prompts", nargs="+", default=None, metavar="KIND",
                   help=f"{' | '.join(PROMPTS)}, crossed with every quantized method; fp32 runs once without "
                        "(default: none)")
    p.add_argument("--seeds", type=int, default=None, help="runs per fold (default: 10 node, 1 graph and rec)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--folds", type=int, default=None, help="graph datasets: how many of the 10 CV folds (default: 10)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every cell (default: the model's recipe)")
    p.add_argument("--search-epochs", type=int, default=None, help="mixq: epochs of the search (default: --epochs)")
    p.add_argument("--k", type=int, default=None, help="recommendation: K of Recall@K / NDCG@K, 10 or 20 (default: 20)")
    p.add_argument("--pretrained", default=None,
                   help="recommendation: FP32 LightGCN checkpoint for gnaq / bigear (default: the fp32 cell's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--root", default=None, help="data folder (default: $QGNN_DATA, else the user cache)")
    p.add_argument("--out-dir", default=None,
                   help="folder of the cells, compare.json and compare.png (default: runs/compare-<dataset>-<model>)")
    p.add_argument("--force", action="store_true", help="train every cell again, even when its results are cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from qgnn.grid import stop_on_sigint
    from qgnn.train import Control

    control = Control()
    with stop_on_sigint(control, "this epoch; the same command continues from there"):
        from qgnn.compare.run import run  # the work (torch, PyG) is imported when the command runs

        return run(args, control)
