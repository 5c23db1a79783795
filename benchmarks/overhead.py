"""Per-epoch FP32 training time: qgnn's loop vs. a plain PyG script doing the same work.

The plain script is the textbook loop (train step, then one evaluation forward
with train / val / test accuracy and the validation loss, best validation epoch
kept). Both run in the same process on the same data, alternating, several
times; the table gives the median seconds per epoch of each and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GCNConv, GINConv, global_add_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command_line, update_section, write_json  # noqa: E402


class PlainGCN(torch.nn.Module):
    def __init__(self, i, h, o):
        super().__init__()
        self.c1, self.c2 = GCNConv(i, h, cached=True), GCNConv(h, o, cached=True)

    def forward(self, x, ei):
        x = F.dropout(x, 0.5, self.training)
        x = F.dropout(F.relu(self.c1(x, ei)), 0.5, self.training)
        return self.c2(x, ei)


def plain_node_epochs(data, epochs: int) -> float:
    """Seconds per epoch of a plain PyG GCN script (Kipf recipe) with per-epoch evaluation."""
    torch.manual_seed(0)
    model = PlainGCN(data.num_features, 16, int(data.y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    best = -1.0
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            out = model(data.x, data.edge_index)
            pred = out.argmax(-1)
            accs = [(pred[m] == data.y[m]).float().mean().item()
                    for m in (data.train_mask, data.val_mask, data.test_mask)]
            F.cross_entropy(out[data.val_mask], data.y[data.val_mask]).item()
        if accs[1] > best:
            best = accs[1]
            best_state = {k: v.clone() for k, v in model.state_dict().items()}  # noqa: F841 (as qgnn does)
    return (time.perf_counter() - t0) / epochs


class PlainGIN(torch.nn.Module):
    def __init__(self, i, h, o, layers=5):
        super().__init__()
        def mlp(a):
            return torch.nn.Sequential(torch.nn.Linear(a, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU(),
                                       torch.nn.Linear(h, h))
        self.convs = torch.nn.ModuleList([GINConv(mlp(i if k == 0 else h)) for k in range(layers)])
        self.bns = torch.nn.ModuleList([torch.nn.BatchNorm1d(h) for _ in range(layers)])
        self.heads = torch.nn.ModuleList([torch.nn.Linear(i, o)] + [torch.nn.Linear(h, o) for _ in range(layers)])

    def forward(self, x, ei, b):
        out = F.dropout(self.heads[0](global_add_pool(x, b)), 0.5, self.training)
        for conv, bn, head in zip(self.convs, self.bns, self.heads[1:], strict=True):
            x = F.relu(bn(conv(x, ei)))
            out = out + F.dropout(head(global_add_pool(x, b)), 0.5, self.training)
        return out


def plain_graph_epochs(ds, split, epochs: int) -> float:
    """Seconds per epoch of a plain PyG GIN script: train epoch, then val and test accuracy."""
    torch.manual_seed(0)
    model = PlainGIN(ds.num_features, 64, ds.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 50, 0.5)
    train = DataLoader(ds.dataset[split.train], batch_size=32, shuffle=True)
    val = DataLoader(ds.dataset[split.val], batch_size=256)
    test = DataLoader(ds.dataset[split.test], batch_size=256)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for b in train:
            opt.zero_grad()
            F.cross_entropy(model(b.x, b.edge_index, b.batch), b.y).backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            for loader in (val, test):
                for b in loader:
                    out = model(b.x, b.edge_index, b.batch)
                    (out.argmax(-1) == b.y).sum().item()
                    F.cross_entropy(out, b.y, reduction="sum").item()
    return (time.perf_counter() - t0) / epochs


def qgnn_epochs(cfg) -> float:
    from qgnn.train import Runner

    return Runner(cfg, progress=False).run()["timing"]["seconds_per_epoch"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--node-epochs", type=int, default=200)
    p.add_argument("--graph-epochs", type=int, default=5)
    args = p.parse_args(argv)

    from qgnn.data import load_dataset
    from qgnn.train import TrainConfig

    cora = load_dataset("cora", normalize_features=True)
    proteins = load_dataset("proteins")
    split = proteins.folds(k=10, seed=0)[0]
    cases = {
        "gcn-cora": (lambda: plain_node_epochs(cora.data, args.node_epochs),
                     TrainConfig(dataset="cora", model="gcn", seeds=1, epochs=args.node_epochs,
                                 patience=args.node_epochs)),
        "gin-proteins": (lambda: plain_graph_epochs(proteins, split, args.graph_epochs),
                         TrainConfig(dataset="proteins", model="gin", folds=1, epochs=args.graph_epochs)),
    }
    out, rows = {}, ["| case | plain PyG s / epoch | qgnn s / epoch | ratio qgnn / plain | target |",
                     "|---|---|---|---|---|"]
    for name, (plain, cfg) in cases.items():
        plain_t, ours_t = [], []
        for _ in range(args.repeats):  # alternate so drift on a shared machine hits both alike
            plain_t.append(plain())
            ours_t.append(qgnn_epochs(cfg))
        mp, mq = statistics.median(plain_t), statistics.median(ours_t)
        out[name] = {"plain": plain_t, "qgnn": ours_t, "median_plain": mp, "median_qgnn": mq, "ratio": mq / mp}
        verdict = "met" if mq / mp <= 1.2 else "NOT met"
        rows.append(f"| {name} | {mp:.5f} | {mq:.5f} | {mq / mp:.3f} | <= 1.2 ({verdict}) |")
        print(rows[-1], flush=True)
    from qgnn.env import environment

    write_json("overhead", {"cases": out, "repeats": args.repeats, "command": command_line(), "env": environment()})
    update_section("overhead", "## FP32 training overhead vs. a plain PyG script\n\nSame process, alternating, "
                   f"median of {args.repeats} repeats; one thread.\n\n" + "\n".join(rows)
                   + f"\n\nCommand: `{command_line()}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
