"""Sampled mini-batch training of node tasks (issue 24, item 2): config semantics, the whole graph's GCN
normalisation in batches, parity with full-batch training at full fanout, seeding, accuracy, resume."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from conftest import needs_data
from qgnn.cli import main
from qgnn.data.sampler import make_neighbor_loader
from qgnn.models import build_model
from qgnn.quant.observers import Observer
from qgnn.testing.graphs import graph, hub_graph
from qgnn.train import Control, Interrupted, TrainConfig
from qgnn.train.checkpoint import load_state
from qgnn.train.minibatch import GlobalGCNNorm, MiniBatchNodeTask, gcn_convs, no_cached_normalisation
from qgnn.train.runner import Runner, apply_method
from qgnn.train.tasks import NodeTask


def _data(n=40, e=160, f=8, classes=3, seed=1, train_frac=0.5) -> Data:
    """A random directed graph with self loops and repeated edges (both must be handled like gcn_norm does)."""
    x, ei = graph(n, e, f, seed=seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    train = torch.rand(n, generator=g) < train_frac
    return Data(x=x, edge_index=ei, y=y, train_mask=train, val_mask=~train, test_mask=~train)


def _dense(n: int, edge_index, weight) -> torch.Tensor:
    """A[i, j] = sum of the weights of the edges j -> i."""
    return torch.zeros(n, n, dtype=weight.dtype).index_put_((edge_index[1], edge_index[0]), weight, accumulate=True)


def _freeze_observers(model):
    """Observers keep the ranges they have: eval mode, and model.train() no longer switches them back."""
    for m in model.modules():
        if isinstance(m, Observer):
            m.eval()
            m.train = lambda mode=True, m=m: m


# ------------------------------------------------------------------------------------------- config
def test_config_semantics():
    def res(task="node", **kw):
        c = TrainConfig(dataset={"node": "cora", "graph": "mutag", "rec": "gowalla"}[task],
                        model={"rec": "lightgcn", "graph": "gin"}.get(task, kw.pop("model", "gcn")), **kw)
        return c.resolve(task)

    full = res()
    assert (full.batch_size, full.fanout, full.minibatch) == (None, None, False)  # full batch, as before
    c = res(fanout=[15, 10])
    assert (c.batch_size, c.fanout, c.minibatch) == (1024, [15, 10], True)
    c = res(batch_size=64)
    assert (c.batch_size, c.fanout, c.minibatch) == (64, [-1, -1], True)
    c = res(batch_size=64, num_layers=3)
    assert c.fanout == [-1, -1, -1]
    assert TrainConfig.from_dict(c.to_dict()).to_dict() == c.to_dict()
    assert res("graph").batch_size == 32 and res("rec").batch_size == 2048  # graph / rec defaults unchanged
    # a node results file from before fanouts existed recorded an unused batch_size of 32: still full batch
    legacy = {k: v for k, v in full.to_dict().items() if k != "fanout"} | {"batch_size": 32}
    assert TrainConfig.from_dict(legacy).to_dict() == full.to_dict()
    # a hand-written config without a task: its batch_size means what it says
    assert TrainConfig.from_dict({"dataset": "cora", "batch_size": 32}).resolve("node").minibatch


def test_runner_picks_the_task_and_turns_the_gcn_cache_off():
    plain = Runner(TrainConfig(dataset="synthetic-node", seeds=1, epochs=1), progress=False)
    assert type(plain.task_for(None)) is NodeTask and all(c.cached for c in gcn_convs(plain.build()))
    sampled = Runner(TrainConfig(dataset="synthetic-node", seeds=1, epochs=1, fanout=[4, 4]), progress=False)
    task = sampled.task_for(None)
    assert isinstance(task, MiniBatchNodeTask) and task.loader.batch_size == 1024
    model = sampled.build()
    assert gcn_convs(model) and not any(c.cached for c in gcn_convs(model))


# ------------------------------------------------------------------------------------- GCN normalisation
def test_full_fanout_batch_weights_are_the_whole_graphs_gcn_norm():
    data = _data()
    n = data.num_nodes
    norm = GlobalGCNNorm.of(data.edge_index, n)
    task = MiniBatchNodeTask(data.clone().update({"train_mask": torch.ones(n, dtype=torch.bool)}), [-1, -1], n)
    (batch,) = list(task.loader)
    ei, w = norm.batch(batch)
    got = _dense(n, batch.n_id[ei], w)
    want = _dense(n, *gcn_norm(data.edge_index, None, n))
    assert torch.allclose(got, want, atol=1e-7)


def test_sampled_weights_are_rescaled_to_an_unbiased_estimate():
    x, ei = hub_graph(n=30, extra_edges=20)
    n, k, draws = x.size(0), 3, 400
    data = Data(x=x, edge_index=ei, y=torch.zeros(n, dtype=torch.long), train_mask=torch.ones(n, dtype=torch.bool))
    norm = GlobalGCNNorm.of(ei, n)
    torch.manual_seed(0)
    loader = make_neighbor_loader(data, torch.zeros(draws, dtype=torch.long), [k], 1, shuffle=False)  # the hub
    total = torch.zeros(n)
    for batch in loader:
        b_ei, w = norm.batch(batch)
        into_hub = b_ei[1] == 0
        assert int(into_hub.sum()) == k + 1  # k sampled neighbours and the self loop
        total += _dense(n, batch.n_id[b_ei], w)[0]
    want = _dense(n, *gcn_norm(ei, None, n))[0]
    neighbours = int(norm.neighbours[0])
    # each neighbour's rescaled weight is w n/k with probability k/n, else 0: mean w, variance w^2 (n/k - 1)
    tol = 5 * want * math.sqrt(neighbours / k - 1) / math.sqrt(draws)
    assert torch.all((total / draws - want).abs() <= tol + 1e-7)
    assert torch.isclose(total[0] / draws, want[0])  # the self loop is never rescaled


def test_the_edge_slot_quantizes_the_global_normalised_weights():
    data = _data()
    torch.manual_seed(0)
    cfg = TrainConfig(dataset="synthetic-node", method="qat", bits=8).resolve("node")
    model = no_cached_normalisation(apply_method(build_model("gcn", "node", 8, 3, hidden=8, dropout=0.0), cfg))
    conv = model.convs[0]
    assert "edge" in conv.quant
    seen = []
    conv.quant["edge"].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    task = MiniBatchNodeTask(data, [3, 2], 8)
    batch = next(iter(task.loader))
    model.train()
    task.batch_forward(model, batch)
    # the same weights (the batch reaches the layers as a CSR adjacency, its edges in target order), of the
    # edges into the rows the first layer computes: the trimmed forward leaves out the last hop's targets
    b_ei, w = task.gcn_norm().batch(batch)
    first_layer_targets = int(sum(batch.num_sampled_nodes[:2]))
    assert first_layer_targets < batch.num_nodes
    assert torch.equal(seen[-1].sort().values, w[b_ei[1] < first_layer_targets].sort().values)
    assert conv.normalize and not conv.cached  # the layer's own options are back after the batch


# ------------------------------------------------------------------------------- parity with full batch
@pytest.mark.parametrize("method", ["fp32", "qat"])
@pytest.mark.parametrize("model_name", ["gcn", "sage", "gin", "gat"])
def test_full_fanout_single_batch_equals_full_batch_training(model_name, method):
    """Fanout -1 and one batch holding every training node: the loss and every gradient are full-batch
    training's (qat: observers calibrated on the whole graph, then frozen, so both see the same ranges)."""
    data = _data()
    torch.manual_seed(0)
    model = build_model(model_name, "node", 8, 3, hidden=8, num_layers=2, dropout=0.0)
    if method == "qat":
        model = apply_method(model, TrainConfig(dataset="synthetic-node", model=model_name, method="qat",
                                                bits=8).resolve("node"))
        model.train()
        model(data.x, data.edge_index)
        _freeze_observers(model)
    full_model, mb_model = model, no_cached_normalisation(copy.deepcopy(model))
    task = MiniBatchNodeTask(data, [-1, -1], int(data.train_mask.sum()))
    assert len(task.loader) == 1
    full_loss = NodeTask(data).train_epoch(full_model, torch.optim.SGD(full_model.parameters(), lr=0.0), [])
    mb_loss = task.train_epoch(mb_model, torch.optim.SGD(mb_model.parameters(), lr=0.0), [])
    assert math.isclose(full_loss, mb_loss, rel_tol=1e-5)
    grads = {k: p.grad for k, p in mb_model.named_parameters()}
    for k, p in full_model.named_parameters():
        assert p.grad is not None and grads[k] is not None, k
        assert p.grad.abs().sum() > 0 or k.endswith("eps"), k
        assert torch.allclose(p.grad, grads[k], rtol=1e-5, atol=1e-7), k


