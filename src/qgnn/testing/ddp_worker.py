"""A torchrun worker for the distributed tests and ``benchmarks/distributed.py``: one run of the one runner.

    torchrun --nproc_per_node 2 -m qgnn.testing.ddp_worker CONFIG_JSON OUT_DIR [--resume] [--stop-at EPOCH]

Every rank trains ``CONFIG_JSON`` (a :class:`~qgnn.train.config.TrainConfig` dict, or a list of them: one
launch, one process group, the runs one after the other in ``OUT_DIR/<i>/``, or ``OUT_DIR/<_out>/`` where an
entry names one; an entry's ``_stop_at`` acts as ``--stop-at`` for that run alone) through
:class:`~qgnn.train.runner.Runner` with the resume state in ``OUT_DIR/state.pt``; then each rank writes the
selected model state it holds to ``OUT_DIR/rank<r>.safetensors`` (test instrumentation: the product writes from
rank 0 only), so that a test can compare the ranks' files itself rather than trust the runner's own check.
Rank 0 writes ``OUT_DIR/results.json``. ``--stop-at E``: rank 1 (only) asks to stop at the end of epoch E,
as a Ctrl-C on that rank would; every rank then writes ``OUT_DIR/interrupted<r>`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="qgnn.testing.ddp_worker")
    p.add_argument("config")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-at", type=int, default=None)
    args = p.parse_args(argv)

    from qgnn.train.config import TrainConfig
    from qgnn.train.distributed import from_environ, start

    given = json.loads(Path(args.config).read_text())
    entries = given if isinstance(given, list) else [given]
    opts = [{k: e.pop(k) for k in ("_out", "_stop_at") if k in e} for e in entries]
    configs = [TrainConfig.from_dict(c) for c in entries]
    launch = from_environ()
    dist = start(launch, configs[0].device) if launch else None
    rank = launch.rank if launch else 0
    for i, (cfg, opt) in enumerate(zip(configs, opts, strict=True)):
        out = Path(args.out) / str(opt.get("_out", i)) if isinstance(given, list) else Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _one(cfg, out, args.resume, opt.get("_stop_at", args.stop_at), dist, rank)
    return 0


def _one(cfg, out: Path, resume: bool, stop_at: int | None, dist, rank: int) -> None:
    from safetensors.torch import save_file

    from qgnn.train.checkpoint import write_json
    from qgnn.train.runner import Control, Interrupted, Runner

    control = Control()
    if stop_at is not None:
        def stop(run: int, epoch: int) -> None:
            if rank == 1 and epoch == stop_at:
                control.stop_requested = True
        control.on_epoch_end.append(stop)
    runner = Runner(cfg, state_path=out / "state.pt", progress=False, control=control, dist=dist,
                    save_every=float(os.environ.get("QGNN_SAVE_EVERY", "3600")))
    ends: list[float] = []  # when each epoch ended (benchmarks/distributed.py: epochs without evaluation)
    control.on_epoch_end.append(lambda run, epoch: ends.append(time.perf_counter()))
    try:
        results = runner.run(resume=resume)
    except Interrupted:
        (out / f"interrupted{rank}").write_text("stopped\n")
        return
    state = {k: v.detach().contiguous().clone() for k, v in results.pop("_best_state").items()}
    save_file(state, str(out / f"rank{rank}.safetensors"))
    from qgnn.quant import sync

    (out / f"timing{rank}.json").write_text(json.dumps(
        {"epoch_ends": ends, "sync": dict(sync.STATS),
         # gradient elements DDP all-reduces per step (lazily sized quantizer tables count 0 here)
         "grad_elements": sum(p.numel() for p in runner.build().parameters() if p.requires_grad)}))
    if rank == 0:
        write_json(out / "results.json", results)


if __name__ == "__main__":
    sys.exit(main())
