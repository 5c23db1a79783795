"""Scale (issue 24): the pieces measured so far, rendered into docs/notes/scale.md.

Today this script only renders; the measurements come from the scripts that own them:

* ``benchmarks/sampler.py``: qgnn's torch neighbour sampler (``qgnn.data.sampler``), batches per second on a
  seeded 1M-node / 10M-edge random graph (benchmarks/results/sampler.json);
* ``benchmarks/sbm.py``: the named synthetic graphs ``sbm-100k`` / ``sbm-1m`` (``qgnn.data.sbm``): generation
  time, peak RSS, cache, and what FP32 reaches on sbm-100k (benchmarks/results/sbm.json).

The training targets of issue 24 (every method on sbm-1m mini-batches, peak RSS, epoch-time ratios) will be
cells of this script once mini-batch training lands.

    python benchmarks/scale.py --render
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402


def _load(name: str) -> dict | None:
    path = _harness.RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def render() -> None:
    md = ["## Scale: sampler and synthetic graphs (issue 24, first pieces)", ""]
    s = _load("sampler")
    if s:
        g = s["graph"]
        target = 20
        md += [f"**Neighbour sampler** (`qgnn.data.sampler.TorchNeighborSampler`, plain torch, in PyG's `NodeLoader` "
               f"when neither pyg-lib nor torch-sparse imports): {s['seeds_per_batch']:,} seeds, fanout "
               f"{s['fanout']}, {s['threads']} thread, on a {g['nodes']:,}-node / {g['edges']:,}-edge graph "
               f"({g['kind']}, seed {g['seed']}); median of {s['timed_batches']} batches after "
               f"{s['warmup_batches']} warm-up ones.", "",
               _harness.table(["what", "batches / s", "ms / batch (median)", "target"], [
                   f"| `sample_from_nodes` | {s['sampler_batches_per_s']:.1f} | "
                   f"{s['sampler_ms_per_batch']['median']:.1f} "
                   f"| >= {target} ({'met' if s['sampler_batches_per_s'] >= target else 'not met'}) |",
                   f"| `NodeLoader` batch (sampling + PyG's filtering, {g['features']} features) | "
                   f"{s['loader_batches_per_s']:.1f} | {s['loader_ms_per_batch']['median']:.1f} | |"]), "",
               f"A batch holds {s['mean_sampled_nodes']:,.0f} nodes and {s['mean_sampled_edges']:,.0f} edges on "
               f"average; building the sampler (CSC) took {s['sampler_build_s']:.2f} s; peak RSS "
               f"{s['peak_rss_mb']:,.0f} MB. Command: `{s['command']}`", ""]
    b = _load("sbm")
    if b:
        rows = []
        for name, gen in b["gen"].items():
            load = b.get("load", {}).get(name, {})
            rows.append(f"| {name} | {gen['nodes']:,} | {gen['edges']:,} | {gen['edge_homophily']:.3f} | "
                        f"{gen['max_degree']:,} | {gen['generate_s']:.2f} | {gen['peak_rss_mb']:,.0f} | "
                        f"{gen['cache_file_mb']:,.0f} | {load.get('peak_rss_mb', float('nan')):,.0f} |")
        md += ["**Synthetic graphs** (`qgnn.data.sbm`: degree-corrected stochastic block model, 128 signed Gaussian "
               "features around 40 class centroids, seeded 10 / 10 / 80 split; one thread, each figure in a fresh "
               "process; RSS includes about 390 MB of imports).", "",
               _harness.table(["dataset", "nodes", "directed edges", "edge homophily", "max degree", "generate s",
                               "peak RSS MB (generate)", "cache MB", "peak RSS MB (load from cache)"], rows), ""]
        acc = b.get("acc", {}).get("sbm-100k")
        if acc:
            gcn = acc["gcn"]
            md += [f"What FP32 reaches on sbm-100k (test accuracy at the best validation epoch; chance 2.5 %): "
                   f"features alone, logistic regression {100 * acc['logreg']['test_acc']:.1f} %, 2-layer MLP "
                   f"{100 * acc['mlp']['test_acc']:.1f} %; GCN (hidden 128, {gcn['epochs']} full-batch epochs, one "
                   f"seed) {100 * gcn['test_acc']:.1f} % (validation {100 * gcn['val_acc']:.1f} %, best epoch "
                   f"{gcn['best_epoch'] + 1} of {gcn['epochs']}: still rising), {gcn['seconds_per_epoch']:.1f} s / "
                   f"epoch: `{gcn['command']}`.", ""]
            norm = acc.get("gcn_normalized")
            if norm:
                md[-2] += (f" Its features are not row-normalised by default: with PyG's NormalizeFeatures (the "
                           f"default of bag-of-words datasets) the same GCN reaches {100 * norm['test_acc']:.1f} %: "
                           f"`{norm['command']}`.")
        md += ["Commands: " + ", ".join(f"`{c}`" for c in sorted(set(b.get("commands", {}).values())))]
    _harness.publish("scale", "\n".join(md))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render", action="store_true", help="rebuild the docs section from the JSON files (the default)")
    p.parse_args(argv)
    render()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
