"""The a2q method: which quantizer each slot gets, the memory penalty it attaches, training on synthetic
graphs (node and graph level), options, the cost model and checkpoint reload."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from qgnn.data.synthetic import random_graph_dataset, random_node_dataset
from qgnn.errors import ConfigError
from qgnn.methods import QuantConfig, method_names, quantize_
from qgnn.methods.a2q import A2QMemoryPenalty
from qgnn.models import build_model
from qgnn.nn import QuantModule
from qgnn.quant.a2q import A2QQuantizer
from qgnn.search.cost import cost_report
from qgnn.train.tasks import penalty, penalty_modules


def _a2q_gcn(options=None, bits=4, **model_kw):
    torch.manual_seed(0)
    ds = random_node_dataset(num_nodes=60, num_features=12, seed=1, normalize_features=True)
    model = build_model("gcn", "node", ds.num_features, ds.num_classes, **model_kw)
    quantize_(model, QuantConfig(method="a2q", bits=bits, options=options or {}))
    return model, ds.data


def test_registered_and_slots_get_the_right_granularity():
    assert "a2q" in method_names()
    model, _ = _a2q_gcn()
    convs = [m for m in model.modules() if isinstance(m, QuantModule)]
    assert len(convs) == 2
    for conv in convs:
        q = conv.quantizers()
        assert set(q) == {"input", "weight", "xw", "edge"} and all(isinstance(v, A2QQuantizer) for v in q.values())
        assert q["input"].granularity == "node" and q["xw"].granularity == "node"
        assert q["input"].local_grad and q["input"].layout.num_nodes is None  # sized on the first forward
        assert q["edge"].granularity == "tensor" and not q["edge"].local_grad
        assert q["weight"].granularity == "channel" and q["weight"].layout.ch_axis == 0 and q["weight"].signed
    mem = model.a2q_memory
    assert isinstance(mem, A2QMemoryPenalty) and len(mem.quantizers) == 4
    assert mem.target_avg_bits == 2.0 and mem.weight == 1e-4
    # the penalty holds references, not sub-modules: no duplicated state-dict entries
    assert not any(k.startswith("a2q_memory") for k in model.state_dict())
    assert sum(isinstance(m, A2QMemoryPenalty) for m in penalty_modules(model)) == 1


def test_trains_on_a_synthetic_graph_with_finite_loss_and_learns_widths():
    model, data = _a2q_gcn({"bits_lr_scale": 5.0})
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    pens = penalty_modules(model)
    losses = []
    for _ in range(30):
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask]) + penalty(pens)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    q_in = model.convs[0].quant["input"]
    assert q_in.layout.num_nodes == 60 and q_in.bit_width.shape == (60,)
    assert q_in.b_delta.grad is not None and (q_in.b.detach() != 4.0).any()  # the widths moved
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(data.x, data.edge_index)).all()
    assert model.a2q_memory.penalty() == 0.0  # eval mode


def test_memory_penalty_drives_widths_below_the_initial_bits():
    model, data = _a2q_gcn({"bits_lr_scale": 10.0, "memory_weight": 1.0, "target_avg_bits": 2.0,
                            "local_weight": 0.0})
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    pens = penalty_modules(model)
    for _ in range(40):
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        (F.cross_entropy(out[data.train_mask], data.y[data.train_mask]) + penalty(pens)).backward()
        opt.step()
    kb, target = model.a2q_memory.memory()
    assert float(kb.detach()) < 1.1 * target
    assert model.convs[0].quant["input"].width_table.float().mean() < 3


def test_cost_report_counts_per_node_widths_at_their_mean():
    model, data = _a2q_gcn()
    model.train()
    model(data.x, data.edge_index)
    q_in = model.convs[0].quant["input"]
    with torch.no_grad():
        # half the nodes at 2 bits: b = b_init + bits_lr_scale · b_delta
        q_in.b_delta.copy_(torch.where(torch.arange(60) < 30, -2.0 / q_in.bits_lr_scale, 0.0))
    rep = cost_report(model, data)
    layer = rep.layers[0]
    assert layer["activations"]["input"]["bits"] == pytest.approx(3.0)
    assert rep.avg_bits < 4  # (model bytes: a 60-node toy graph's per-node scale tables outweigh its weights)
    assert model.convs[0].slot_bits("input") == 4  # storage width: the widest code


@pytest.mark.parametrize("options, match", [
    ({"node_strategy": "graph"}, "node_strategy"),
    ({"node_stratgy": "nn"}, "unknown a2q option"),
    ({"act_signed": "yes"}, "act_signed"),
    ({"target_avg_bits": 0.5}, "target_avg_bits"),
    ({"local_loss": "huber"}, "local_loss"),
])
def test_bad_options_raise_config_error(options, match):
    torch.manual_seed(0)
    model = build_model("gcn", "node", 8, 3)
    with pytest.raises(ConfigError, match=match):
        quantize_(model, QuantConfig(method="a2q", bits=4, options=options))


def test_one_bit_start_gives_unsigned_one_bit_features_and_two_bit_weights():
    model, data = _a2q_gcn(bits=1)
    model.train()
    model(data.x, data.edge_index)
    conv = model.convs[0]
    assert conv.quant["input"].width_table.unique().tolist() == [1]  # non-negative features: unsigned
    assert conv.quant["weight"].width_table.unique().tolist() == [2]  # signed weights need 2 bits


def test_memory_can_count_the_weights_too():
    model, data = _a2q_gcn({"memory_weights": True})
    assert len(model.a2q_memory.quantizers) == 6
    model.train()
    model(data.x, data.edge_index)
    _, target = model.a2q_memory.memory()
    feats = 60 * (12 + 16 + 16 + 3)
    weights = 12 * 16 + 16 * 3
    assert target == pytest.approx(2.0 * (feats + weights) / 8 / 1024)


def test_nearest_neighbour_strategy_on_graph_batches():
    from torch_geometric.loader import DataLoader

    torch.manual_seed(0)
    ds = random_graph_dataset(num_graphs=24, seed=0)
    model = build_model("gin", "graph", ds.num_features, ds.num_classes, num_layers=2, hidden=16)
    quantize_(model, QuantConfig(method="a2q", bits=4, options={"node_strategy": "nn", "groups": 8}))
    qs = [q for m in model.modules() if isinstance(m, QuantModule) for s, q in m.quantizers().items()
          if s in ("input", "xw", "aggr", "output")]
    assert qs and all(q.granularity == "nn" and q.layout.groups == 8 and not q.local_grad for q in qs)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    pens = penalty_modules(model)
    model.train()
    for batch in DataLoader(ds.dataset, batch_size=6, shuffle=True):  # different sizes every batch
        opt.zero_grad()
        loss = F.cross_entropy(model(batch.x, batch.edge_index, batch.batch), batch.y) + penalty(pens)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        b = next(iter(DataLoader(ds.dataset, batch_size=24)))
        assert torch.isfinite(model(b.x, b.edge_index, b.batch)).all()


def test_graph_tasks_default_to_nearest_neighbour_groups():
    from qgnn.methods import apply_method
    from qgnn.train import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(dataset="synthetic-graph", model="gin", method="a2q", bits=4).resolve("graph")
    assert cfg.quant["options"]["node_strategy"] == "nn"  # resolved, so the results JSON records it
    model = apply_method(build_model("gin", "graph", 8, 2, num_layers=2, hidden=8), cfg)
    assert model.convs[0].nn[0].quant["input"].granularity == "nn"
    cfg = TrainConfig(dataset="synthetic-graph", model="gin", method="a2q", bits=4,
                      quant={"options": {"node_strategy": "node"}}).resolve("graph")  # an explicit choice wins
    model = apply_method(build_model("gin", "graph", 8, 2, num_layers=2, hidden=8), cfg)
    assert model.convs[0].nn[0].quant["input"].granularity == "node"


def test_per_node_tables_refuse_a_graph_of_another_size():
    model, data = _a2q_gcn()
    model.eval()
    with torch.no_grad():
        model(data.x, data.edge_index)
        with pytest.raises(ConfigError, match="node_strategy='nn'"):
            model(data.x[:40], data.edge_index[:, (data.edge_index < 40).all(0)])


def test_cli_training_reports_cost_and_the_checkpoint_reloads_exactly(tmp_path, capsys):
    from qgnn.cli import main
    from qgnn.train import TrainConfig, load_model
    from qgnn.train.runner import load_for

    out, ckpt = tmp_path / "a2q.json", tmp_path / "a2q.ckpt"
    assert main(["train", "--dataset", "synthetic-node", "--model", "gcn", "--method", "a2q", "--bits", "4",
                 "--seeds", "2", "--epochs", "15", "--out", str(out), "--save", str(ckpt), "--quiet"]) == 0
    assert "a2q" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["config"]["method"] == "a2q" and 1 <= res["cost"]["avg_bits"] <= 8
    model, meta = load_model(ckpt)
    assert isinstance(model.a2q_memory, A2QMemoryPenalty)
    data = load_for(TrainConfig.from_dict(res["config"])).data
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    acc = (pred[data.test_mask] == data.y[data.test_mask]).float().mean().item()
    assert acc == pytest.approx(meta["selected_run"]["test_acc"], abs=1e-6)
    q = model.convs[0].quant["input"]
    assert q._initialized and q.layout.num_nodes == data.num_nodes


@pytest.mark.parametrize("model_name", ["gcn", "gat", "gin", "sage"])
def test_every_node_model_quantizes_trains_and_keeps_its_float_state_keys(model_name):
    torch.manual_seed(0)
    ds = random_node_dataset(num_nodes=40, num_features=8, seed=2)
    model = build_model(model_name, "node", 8, ds.num_classes)
    float_keys = set(model.state_dict())
    quantize_(model, QuantConfig(method="a2q", bits=4, options={"memory_weights": True}))
    assert float_keys <= set(model.state_dict())
    model.train()
    out = model(ds.data.x, ds.data.edge_index)
    loss = out.sum() + penalty(penalty_modules(model))
    loss.backward()
    assert torch.isfinite(out).all() and torch.isfinite(loss)
    rep = cost_report(model, ds.data)  # (SAGE's default slots leave its aggregate float: 32-bit operands)
    assert 1 <= rep.avg_bits < 32 and rep.bitops < rep.bitops_fp32