# ------------------------------------------------------------------------------------ training, seeding
def test_an_epoch_steps_per_batch_and_is_reproducible_from_the_seed():
    data = _data(n=60, e=240)
    train = int(data.train_mask.sum())

    def epoch():
        torch.manual_seed(3)
        model = build_model("sage", "node", 8, 3, hidden=8, dropout=0.5)
        before = copy.deepcopy(model.state_dict())
        task = MiniBatchNodeTask(data, [3, 3], 8)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        seeds = []
        task.loader = _Recording(task.loader, seeds)
        loss = task.train_epoch(model, opt, [])
        return before, model.state_dict(), loss, seeds, opt.state_dict()["state"][0]["step"]

    before, after, loss, seeds, steps = epoch()
    assert math.isfinite(loss) and int(steps) == -(-train // 8)
    assert sorted(torch.cat(seeds).tolist()) == data.train_mask.nonzero().view(-1).tolist()  # each seed once
    assert all(not torch.equal(before[k], after[k]) for k in after)
    _, again, loss2, seeds2, _ = epoch()
    assert loss == loss2 and all(torch.equal(a, b) for a, b in zip(seeds, seeds2, strict=True))
    assert all(torch.equal(after[k], again[k]) for k in after)


class _Recording:
    """A loader whose batches' seeds (global ids) are recorded."""

    def __init__(self, loader, seen):
        self.loader, self.seen = loader, seen

    def __iter__(self):
        for batch in self.loader:
            self.seen.append(batch.n_id[:batch.batch_size].clone())
            yield batch


def test_per_node_state_covers_the_whole_graph():
    """A2Q's per-node tables get one entry per node of the graph (attach_graph), not per row of a batch."""
    from qgnn.quant.a2q import A2QQuantizer

    runner = Runner(TrainConfig(dataset="synthetic-node", method="a2q", bits=4, seeds=1, epochs=1, fanout=[2, 2],
                                batch_size=8), progress=False)
    model, task = runner.build(), runner.task_for(None)
    task.train_epoch(model, torch.optim.Adam(model.parameters(), lr=0.01), [])
    per_node = [q for q in model.modules() if isinstance(q, A2QQuantizer) and q.granularity == "node"]
    assert per_node and all(q.layout.num_nodes == runner.ds.data.num_nodes for q in per_node)


@needs_data
def test_sampled_gcn_on_cora_reaches_a_sane_accuracy():
    cfg = TrainConfig(dataset="cora", model="gcn", seeds=1, epochs=20, fanout=[10, 10], batch_size=32)
    results = Runner(cfg, progress=False).run()
    assert results["config"]["fanout"] == [10, 10] and results["config"]["batch_size"] == 32
    assert results["metrics"]["test_acc"]["mean"] > 0.7  # 0.81 measured (full batch, 200 epochs: 0.81)


def test_cli_records_the_batches(tmp_path):
    common = ["train", "--dataset", "synthetic-node", "--epochs", "1", "--seeds", "1", "--quiet"]
    for extra, want in (([], (None, None)), (["--fanout", "3", "-1"], (1024, [3, -1])),
                        (["--batch-size", "16"], (16, [-1, -1]))):
        out = tmp_path / f"r{len(extra)}.json"
        assert main([*common, *extra, "--out", str(out)]) == 0
        config = json.loads(out.read_text())["config"]
        assert (config["batch_size"], config["fanout"]) == want


# ------------------------------------------------------------------------------------------- resume
class _TracingRunner(Runner):
    """Records the model's state after every training epoch (the pattern of test_resume_methods)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trace: list[dict] = []

    def task_for(self, fold):
        task = super().task_for(fold)
        train_epoch = task.train_epoch

        def recorded(model, *args):
            loss = train_epoch(model, *args)
            self.trace.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return loss

        task.train_epoch = recorded
        return task


@pytest.mark.parametrize("method", ["fp32", "qat", "dq", "a2q"])
def test_minibatch_resume_is_bit_exact(tmp_path, method):
    cfg = TrainConfig(dataset="synthetic-node", model="gcn", method=method, bits=None if method == "fp32" else 4,
                      seeds=2, epochs=4, patience=100, dropout=0.5, fanout=[4, 4], batch_size=16)
    full_runner = _TracingRunner(cfg, progress=False)
    full = full_runner.run()
    control = Control()
    control.on_epoch_end.append(lambda r, e: setattr(control, "stop_requested", (r, e) == (1, 1)))
    state = tmp_path / "r.state.pt"
    with pytest.raises(Interrupted):
        _TracingRunner(cfg, progress=False, state_path=state, control=control).run()
    assert "minibatch" in load_state(state)["current"]["rng"]["generators"]
    second = _TracingRunner(cfg, progress=False, state_path=state)
    resumed = second.run(resume=True)
    skipped = 4 + 2  # the first run, and two epochs of the second
    assert len(full_runner.trace) == skipped + len(second.trace)
    for a, b in zip(full_runner.trace[skipped:], second.trace, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(full["runs"], resumed["runs"], strict=True):
        assert all(a[k] == b[k] for k in ("best_epoch", "val_acc", "test_acc", "val_loss"))


def test_a_minibatch_run_reports_the_cost_of_one_sampled_batch():
    """The cost entry of a mini-batch run is one sampled training batch's (docs/cost.md), and says so; the
    reduction ratio is that of the same model on the whole graph (every count is linear in nodes and edges)."""
    from qgnn.search import cost_report

    runner = Runner(TrainConfig(dataset="synthetic-node", method="qat", bits=8, seeds=1, epochs=1, fanout=[3, 3],
                                batch_size=8), progress=False)
    results = runner.run()
    cost = results["cost"]
    assert cost["per"].startswith("forward over one sampled training batch (8 seeds, fanout [3, 3]")
    model = runner.build()
    model.load_state_dict(results["_best_state"])
    whole = cost_report(model, runner.ds.data)
    assert cost["bitops"] < whole.bitops  # a batch, not the whole graph
    assert abs(cost["bitops_reduction"] - whole.bitops_reduction) < 0.5
