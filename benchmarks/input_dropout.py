"""Training-epoch time with the input dropout drawn densely (F.dropout) or at the non-zero features only
(qgnn.models.dropout.sparse_input_dropout), measured in one process.

Per case: one model of the recipe (qgnn.train.Runner, the run's optimizer), trained a few warm-up epochs, then
blocks of epochs alternating the two dropout implementations on the same model (so load from other processes
hits both alike); the table gives the median CPU time per training epoch of each and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/input_dropout.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, update_section, write_json  # noqa: E402

CASES = (("gcn", "cora", "fp32"), ("gcn", "cora", "dq"), ("gat", "cora", "qat"), ("gin", "citeseer", "dq"),
         ("gcn", "citeseer", "fp32"))


def _dense(x, p, training):
    return F.dropout(x, p, training)


def time_case(model: str, dataset: str, method: str, blocks: int, epochs: int) -> dict:
    import qgnn.models.node as node
    from qgnn.train import TrainConfig
    from qgnn.train.runner import Runner
    from qgnn.train.tasks import penalty_modules

    cfg = TrainConfig(dataset=dataset, model=model, method=method, bits=None if method == "fp32" else 4, seeds=1)
    runner = Runner(cfg)
    torch.manual_seed(0)
    net, task = runner.build(), runner.task_for(0)
    opt, _ = runner._optim(net)
    pens = penalty_modules(net)
    variants = {"dense": _dense, "sparse": node.sparse_input_dropout}
    x = task.data.x
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(3):
            task.train_epoch(net, opt, pens)
        for _ in range(blocks):
            for name, fn in variants.items():
                node.sparse_input_dropout = fn
                t0 = time.process_time()
                for _ in range(epochs):
                    task.train_epoch(net, opt, pens)
                seconds[name].append((time.process_time() - t0) / epochs)
    finally:
        node.sparse_input_dropout = variants["sparse"]
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {"model": model, "dataset": dataset, "method": method, "features": list(x.shape),
            "nonzero_fraction": float((x != 0).float().mean()), "cpu_s_per_epoch": seconds,
            "median": med, "ratio": med["sparse"] / med["dense"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=7, help="alternating blocks per variant (median)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per block")
    args = p.parse_args()
    rows = [time_case(*c, args.blocks, args.epochs) for c in CASES]
    write_json("input-dropout", {"command": command_line(), "rows": rows})
    lines = ["## Input dropout: dense mask vs the non-zero features only", "",
             f"`{command_line()}`", "",
             "Same model, same process, alternating blocks of training epochs (median CPU s per epoch); "
             "INT4 for the quantized hosts.", "",
             "| model | dataset | host | features (non-zero) | dense F.dropout | sparse_input_dropout | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        n, d = r["features"]
        share = 100 * r["nonzero_fraction"]
        lines.append(f"| {r['model']} | {r['dataset']} | {r['method']} | {n} × {d} ({share:.1f} %) "
                     f"| {1000 * r['median']['dense']:.1f} ms | {1000 * r['median']['sparse']:.1f} ms "
                     f"| {r['ratio']:.2f} |")
        print(lines[-1], flush=True)
    update_section("input-dropout", "\n".join(lines))


if __name__ == "__main__":
    main()
