"""Neighbour-sampling speed of qgnn's torch sampler (qgnn.data.sampler.TorchNeighborSampler) on a seeded random
graph: batches per second for ``--seeds`` seed nodes with fanout ``--fanout``, one thread.

Two figures, each the median over ``--batches`` timed batches after ``--warmup`` untimed ones:
* ``sampler``: ``sample_from_nodes`` alone (seeds drawn as a shuffled loader would draw them);
* ``loader``: one batch of PyG's ``NodeLoader`` with this sampler (sampling + PyG's filtering into a ``Data``
  with ``n_id`` / ``e_id``; with ``--features C`` the graph carries C float features per node to gather).

The graph: ``--nodes`` nodes, ``--edges`` directed edges with endpoints uniform at random (torch.randint,
``--seed``), so in-degrees are Poisson(E / N). Writes benchmarks/results/sampler.json.

    OMP_NUM_THREADS=1 python benchmarks/sampler.py                      # 1M nodes, 10M edges, [15, 10], 1024
    OMP_NUM_THREADS=1 python benchmarks/sampler.py --nodes 100000 --edges 1000000 --batches 20
    OMP_NUM_THREADS=1 python benchmarks/sampler.py --dataset sbm-1m     # the named synthetic graph
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, write_json  # noqa: E402


def _median_rate(fn, warmup: int, batches: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times), times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--edges", type=int, default=10_000_000)
    p.add_argument("--seeds", type=int, default=1024, help="seed nodes per batch")
    p.add_argument("--fanout", type=int, nargs="+", default=[15, 10], help="one per hop; -1 = all neighbours")
    p.add_argument("--batches", type=int, default=50, help="timed batches per figure")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--features", type=int, default=0, help="float features per node gathered by the loader")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default=None,
                   help="sample a named dataset's graph (e.g. sbm-1m, with its 128 features) instead of the random one")
    p.add_argument("--out", default=None,
                   help="results JSON name under benchmarks/results (default: sampler, or sampler-<dataset>)")
    args = p.parse_args(argv)

    import torch
    from torch_geometric.data import Data
    from torch_geometric.loader import NodeLoader
    from torch_geometric.sampler import NodeSamplerInput

    from qgnn.data.sampler import TorchNeighborSampler
    from qgnn.env import environment, neighbor_sampler

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.dataset:
        from qgnn.data import load_dataset

        loaded = load_dataset(args.dataset).data
        data = Data(edge_index=loaded.edge_index, x=loaded.x, num_nodes=loaded.num_nodes)
        args.nodes, args.edges, args.features = data.num_nodes, data.edge_index.size(1), data.x.size(1)
        kind = f"the {args.dataset} dataset (qgnn.data)"
    else:
        edge_index = torch.randint(0, args.nodes, (2, args.edges), generator=gen)
        data = Data(edge_index=edge_index, num_nodes=args.nodes)
        if args.features:
            data.x = torch.randn(args.nodes, args.features, generator=gen)
        kind = "uniform random endpoints (torch.randint)"
    graph_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sampler = TorchNeighborSampler(data, args.fanout, generator=torch.Generator().manual_seed(args.seed + 1))
    build_s = time.perf_counter() - t0

    order = torch.randperm(args.nodes, generator=gen)
    cursor = {"i": 0}
    sizes = []

    def sample_once():
        i = cursor["i"] % (args.nodes - args.seeds + 1)
        cursor["i"] = i + args.seeds
        seed = order[i:i + args.seeds]
        out = sampler.sample_from_nodes(NodeSamplerInput(input_id=None, node=seed))
        sizes.append((out.node.numel(), out.row.numel()))

    sampler_rate, sampler_times = _median_rate(sample_once, args.warmup, args.batches)
    nodes_per_batch = statistics.mean(s[0] for s in sizes)
    edges_per_batch = statistics.mean(s[1] for s in sizes)

    loader = NodeLoader(data, node_sampler=sampler, input_nodes=None, batch_size=args.seeds, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed + 2))
    it = iter(loader)
    loader_rate, loader_times = _median_rate(lambda: next(it), args.warmup, args.batches)

    result = {
        "graph": {"nodes": args.nodes, "edges": args.edges, "kind": kind, "dataset": args.dataset,
                  "seed": args.seed, "features": args.features},
        "seeds_per_batch": args.seeds, "fanout": args.fanout, "threads": args.threads,
        "timed_batches": args.batches, "warmup_batches": args.warmup,
        "sampler_backend_here": neighbor_sampler(),
        "graph_build_s": round(graph_s, 3), "sampler_build_s": round(build_s, 3),
        "sampler_batches_per_s": round(sampler_rate, 2),
        "sampler_ms_per_batch": {"median": round(1000 / sampler_rate, 3),
                                 "min": round(1000 * min(sampler_times), 3),
                                 "max": round(1000 * max(sampler_times), 3)},
        "loader_batches_per_s": round(loader_rate, 2),
        "loader_ms_per_batch": {"median": round(1000 / loader_rate, 3),
                                "min": round(1000 * min(loader_times), 3),
                                "max": round(1000 * max(loader_times), 3)},
        "mean_sampled_nodes": round(nodes_per_batch, 1), "mean_sampled_edges": round(edges_per_batch, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "environment": environment(),
        "command": command_line(),
    }
    path = write_json(args.out or ("sampler-" + args.dataset if args.dataset else "sampler"), result)
    print(f"sampler: {sampler_rate:.1f} batches/s ({1000 / sampler_rate:.1f} ms), loader: {loader_rate:.1f} "
          f"batches/s; {nodes_per_batch:.0f} nodes / {edges_per_batch:.0f} edges a batch; "
          f"build {build_s:.2f} s; peak RSS {result['peak_rss_mb']:.0f} MB -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
