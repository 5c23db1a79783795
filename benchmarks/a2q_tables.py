"""A2Q's per-node activation tables grouped by width against one table at the widest container (issue 25).

A2Q learns a width per node; the packed runtime stores a per-node table whose widths need more than one
container as :class:`qgnn.export.tables.GroupedRows` (one table per 2 / 4 / 8-bit container). This script
measures what that costs and saves on models trained by the plain command (A2Q from 4 bits, GCN), exported:

* the bytes of every activation table of the load step and one forward (``nbytes``: codes, fields, per-node
  scales and the grouping's index), grouped and at the widest container;
* the forward time, both layouts alternately in one process (``--rounds`` rounds of ``--repeats`` passes after
  the load step; the median of the per-round ratios), one thread;
* the learnt widths (share of nodes per container, per table).

Results: ``benchmarks/results/runtime-a2q.json``, section ``runtime-a2q`` of docs/notes/export.md.

    OMP_NUM_THREADS=1 python benchmarks/a2q_tables.py
    python benchmarks/a2q_tables.py --render
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS_DIR, ROOT, command_line, update_section, write_json  # noqa: E402
from runtime import median_seconds, model_file  # noqa: E402

# (dataset, training options beside the plain command's): sbm-100k on sampled mini-batches, 3 epochs
CASES = [("Cora", {}), ("sbm-100k", {"hidden": 256, "fanout": [10, 5], "epochs": 3})]


def _forward_tables(model, data, grouped: bool) -> list:
    """The top-level activation tables of the load step (the features encoded as the first layer's input) and
    one packed forward, with grouping on or off."""
    import qgnn.export.tables as t

    made, applies = [], t.GroupedRows.applies
    init_q, init_g = t.QRows.__init__, t.GroupedRows.__init__

    def rec(init):
        def wrapped(self, *a, **k):
            init(self, *a, **k)
            made.append(self)
        return wrapped

    t.QRows.__init__, t.GroupedRows.__init__ = rec(init_q), rec(init_g)
    if not grouped:
        t.GroupedRows.applies = staticmethod(lambda q, n: False)
    try:
        model.packed.run(model.packed.prepare(data.x, data.edge_index))
    finally:
        t.QRows.__init__, t.GroupedRows.__init__, t.GroupedRows.applies = init_q, init_g, applies
    inner = {id(s) for m in made if isinstance(m, t.GroupedRows) for s in m.groups}
    return [m for m in made if id(m) not in inner]


def measure(dataset: str, over: dict, rounds: int, repeats: int) -> dict:
    import qgnn.export.tables as t
    from qgnn.data import load_dataset
    from qgnn.export import load_int_model

    path = model_file(dataset, "gcn", 4, over, method="a2q")
    model = load_int_model(path)
    d = load_dataset(dataset).data
    prepared = model.packed.prepare(d.x, d.edge_index)
    sizes = {}
    for grouped in (True, False):
        tables = _forward_tables(model, d, grouped)
        sizes["grouped" if grouped else "widest"] = [
            {"type": type(m).__name__, "rows": m.n, "channels": m.channels, "bytes": m.nbytes(),
             **({"containers": [s.bits for s in m.groups], "rows_per_container": [s.n for s in m.groups]}
                if isinstance(m, t.GroupedRows) else {"container": m.bits})} for m in tables]
    applies = t.GroupedRows.applies
    times = {"grouped": [], "widest": []}
    try:
        for _ in range(rounds):
            for name in ("grouped", "widest"):
                t.GroupedRows.applies = applies if name == "grouped" else staticmethod(lambda q, n: False)
                # one untimed pass first: plans, splits, the GEMM backend choice
                times[name].append(median_seconds(lambda: model.packed.run(prepared), repeats) * 1e3)
    finally:
        t.GroupedRows.applies = applies
    ratios = [g / w for g, w in zip(times["grouped"], times["widest"], strict=True)]
    total = {k: sum(r["bytes"] for r in v) for k, v in sizes.items()}
    return {"dataset": dataset, "model": "gcn", "method": "a2q", "bits": 4, "trained": over,
            "file": str(path.relative_to(ROOT)), "tables": sizes, "bytes": total,
            "bytes_ratio": total["grouped"] / total["widest"], "ms": times,
            "time_ratio": statistics.median(ratios)}


def render() -> None:
    path = RESULTS_DIR / "runtime-a2q.json"
    if not path.exists():
        return
    res = json.loads(path.read_text())
    lines = ["A2Q's per-node activation tables grouped by width (`GroupedRows`) against one table at the widest "
             "container, on GCN models of the plain command (`qgnn train --model gcn --method a2q`, from 4 bits; "
             "sbm-100k on mini-batches, hidden 256, fanout [10, 5], 3 epochs), exported. Bytes: every activation "
             "table of the load step (the encoded features) and one forward (codes, fields, per-node scales, the "
             "grouping's index). Time: both layouts "
             "alternately in one process, one thread, median of the per-round ratios.", "",
             "| dataset | tables grouped / widest (MB) | ratio | nodes per 2 / 4 / 8-bit container (largest table) "
             "| forward ms grouped / widest | time ratio |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        big = max(r["tables"]["grouped"], key=lambda x: x["bytes"])
        per = dict(zip(big.get("containers", [big.get("container")]), big.get("rows_per_container", [big["rows"]]),
                       strict=True))
        split = " / ".join(str(per.get(b, 0)) for b in (2, 4, 8))
        g, w = statistics.median(r["ms"]["grouped"]), statistics.median(r["ms"]["widest"])
        lines.append(f"| {r['dataset']} | {r['bytes']['grouped'] / 1e6:.2f} / {r['bytes']['widest'] / 1e6:.2f} "
                     f"| {r['bytes_ratio']:.2f}x | {split} | {g:.1f} / {w:.1f} | {r['time_ratio']:.2f}x |")
    lines += ["", f"Command: `{res['command']}`. The time is the price of the bytes: the narrow groups' codes are "
              "packed and unpacked, and a chunk makes one GEMM call and one embedding bag per group."]
    update_section("runtime-a2q", "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--render", action="store_true")
    args = p.parse_args()
    if not args.render:
        rows = []
        for dataset, over in CASES:
            print(f"[a2q] {dataset}", flush=True)
            rows.append(measure(dataset, over, args.rounds, args.repeats))
            print(f"[a2q] {dataset}: tables {rows[-1]['bytes_ratio']:.2f}x, time {rows[-1]['time_ratio']:.2f}x",
                  flush=True)
        write_json("runtime-a2q", {"command": command_line(), "rows": rows})
    render()


if __name__ == "__main__":
    main()
