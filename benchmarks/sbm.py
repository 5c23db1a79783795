"""The SBM graphs (qgnn.data.sbm): generation time and peak RSS, cache load time, and what FP32 reaches.

* ``gen``: ``sbm-100k`` and ``sbm-1m`` each generated in a fresh process with an empty cache (``QGNN_CACHE`` a
  temporary folder): seconds of the generator alone and of the first ``load_dataset`` (generator + cache write),
  peak RSS of the process (``ru_maxrss``; the RSS after ``import qgnn.data`` and torch is given beside it), and the
  graph's statistics (edges, edge homophily, isolated nodes, maximum degree, cache file size).
* ``load``: a second fresh process on that cache: seconds to open it (``torch.load(mmap=True)``) and to read every
  tensor once (the first touch pages the file in), peak RSS.
* ``acc`` (``sbm-100k`` only): test accuracy at the best validation epoch of a feature-only logistic regression
  and MLP (plain torch, full batch) and of qgnn's GCN (``qgnn train --dataset sbm-100k --model gcn --hidden 128
  --epochs 50 --seeds 1``), all with hidden 128, Adam lr 0.01, weight decay 5e-4, dropout 0.5; features as the
  dataset gives them (not row-normalised, the default for sbm-*).

Results: benchmarks/results/sbm.json (parts run earlier are kept). One thread:

    OMP_NUM_THREADS=1 python benchmarks/sbm.py            # all parts (~5 minutes, most of it the GCN)
    OMP_NUM_THREADS=1 python benchmarks/sbm.py --parts gen load
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS_DIR, command_line, write_json  # noqa: E402

NAMES = ("sbm-100k", "sbm-1m")

_GEN = r"""
import json, resource, sys, time
import torch
from qgnn.data import load_dataset
from qgnn.data import sbm as S
torch.set_num_threads(1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
timed = {}
inner = S.sbm_graph
def sbm_graph(**kw):
    t = time.perf_counter(); d = inner(**kw); timed["generate_s"] = time.perf_counter() - t; return d
S.sbm_graph = sbm_graph
t = time.perf_counter(); d = load_dataset(sys.argv[1]).data; total = time.perf_counter() - t
ei, y = d.edge_index, d.y
deg = torch.bincount(ei[1], minlength=d.num_nodes)
(path,) = (S.cache_dir() / "processed" / "sbm").glob(sys.argv[1] + "-*/graph.pt")
print(json.dumps({**timed, "first_load_s": total, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  / 1024, "rss_after_imports_mb": base / 1024, "nodes": d.num_nodes, "edges": ei.size(1),
                  "edge_homophily": (y[ei[0]] == y[ei[1]]).float().mean().item(),
                  "isolated_frac": (deg == 0).float().mean().item(), "max_degree": int(deg.max()),
                  "cache_file_mb": path.stat().st_size / 2**20}))
"""

_LOAD = r"""
import json, resource, sys, time
import torch
from qgnn.data import load_dataset
torch.set_num_threads(1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); d = load_dataset(sys.argv[1]).data; opened = time.perf_counter() - t
t = time.perf_counter()
for k in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
    d[k].sum().item()
touched = time.perf_counter() - t
print(json.dumps({"open_s": opened, "first_touch_s": touched, "peak_rss_mb":
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_imports_mb": base / 1024}))
"""


def _child(code: str, name: str, cache: Path) -> dict:
    env = {**os.environ, "QGNN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name}: child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plain(data, hidden: int | None, epochs: int) -> dict:
    """Feature-only model (logistic regression when hidden is None, else a 2-layer MLP), best validation epoch."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    c = int(data.y.max()) + 1
    layers = ([torch.nn.Dropout(0.5), torch.nn.Linear(data.x.size(1), c)] if hidden is None else
              [torch.nn.Dropout(0.5), torch.nn.Linear(data.x.size(1), hidden), torch.nn.ReLU(), torch.nn.Dropout(0.5),
               torch.nn.Linear(hidden, c)])
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    best = (-1.0, 0.0, 0)
    for ep in range(1, epochs + 1):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(data.x[data.train_mask]), data.y[data.train_mask]).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(data.x).argmax(1)
        val, test = ((pred[m] == data.y[m]).float().mean().item() for m in (data.val_mask, data.test_mask))
        if val > best[0]:
            best = (val, test, ep)
    return {"val_acc": best[0], "test_acc": best[1], "best_epoch": best[2], "epochs": epochs}


def _gcn(epochs: int, normalize: bool | None = None) -> dict:
    """GCN (hidden 128) on sbm-100k through the runner, one seed; ``normalize``: --normalize-features."""
    import time

    from qgnn.train import Runner, TrainConfig

    cfg = TrainConfig(dataset="sbm-100k", model="gcn", hidden=128, epochs=epochs, patience=epochs, seeds=1,
                      normalize_features=normalize)
    t = time.perf_counter()
    res = Runner(cfg, progress=False).run()
    run = res["runs"][0]
    out = {k: run[k] for k in ("val_acc", "test_acc", "best_epoch", "seconds_per_epoch")}
    flag = "" if normalize is None else (" --normalize-features" if normalize else " --no-normalize-features")
    out.update(epochs=epochs, wall_s=time.perf_counter() - t, normalize_features=res["config"]["normalize_features"],
               command=f"qgnn train --dataset sbm-100k --model gcn --hidden 128 --epochs {epochs} --patience {epochs} "
                       f"--seeds 1{flag}")
    return out


def accuracy(cache: Path, epochs: int, parts) -> dict:
    """Part ``acc``: feature-only models and GCN at the default (unnormalised features); part ``acc-norm``: GCN
    with PyG's row normalisation, the default of bag-of-words datasets (why sbm's default differs)."""
    os.environ["QGNN_CACHE"] = str(cache)
    import torch

    from qgnn.data import load_dataset

    torch.set_num_threads(1)
    out = {}
    if "acc" in parts:
        data = load_dataset("sbm-100k").data
        out = {"logreg": _plain(data, None, 200), "mlp": _plain(data, 128, 200), "gcn": _gcn(epochs)}
    if "acc-norm" in parts:
        out["gcn_normalized"] = _gcn(epochs, normalize=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=["gen", "load", "acc", "acc-norm"],
                   default=["gen", "load", "acc", "acc-norm"])
    p.add_argument("--epochs", type=int, default=50, help="GCN epochs for the accuracy part (default: 50)")
    args = p.parse_args(argv)

    path = RESULTS_DIR / "sbm.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    cache = Path(tempfile.mkdtemp(prefix="qgnn-sbm-bench-"))
    try:
        if "gen" in args.parts or "load" in args.parts:
            for name in NAMES:
                gen = _child(_GEN, name, cache)  # an empty cache: generated and written
                print(name, "gen", json.dumps(gen), flush=True)
                if "gen" in args.parts:
                    res.setdefault("gen", {})[name] = gen
                if "load" in args.parts:
                    res.setdefault("load", {})[name] = load = _child(_LOAD, name, cache)
                    print(name, "load", json.dumps(load), flush=True)
        if {"acc", "acc-norm"} & set(args.parts):
            acc = res.setdefault("acc", {}).setdefault("sbm-100k", {})
            acc.update(accuracy(cache, args.epochs, args.parts))
            print("acc", json.dumps(res["acc"]), flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    from qgnn.data.sbm import DEFAULTS, GENERATOR_VERSION, PRESETS
    from qgnn.env import environment

    res.setdefault("commands", {}).update(dict.fromkeys(args.parts, command_line()))
    res.update(settings={"defaults": DEFAULTS, "presets": PRESETS, "generator_version": GENERATOR_VERSION},
               env=environment())
    write_json("sbm", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
