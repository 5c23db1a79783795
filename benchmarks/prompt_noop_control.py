"""Control for the prompt grid (issue 5): LoRAP injected but its V frozen at zero.

The prompt is then an exact no-op, yet its W_a and U still draw from the RNG, so the host's weights and
dropout masks differ from the host-only run of the same seed. The gap between this control and the host is
run-to-run noise; the gap between a trained prompt and this control is the prompt's own effect.

    OMP_NUM_THREADS=1 python benchmarks/prompt_noop_control.py --host qat
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cora")
    p.add_argument("--model", default="gcn")
    p.add_argument("--host", default="qat")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args(argv)

    from qgnn.train import TrainConfig
    from qgnn.train.runner import Runner

    cfg = TrainConfig(dataset=args.dataset, model=args.model, method=args.host, bits=args.bits, seeds=args.seeds,
                      prompt={"kind": "lorap"})
    runner = Runner(cfg, progress=False)
    build = runner.build

    def build_frozen():
        model = build()
        for name, param in model.named_parameters():
            if name.endswith("aggr_prompt.v"):
                param.requires_grad_(False)  # V stays 0: softmax(W_a s) U V adds exactly 0
        return model

    runner.build = build_frozen
    res = runner.run()
    res.pop("_best_state")  # the selected model's tensors: not needed here
    res["command"] = command_line()
    res["control"] = "LoRAP with V frozen at 0"
    write_json(f"prompts-control-{args.model}-{args.dataset}-{args.host}{args.bits}-lorap-v0", res)
    m = res["metrics"]
    print(f"control: val {100 * m['val_acc']['mean']:.2f}, test {100 * m['test_acc']['mean']:.2f} "
          f"± {100 * m['test_acc']['std']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
