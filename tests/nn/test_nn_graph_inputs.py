"""Every graph input a PyG layer takes reaches the quantized layers: torch sparse COO / CSR / CSC ``adj_t``,
``EdgeIndex``, bipartite ``(x_src, x_dst)``; sparse sums never form an ``[E, C]`` tensor; ids of sampled rows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch_geometric import EdgeIndex
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.utils import coalesce

from qgnn.nn import NODE_SLOTS, QuantModule
from qgnn.nn.context import current_node_ids, node_ids
from qgnn.testing import layers as util

GRAPH_LAYERS = sorted(n for n in util.FLOAT_LAYERS if n != "linear")
LAYOUTS = {"coo": torch.sparse_coo, "csr": torch.sparse_csr, "csc": torch.sparse_csc}


def _graph(n=30, e=120, seed=0):
    x, ei = util.graph(n=n, e=e, seed=seed)
    return x, coalesce(ei, num_nodes=n)  # a sparse adjacency holds each edge once


def _adj_t(ei, n, layout, values=None, n_src=None):
    v = torch.ones(ei.size(1)) if values is None else values
    a = torch.sparse_coo_tensor(ei.flip(0), v, (n, n if n_src is None else n_src)).coalesce()
    return a if layout == "coo" else a.to_sparse(layout=LAYOUTS[layout])


def _reference(f, x, ei, adj):
    """The float PyG layer on the same sparse input where PyG takes it, else on the same edges."""
    for graph in (adj, adj.to_sparse_csr()):  # PyG's gcn_norm refuses CSC: the same matrix as CSR
        try:
            return util.run(f, x, graph)
        except (NotImplementedError, RuntimeError, ValueError, AssertionError, TypeError):
            pass
    return util.run(f, x, ei)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", GRAPH_LAYERS)
def test_sparse_adjacency_matches_the_float_layer(name, layout):
    f, q = util.quantized(name)
    if getattr(f, "flow", "source_to_target") != "source_to_target" or getattr(f, "edge_dim", None):
        pytest.skip("PyG takes a sparse adjacency with the default flow and no edge features")
    x, ei = _graph()
    f.eval(), q.eval()
    adj = _adj_t(ei, x.size(0), layout)
    out = util.run(q, x, adj)
    torch.testing.assert_close(out, _reference(f, x, ei, adj), rtol=1e-5, atol=1e-5)
    if not getattr(f, "improved", False):  # PyG's own sparse and edge_index paths differ for improved=True
        torch.testing.assert_close(out, util.run(f, x, ei), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", GRAPH_LAYERS)
def test_edge_index_subclass_is_read_like_a_tensor(name):
    f, q = util.quantized(name)
    x, ei = _graph()
    f.eval(), q.eval()
    kw = {}
    if getattr(f, "edge_dim", None):
        kw["edge_attr"] = torch.randn(ei.size(1), f.edge_dim)
    e = EdgeIndex(ei, sparse_size=(x.size(0), x.size(0)))
    torch.testing.assert_close(util.run(q, x, e, **kw), util.run(f, x, ei, **kw))


@pytest.mark.parametrize("name", ["gcn", "gcn_no_norm_no_bias", "gin", "gin_mean", "sage_mean", "sage_sum"])
def test_weighted_csr_equals_the_float_layer(name):
    f, q = util.quantized(name)
    x, ei = _graph()
    w = torch.rand(ei.size(1)) + 0.1
    adj = _adj_t(ei, x.size(0), "csr", w)
    f.eval(), q.eval()
    torch.testing.assert_close(q(x, adj), f(x, adj), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gcn", "gin", "sage_mean", "sage_sum", "gin_mean"])
def test_sparse_path_gradients_equal_the_edge_index_path(name):
    x, ei = _graph()
    grads = []
    for graph in (ei, _adj_t(ei, x.size(0), "csr")):
        f, q = util.quantized(name, seed=3)
        xx = x.clone().requires_grad_()
        q.train()
        util.run(q, xx, graph).square().sum().backward()
        grads.append([xx.grad] + [p.grad for p in q.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name", ["gcn", "gin", "sage_mean", "sage_sum"])
def test_sparse_sum_and_mean_form_no_edge_by_channel_tensor(name, grad):
    """The sum over a sparse adjacency is one sparse-dense product: no op returns [E, C] (E edges), with
    the default slots quantized (everything but messages), in training (with gradients) and inference."""
    n, e = 50, 600
    x, ei = _graph(n=n, e=e)
    f = util.make_float(name)
    qs = {k: v for k, v in util.uniform_quantizers(f, 8).items() if k != "message"}
    q = type(util.quantized(name)[1]).from_float(f, qs)
    adj = _adj_t(ei, n, "csr")
    q.train(grad)
    with torch.set_grad_enabled(grad), _Shapes() as rec:
        out = q(x.requires_grad_(grad), adj)
        if grad:
            out.sum().backward()
    num_edges = ei.size(1)
    wide = [s for s in rec.shapes if len(s) >= 2 and s[0] >= num_edges and s[1] > 1]
    assert not wide, f"[E, C]-sized tensors were formed: {wide[:5]}"


def test_quantized_message_slot_on_sparse_input_matches_edge_index():
    x, ei = _graph()
    outs = []
    for graph in (ei, _adj_t(ei, x.size(0), "csr")):
        f, q = util.quantized("gcn", bits=4)
        q.train()
        util.run(q, x, graph)  # calibrate
        q.eval()
        outs.append(util.run(q, x, graph))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_inference_message_chunks_equal_one_pass(monkeypatch):
    """Under no_grad a quantized message slot runs in edge chunks; the result is the one-pass result."""
    x, ei = _graph(e=200)
    f, q = util.quantized("gin", bits=8)
    q.train()
    q(x, ei)
    q.eval()
    with torch.no_grad():
        whole = q(x, ei)
        monkeypatch.setattr(QuantModule, "_edge_chunk", staticmethod(lambda c: 7))
        chunked = q(x, ei)
    torch.testing.assert_close(chunked, whole)


@pytest.mark.parametrize("name", ["gin", "gin_train_eps", "sage_mean", "sage_sum", "sage_max", "gat_h1",
                                  "gat_h4_concat"])
def test_bipartite_pair_matches_the_float_layer(name):
    f, q = util.quantized(name)
    x, ei = _graph()
    n_dst = 12
    ei = ei[:, ei[1] < n_dst]
    pair = (x, x[:n_dst])
    f.eval(), q.eval()
    torch.testing.assert_close(util.run(q, pair, ei), util.run(f, pair, ei), rtol=1e-5, atol=1e-5)
    csr = _adj_t(ei, n_dst, "csr", n_src=x.size(0))
    if not isinstance(f, GATConv):
        torch.testing.assert_close(q(pair, csr), f(pair, csr), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gin", "sage_mean", "gat_h4_concat"])
def test_bipartite_block_equals_the_target_rows_of_the_whole_graph(name):
    """A sampled block (targets = the first N_dst sources, their in-edges) gives those targets' rows of the
    one-set forward, quantized (calibrated ranges, eval mode)."""
    _, q = util.quantized(name, bits=8)
    x, ei = _graph()
    q.train()
    util.run(q, x, ei)
    q.eval()
    full = util.run(q, x, ei)
    n_dst = 10
    block = ei[:, ei[1] < n_dst]
    torch.testing.assert_close(util.run(q, (x, x[:n_dst]), block), full[:n_dst], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gcn", "gin", "sage_mean", "gat_h1"])
def test_sparse_input_stays_permutation_equivariant(name):
    f = util.make_float(name)
    # the methods' default slots: a sum or mean of quantized values quantized again (aggr / output) sits on
    # exact ties of the next grid, where the summation order (a CSR row's, which the permutation changes)
    # decides the rounding even in float64, as it does for a reordered edge_index
    qs = {k: v for k, v in util.uniform_quantizers(f, 4).items() if k not in ("aggr", "output", "message")}
    q = type(util.quantized(name)[1]).from_float(f, qs)
    x, ei = _graph(n=40, e=160)
    q, x = q.double(), x.double()
    q.train()
    util.run(q, x, ei)
    q.eval()
    y = util.run(q, x, _adj_t(ei, 40, "csr").to(torch.float64))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    xp, eip = util.permute_graph(x, ei, perm)
    yp = util.run(q, xp, _adj_t(coalesce(eip, num_nodes=40), 40, "csr").to(torch.float64))
    torch.testing.assert_close(yp, y[perm], rtol=1e-5, atol=1e-5)


def test_cached_gcn_on_a_sparse_adjacency_keeps_its_first_graph():
    f = GCNConv(util.IN, util.OUT, cached=True)
    q = util.QUANT_LAYER_FOR[GCNConv].from_float(f, {}) if hasattr(util, "QUANT_LAYER_FOR") else None
    from qgnn.nn import QuantGCNConv

    q = QuantGCNConv.from_float(f, {})
    x, ei = _graph()
    a = q(x, _adj_t(ei, x.size(0), "csr"))
    b = q(x, _adj_t(ei[:, :5], x.size(0), "csr"))  # the cache wins, as in GCNConv
    torch.testing.assert_close(a, b)
    assert "_cached_graph" not in q.to_float().__dict__


@pytest.mark.parametrize("name", ["gcn", "sage_mean", "gat_h1"])
def test_node_ids_index_per_node_tables_by_global_id(name):
    """Under node_ids(model, ids), a per-node table is read at the global ids of the rows: a subgraph forward
    equals the forward of a copy whose tables were cut to those nodes."""
    n = 30
    x, ei = _graph(n=n)
    f = util.make_float(name)
    q = type(util.quantized(name)[1]).from_float(f, util.uniform_quantizers(f, 4, node_slots_per_node=n))
    q.train()
    util.run(q, x, ei)
    q.eval()
    keep = torch.tensor([3, 7, 8, 15, 20, 21, 29])
    local = torch.full((n,), -1)
    local[keep] = torch.arange(keep.numel())
    sub = local[ei]
    sub = sub[:, (sub >= 0).all(0)]
    cut = copy.deepcopy(q)
    for slot, quantizer in cut.quant.items():
        if slot in NODE_SLOTS:
            obs = quantizer.observer
            obs.min_val.data, obs.max_val.data = obs.min_val[keep], obs.max_val[keep]
            quantizer.layout.num_nodes = keep.numel()
    with node_ids(q, keep):
        assert torch.equal(current_node_ids(q), keep)
        got = util.run(q, x[keep], sub)
    assert current_node_ids(q) is None
    torch.testing.assert_close(got, util.run(cut, x[keep], sub))


@pytest.mark.parametrize("name", ["gcn", "gin", "sage_mean", "gat_h1"])
def test_torch_sparse_sparse_tensor_matches_the_float_layer(name):
    """torch_sparse's SparseTensor, where that package imports (it builds from source only; CI lacks it)."""
    torch_sparse = pytest.importorskip("torch_sparse")
    f, q = util.quantized(name)
    x, ei = _graph()
    adj = torch_sparse.SparseTensor(row=ei[1], col=ei[0], sparse_sizes=(x.size(0), x.size(0)))
    f.eval(), q.eval()
    torch.testing.assert_close(util.run(q, x, adj), util.run(f, x, adj), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_sparse_product_gradients_reach_the_edge_values(reduce):
    """GraphView.aggregate with learnable edge values (an LSQ edge quantizer's step reaches them): the gradients
    of the values and of H equal those of the per-edge formula."""
    from qgnn.nn.graph import GraphView, _ptr

    torch.manual_seed(0)
    n_src, n_dst, e, c = 9, 7, 30, 5
    dst, _ = torch.sort(torch.randint(0, n_dst, (e,)))
    src = torch.randint(0, n_src, (e,))
    g = GraphView(src, dst, n_src, n_dst, None, True, _ptr(dst, n_dst))
    grads = []
    w0, h0 = torch.rand(e), torch.randn(n_src, c)
    for sparse in (True, False):
        w, h = w0.clone().requires_grad_(), h0.clone().requires_grad_()
        if sparse:
            out = g.aggregate(h, w, reduce)
        else:
            out = torch.zeros(n_dst, c).index_add(0, dst, w.view(-1, 1) * h[src])
            if reduce == "mean":
                out = out / torch.bincount(dst, minlength=n_dst).clamp_min(1).view(-1, 1)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), w.grad, h.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
