"""Trimmed mini-batch forward (PyG's ``trim_to_layer``): each layer computes only the rows a later layer reads.

The seeds' outputs equal the untrimmed forward's; quantizers and masks see only the trimmed rows; the bipartite
blocks follow the targets-first convention (qgnn.nn.graph.is_prefix_of / trim_csr)."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Data

from qgnn.models import build_model
from qgnn.models.node import GCN
from qgnn.nn.graph import is_prefix_of, trim_csr
from qgnn.testing.graphs import graph, hub_graph
from qgnn.train import TrainConfig
from qgnn.train.minibatch import MiniBatchNodeTask, _csr, external_gcn_norm, no_cached_normalisation
from qgnn.train.runner import apply_method


def _data(n=60, e=300, f=8, classes=3, seed=3) -> Data:
    x, ei = graph(n, e, f, seed=seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    train = torch.rand(n, generator=g) < 0.5
    return Data(x=x, edge_index=ei, y=y, train_mask=train, val_mask=~train, test_mask=~train)


def _model(arch: str, method: str, bits: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    cfg = TrainConfig(dataset="synthetic-node", model=arch, method=method,
                      bits=None if method == "fp32" else bits).resolve("node")
    return no_cached_normalisation(apply_method(build_model(arch, "node", 8, 3, hidden=16, dropout=0.0), cfg))


def _untrimmed(task: MiniBatchNodeTask, model, batch):
    """The plain forward over every row of the batch (what batch_forward did before trimming)."""
    from qgnn.nn.context import node_ids
    from qgnn.train.minibatch import gcn_convs

    with node_ids(model, batch.n_id):
        if not gcn_convs(model):
            return model(batch.x, _csr(batch.edge_index, None, batch.num_nodes))
        ei, w = task.gcn_norm().batch(batch)
        with external_gcn_norm(model):
            return model(batch.x, _csr(ei, w, batch.num_nodes))


def test_trim_csr_and_prefix_views():
    dense = torch.tensor([[1., 0, 2, 0], [0, 3, 0, 0], [4, 0, 0, 5], [0, 0, 6, 0]])
    adj = dense.to_sparse_csr()
    block = trim_csr(adj, 2, 3)
    assert block.shape == (2, 3)
    assert torch.equal(block.to_dense(), dense[:2, :3])
    assert trim_csr(adj, 0, 4).to_dense().shape == (0, 4)  # no target: an empty block
    x = torch.randn(5, 3)
    assert is_prefix_of(x[:2], x) and is_prefix_of(x[:5], x)
    assert not is_prefix_of(x, x)  # the same tensor is not a block's target view
    assert not is_prefix_of(x[1:3], x)  # rows that are not the first
    assert not is_prefix_of(x[:2].clone(), x)  # equal values, other storage
    assert not is_prefix_of(x.t()[:2], x.t().contiguous())
    assert not is_prefix_of(None, x)


@pytest.mark.parametrize("arch", ["gcn", "gin", "sage"])
@pytest.mark.parametrize("method", ["fp32", "qat", "dq", "a2q"])
def test_trimmed_seeds_equal_the_untrimmed_forward(arch, method):
    data = _data()
    model = _model(arch, method)
    task = MiniBatchNodeTask(data, [4, 3], 8)
    task.warm_up(model)
    batch = next(iter(task.loader))
    hops = batch.num_sampled_nodes
    assert len(hops) == 3 and hops[2] > 0  # the last hop holds rows that the trimmed forward drops
    model.eval()
    with torch.no_grad():
        trimmed = task.batch_forward(model, batch)
        full = _untrimmed(task, model, batch)
    assert trimmed.shape == (batch.batch_size, 3)  # the seeds' rows only
    torch.testing.assert_close(trimmed, full[: batch.batch_size], rtol=1e-5, atol=1e-5)


def _rows_seen(model, slot: str, quantized_only: bool = False) -> list[int]:
    """Rows each layer's ``slot`` hands on (protected float rows included), or those its quantizer's
    ``forward`` receives (``quantized_only``: the slot's observer sees exactly these)."""
    seen: list[int] = []
    for conv in model.convs:
        if quantized_only:
            conv.quant[slot].register_forward_pre_hook(lambda mod, args: seen.append(args[0].size(0)))
        else:
            conv.register_slot_hook(slot, lambda layer, x: seen.append(x.size(0)))
    return seen


@pytest.mark.parametrize("arch", ["gcn", "gin", "sage"])
def test_quantizers_see_only_the_rows_a_later_layer_reads(arch):
    data = _data()
    task = MiniBatchNodeTask(data, [4, 3], 8)
    batch = next(iter(task.loader))
    h0, h1, h2 = (int(n) for n in batch.num_sampled_nodes)
    # Degree-Quant (some rows protected, kept float): a slot hands on the layer's rows
    model = _model(arch, "dq")
    task.warm_up(model)
    in_rows = _rows_seen(model, "input")
    model.train()
    task.batch_forward(model, batch).sum().backward()
    assert in_rows == [h0 + h1 + h2, h0 + h1]
    # what the quantizers receive: exactly the sources of each layer (layer 1 never sees the last hop's rows),
    # and a GIN / SAGE block quantizes its targets (a view of the sources' first rows) once, with the sources
    model = _model(arch, "qat")
    task.warm_up(model)
    in_rows = _rows_seen(model, "input", quantized_only=True)
    aggr_rows = _rows_seen(model, "aggr", quantized_only=True) if arch == "sage" else None
    model.train()
    task.batch_forward(model, batch)
    assert in_rows == [h0 + h1 + h2, h0 + h1]
    if aggr_rows is not None:  # a target slot: the layer's targets only
        assert aggr_rows == [h0 + h1, h0]


def test_degree_quant_mask_is_shared_by_the_trimmed_layers():
    """One mask per forward over the batch's rows; a later layer reads its first rows (the same nodes)."""
    data = _data()
    model = _model("gcn", "dq")
    task = MiniBatchNodeTask(data, [4, 3], 8)
    task.warm_up(model)
    batch = next(iter(task.loader))
    masks = []
    for conv in model.convs:
        orig = conv.node_protect
        conv.node_protect = lambda ei, n, orig=orig: masks.append(orig(ei, n)) or masks[-1]
    model.train()
    task.batch_forward(model, batch)
    h = [int(n) for n in batch.num_sampled_nodes]
    assert [m.numel() for m in masks] == [sum(h), h[0] + h[1]]
    assert torch.equal(masks[1], masks[0][: h[0] + h[1]])


def test_hub_and_isolated_seeds_train_trimmed():
    """A hub with many in-edges and seeds without any: the trimmed forward and its gradient are finite."""
    x, ei = hub_graph(200, 8)
    n = x.size(0)
    y = torch.arange(n) % 3
    mask = torch.ones(n, dtype=torch.bool)
    data = Data(x=x, edge_index=ei, y=y, train_mask=mask, val_mask=mask, test_mask=mask)
    for arch in ("gcn", "gin", "sage"):
        model = _model(arch, "dq")
        task = MiniBatchNodeTask(data, [5, 5], 16)
        task.warm_up(model)
        model.train()
        for batch in task.loader:
            out = task.batch_forward(model, batch)
            assert out.shape == (batch.batch_size, 3)
            loss = out.sum()
            loss.backward()
            assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_untrimmable_batches_run_the_plain_forward():
    """A model with more layers than sampled hops cannot be trimmed: every row is computed, as before."""
    data = _data()
    torch.manual_seed(0)
    model = no_cached_normalisation(GCN(8, 16, 3, num_layers=3, dropout=0.0))
    task = MiniBatchNodeTask(data, [4, 3], 8)
    batch = next(iter(task.loader))
    assert task.batch_forward(model, batch).shape == (batch.num_nodes, 3)


def test_trimmed_forward_refuses_counts_that_do_not_match():
    from qgnn.errors import ConfigError

    data = _data()
    model = no_cached_normalisation(GCN(8, 16, 3, dropout=0.0))
    adj = _csr(data.edge_index, None, data.num_nodes)
    with pytest.raises(ConfigError, match="hops 0..2"):
        model(data.x, adj, num_sampled_nodes_per_hop=[1, 2, 3])
    with pytest.raises(ConfigError, match="CSR"):
        model(data.x, data.edge_index, num_sampled_nodes_per_hop=[10, 20, 30])
    from qgnn.models.node import GraphConvNet

    with pytest.raises(ConfigError, match="GraphConv"):  # a root term on x: no block form here
        GraphConvNet(8, 16, 3)(data.x, adj, num_sampled_nodes_per_hop=[10, 20, 30])
