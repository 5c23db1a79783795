"""The cost model over a dataset's batches (a DataLoader): its counts add up over calls, so it reports what one
batch of every graph reports, at the memory of one batch; widths that differ between calls (A2Q's per-node
widths) are MAC- and element-weighted. Runner.cost measures graph datasets this way."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from qgnn.data.synthetic import random_graph_dataset
from qgnn.models import build_model
from qgnn.quant.a2q import A2QQuantizer
from qgnn.search import cost_report
from qgnn.search.cost import Op
from qgnn.train import TrainConfig
from qgnn.train.runner import apply_method


def test_the_same_op_adds_its_macs():
    a, b = Op("transform", 10, 4, 8), Op("transform", 5, 4, 8)
    assert a.absorb(b) and a.macs == 15 and (a.b_a, a.b_w) == (4, 8)


def test_one_width_differing_becomes_the_mac_weighted_mean_and_keeps_the_bitops_sum():
    a, b = Op("transform", 10, 4, 8, a_slot="input"), Op("transform", 30, 2, 8, a_slot="input")
    total = a.bitops + b.bitops
    assert a.absorb(b) and a.macs == 40 and a.b_a == pytest.approx(2.5) and a.bitops == pytest.approx(total)
    c, d = Op("aggregate", 6, 8, 3.0), Op("aggregate", 2, 8, 7.0)
    assert c.absorb(d) and c.b_w == pytest.approx(4.0) and c.b_a == 8


def test_other_ops_and_both_widths_differing_stay_apart():
    a = Op("transform", 10, 4, 8, a_slot="input")
    assert not a.absorb(Op("transform", 10, 2, 4, a_slot="input"))  # both widths: a mean of each is not exact
    assert not a.absorb(Op("aggregate", 10, 4, 8, a_slot="input"))
    assert not a.absorb(Op("transform", 10, 4, 8, a_slot="xw"))
    assert not a.absorb(Op("transform", 10, 4, 8, b_w_fp32=1, a_slot="input"))
    assert a.macs == 10 and a.b_a == 4


def test_zero_macs_keep_their_width():
    a = Op("aggregate", 0, 4, 1)
    assert a.absorb(Op("aggregate", 0, 3, 1)) and a.macs == 0 and a.b_a == 4


def _model(method, ds):
    torch.manual_seed(0)
    cfg = TrainConfig(dataset="synthetic-graph", model="gin", method=method,
                      bits=32 if method == "fp32" else 4).resolve("graph")
    model = apply_method(build_model("gin", "graph", ds.num_features, ds.num_classes, num_layers=2, hidden=8,
                                     dropout=0.0), cfg)
    model.train()
    first = Batch.from_data_list(list(ds.dataset[:16]))
    model(first.x, first.edge_index, first.batch)  # calibrates / initialises, as training's first batch would
    return model


def _dataset():
    # graphs of 3-40 nodes: batches of different sizes and degrees
    return random_graph_dataset(num_graphs=40, min_nodes=3, max_nodes=40, num_features=6, seed=3)


@pytest.mark.parametrize("method", ["fp32", "qat", "dq", "lsq"])
def test_batches_report_exactly_what_one_batch_of_every_graph_reports(method):
    ds = _dataset()
    model = _model(method, ds)
    whole = cost_report(model, Batch.from_data_list(list(ds.dataset))).to_dict()
    batches = cost_report(model, DataLoader(ds.dataset, batch_size=7)).to_dict()
    for k in ("bitops", "bitops_fp32", "avg_bits", "avg_bits_weights", "avg_bits_activations", "model_bytes",
              "bitops_reduction", "bitops_reduction_linear"):
        assert batches[k] == whole[k], k
    assert [layer["macs"] for layer in batches["per_layer"]] == [layer["macs"] for layer in whole["per_layer"]]
    assert [len(layer["ops"]) for layer in batches["per_layer"]] == [len(layer["ops"]) for layer in whole["per_layer"]]
    assert [layer["calls"] for layer in batches["per_layer"]] == [6 * c for c in
                                                                 (layer["calls"] for layer in whole["per_layer"])]


def test_a2q_widths_over_batches_are_the_sum_of_each_batch():
    ds = _dataset()
    model = _model("a2q", ds)
    g = torch.Generator().manual_seed(0)
    for q in model.modules():
        if isinstance(q, A2QQuantizer) and q.b_delta.numel() > 1:  # groups of 2-8 bits: rows pick different widths
            q.b_delta.data = torch.randint(-2, 5, q.b_delta.shape, generator=g).to(q.b_delta) / q.bits_lr_scale
    loader = DataLoader(ds.dataset, batch_size=7)
    each = [cost_report(model, b) for b in loader]
    whole = cost_report(model, Batch.from_data_list(list(ds.dataset)))
    total = cost_report(model, loader)
    assert total.bitops == pytest.approx(sum(r.bitops for r in each), rel=1e-12)
    assert total.bitops_fp32 == sum(r.bitops_fp32 for r in each) == whole.bitops_fp32
    widths = {o["b_a"] for r in each for layer in r.layers for o in layer["ops"]}
    assert len(widths) > 3  # the batches did store their rows at different mean widths

    def act(report):  # Σ numel · bits, Σ numel over every layer and slot
        acts = [a for layer in report.layers for a in layer["activations"].values()]
        return sum(a["numel"] * a["bits"] for a in acts), sum(a["numel"] for a in acts)

    bits, numel = act(total)
    assert bits == pytest.approx(sum(act(r)[0] for r in each), rel=1e-12)
    assert numel == sum(act(r)[1] for r in each) == act(whole)[1]
    # per row, a width does not depend on the batch: the element-weighted mean is one batch's (each call's mean
    # width is a float32 mean of its rows' widths: equal to float32's precision)
    assert total.avg_bits_activations == pytest.approx(whole.avg_bits_activations, rel=1e-6)

    def transforms(report):  # per row, so MAC-weighted over batches is row-weighted: one batch's mean
        return [v for layer in report.layers for o in layer["ops"] if o["op"] == "transform" for v in (o["macs"],
                                                                                                       o["b_a"])]

    assert transforms(total) == pytest.approx(transforms(whole), rel=1e-6)


def test_runner_cost_of_a_graph_dataset_walks_its_batches(monkeypatch):
    import qgnn.train.runner as runner_mod
    from qgnn.train.runner import Runner

    cfg = TrainConfig(dataset="synthetic-graph", model="gin", method="qat", bits=4, epochs=1, folds=1)
    r = Runner(cfg, progress=False)
    model = r.build()
    b = Batch.from_data_list(list(r.ds.dataset[:16]))
    model.train()
    model(b.x, b.edge_index, b.batch)
    state = model.state_dict()
    monkeypatch.setattr(runner_mod, "COST_BATCH_GRAPHS", 5)
    cost = r.cost(state)
    model.load_state_dict(state)
    whole = cost_report(model, Batch.from_data_list(list(r.ds.dataset))).to_dict()
    n = len(r.ds.dataset)
    assert cost["bitops"] == whole["bitops"] / n and cost["avg_bits"] == whole["avg_bits"]
    assert cost["per"] == f"graph (mean over the {n} graphs of the dataset)"
    assert cost["per_layer"][0]["calls"] == -(-n // 5)
