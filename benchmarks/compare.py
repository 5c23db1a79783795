"""`qgnn compare` on a dataset / model, its table and plot published in docs/notes/compare.md.

Runs exactly the command a user types (``qgnn compare --dataset D --model M --methods ... --seeds S``) with
its cells under benchmarks/results/compare-<dataset>-<model>/ (finished cells are reused, a stopped run
continues), then puts the printed table and compare.png into the section ``compare-<dataset>-<model>``.

    OMP_NUM_THREADS=1 python benchmarks/compare.py --dataset Cora --model gcn \\
        --methods fp32 qat:8 lsq:4 dq:4 a2q mixq --seeds 3
    python benchmarks/compare.py --dataset Cora --model gcn --render
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _report import RESULTS_MD, command_line  # noqa: E402

DOCS_DIR = RESULTS_MD.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="Cora")
    p.add_argument("--model", default="gcn")
    p.add_argument("--methods", nargs="+", default=["fp32", "qat:8", "lsq:4", "dq:4", "a2q", "mixq"])
    p.add_argument("--prompts", nargs="+", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--render", action="store_true", help="only rebuild the docs section from compare.json")
    args = p.parse_args(argv)
    slug = f"{args.dataset.lower()}-{args.model.lower()}"
    out_dir = _harness.RESULTS_DIR / f"compare-{slug}"
    if not args.render:
        from qgnn.cli import main as qgnn_main

        cli = ["compare", "--dataset", args.dataset, "--model", args.model, "--methods", *args.methods,
               "--seeds", str(args.seeds), "--out-dir", str(out_dir)]
        cli += ["--prompts", *args.prompts] if args.prompts else []
        rc = qgnn_main(cli)
        if rc:
            return rc
        summary = json.loads((out_dir / "compare.json").read_text())
        summary["command"] = command_line()
        (out_dir / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    render(out_dir, slug)
    return 0


def render(out_dir: Path, slug: str) -> None:
    from qgnn.compare.table import format_table, scores_for

    summary = json.loads((out_dir / "compare.json").read_text())
    cfg = summary["config"]
    text = format_table(summary["rows"], scores_for(cfg["task"], cfg.get("k") or 20), cfg["task"])
    png = out_dir / "compare.png"
    image = ""
    if png.exists():
        # beside the other plots in docs/; links are written relative to docs/ (_report.relink adapts them)
        shutil.copyfile(png, DOCS_DIR / f"compare-{slug}.png")
        image = f"\n![accuracy against BitOPs reduction and bytes](compare-{slug}.png)\n"
    plain = (f"qgnn compare --dataset {cfg['dataset']} --model {cfg['model']} --methods {' '.join(cfg['methods'])} "
             f"--seeds {cfg['seeds']}" + (f" --prompts {' '.join(cfg['prompts'])}" if cfg["prompts"] != ["none"]
                                          else ""))
    md = [f"## `qgnn compare`: {cfg['dataset']} / {cfg['model']}, {cfg['seeds']} seeds", "",
          f"The table `{plain}` prints (each method at its recipe; test and validation accuracy in %, selection "
          "and Pareto fronts on validation). s / epoch: CPU, one thread, on two cores shared with other "
          "benchmarks: compare loosely.", "", "```", text, "```", image,
          f"Command: `{summary.get('command', plain)}`"]
    _harness.publish(f"compare-{slug}", "\n".join(md))


if __name__ == "__main__":
    raise SystemExit(main())
