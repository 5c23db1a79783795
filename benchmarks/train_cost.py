"""Training cost of the quantization methods: seconds per epoch of FP32, plain QAT and Degree-Quant.

Targets (issue: quantization core): Degree-Quant <= 1.5x plain QAT and plain QAT <= 2x FP32 per epoch,
measured in one run. The methods run in the same process on the same fold, alternating, several times,
so drift on a shared machine hits them alike; the table gives the median seconds per epoch (train step
plus evaluation, as `qgnn train` reports it) and the ratios of the medians.

    OMP_NUM_THREADS=1 python benchmarks/train_cost.py --dataset reddit-binary --bits 4 --epochs 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, update_section, write_json  # noqa: E402

# The authors' code on this kind of machine (REDDIT-BINARY, GIN, INT4, one thread), from the issue.
AUTHORS = {"qat/fp32": 1.62, "dq/qat": 5.13}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="reddit-binary")
    p.add_argument("--model", default="gin")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from qgnn.env import environment
    from qgnn.train import Runner, TrainConfig

    methods = {"fp32": None, "qat": args.bits, "dq": args.bits}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for method, bits in methods.items():
            cfg = TrainConfig(dataset=args.dataset, model=args.model, method=method, bits=bits, folds=1, seeds=1,
                              epochs=args.epochs)
            times[method].append(Runner(cfg, progress=False).run()["timing"]["seconds_per_epoch"])
            print(method, f"{times[method][-1]:.3f} s / epoch", flush=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    ratios = {"qat/fp32": med["qat"] / med["fp32"], "dq/qat": med["dq"] / med["qat"]}
    limits = {"qat/fp32": 2.0, "dq/qat": 1.5}
    write_json(f"train-cost-{args.dataset}-{args.model}-w{args.bits}",
               {"times": times, "median": med, "ratios": ratios, "args": vars(args), "command": command_line(),
                "env": environment()})
    rows = ["| ratio | qgnn | target | authors' code (issue) |", "|---|---|---|---|"]
    for k, v in ratios.items():
        rows.append(f"| {k} | {v:.2f} | <= {limits[k]} ({'met' if v <= limits[k] else 'NOT met'}) | {AUTHORS[k]} |")
    secs = ", ".join(f"{m} {s:.3f}" for m, s in med.items())
    update_section(
        "train-cost",
        f"## Training cost per epoch: FP32, plain QAT, Degree-Quant\n\n{args.model.upper()} on {args.dataset}, "
        f"INT{args.bits}, one fold, {args.epochs} epochs per measurement, median of {args.repeats} alternating "
        f"repeats, one thread. Median s / epoch: {secs}.\n\n" + "\n".join(rows)
        + f"\n\nCommand: `{command_line()}`")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
