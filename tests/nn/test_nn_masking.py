"""Degree-Quant protective masking (Tailor et al., ICLR 2021): protected nodes stay float in training."""

from __future__ import annotations

import pytest
import torch

from qgnn.nn import EDGE_SLOTS, NODE_SLOTS, QuantLinear
from qgnn.testing import layers as util

N = 30


def _setup(name: str, bits: int = 5, **kw):
    f, q = util.quantized(name, bits=bits, **kw)
    with torch.no_grad():  # a zero bias would make the output slot re-quantize aggr's grid exactly
        for pname, p in f.named_parameters():
            if pname.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    x, ei = util.graph(n=N, e=4 * N)
    x[0] *= 4  # node 0 (protected below) holds the extreme values: an observer that saw it would show it
    protect = torch.zeros(N, dtype=torch.bool)
    protect[[0, 3, 7, 8, N - 1]] = True  # N - 1 is isolated
    calls = []

    def hook(edge_index, num_nodes):
        calls.append((edge_index, num_nodes))
        return protect

    q.node_protect = hook
    return f, q, x, ei, protect, calls


def _spy(layer):
    """Record (slot, value in, value out) of every quantized slot the forward visits."""
    seen = []
    inner = layer._q

    def wrapped(slot, x, keep=None, **kw):
        out = inner(slot, x, keep, **kw)
        if slot in layer.quant:
            seen.append((slot, x.detach().clone(), out.detach().clone()))
        return out

    layer._q = wrapped
    return seen


def _protected_rows(layer, slot, ei, protect):
    if slot in NODE_SLOTS:
        return protect
    return protect[util.targets(layer, util.effective_edges(layer, ei, N))]


@pytest.mark.parametrize("name", util.GRAPH_MAIN + ["gcn_t2s", "sage_max", "gat_h4_mean"])
def test_protected_rows_stay_float_and_the_rest_is_quantized(name):
    f, q, x, ei, protect, calls = _setup(name)
    seen = _spy(q)
    q.train()
    util.run(q, x, ei)
    assert len(calls) == 1 and calls[0][1] == N and torch.equal(calls[0][0], ei)  # once, with the input graph
    visited = [s for s, _, _ in seen]
    assert sorted(visited) == sorted(s for s in q.quant if s in NODE_SLOTS | EDGE_SLOTS)
    for slot, inp, out in seen:
        rows = _protected_rows(q, slot, ei, protect)
        assert rows.shape[0] == inp.shape[0] and rows.any() and (~rows).any(), slot
        assert torch.equal(out[rows], inp[rows]), slot  # protected: the float values
        quantizer = q.quant[slot].eval()
        kept = inp[~rows]
        torch.testing.assert_close(out[~rows], quantizer(kept), rtol=0, atol=0)  # the rest: quantized
        assert not torch.equal(out[~rows], kept), slot
        # the observer saw only the rows it quantized
        assert quantizer.observer.min_val.item() == kept.min().item(), slot
        assert quantizer.observer.max_val.item() == kept.max().item(), slot
        quantizer.train()
    input_obs = q.quant["input"].observer
    assert input_obs.max_val.item() < x.max().item() or input_obs.min_val.item() > x.min().item()


@pytest.mark.parametrize("name", util.GRAPH_MAIN)
def test_eval_quantizes_everything_and_never_calls_the_hook(name):
    f, q, x, ei, protect, calls = _setup(name)
    q.train()
    util.run(q, x, ei)  # calibrate
    calls.clear()
    q.eval()
    seen = _spy(q)
    util.run(q, x, ei)
    assert not calls
    for slot, inp, out in seen:
        torch.testing.assert_close(out, q.quant[slot](inp), rtol=0, atol=0)  # every row quantized
        if slot == "input":  # raw features: quantizing changes the protected rows too
            assert not torch.equal(out[protect], inp[protect])


def test_all_nodes_protected_is_the_float_layer_in_training():
    f, q, x, ei, protect, calls = _setup("gcn", bits=2)
    protect[:] = True
    for slot in ("weight",):  # weights are not rows of nodes: they stay quantized
        q.set_quantizer(slot, None)
    q.train(), f.train()
    torch.testing.assert_close(q(x, ei), f(x, ei))
    # nothing was observed: every row bypassed every quantizer
    assert not any(qq.observer.observed for qq in q.quant.values())


def test_per_node_tables_skip_protected_nodes():
    f, q, x, ei, protect, calls = _setup("sage_mean", node_slots_per_node=N)
    q.train()
    util.run(q, x, ei)
    for slot in ("input", "aggr", "output"):
        obs = q.quant[slot].observer
        assert torch.isinf(obs.min_val[protect]).all(), slot  # never observed
        assert torch.isfinite(obs.min_val[~protect]).all(), slot


def test_masking_keeps_gradients_flowing():
    f = util.make_float("gat_h4_concat")
    from qgnn.nn import QuantGATConv

    q = QuantGATConv.from_float(f, util.lsq_quantizers(f, 4))
    x, ei = util.graph(n=N, e=4 * N)
    protect = torch.arange(N) % 3 == 0
    q.node_protect = lambda e, n: protect
    q.train()
    x.requires_grad_(True)
    q(x, ei).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[protect].abs().sum() > 0
    assert all(p.grad is not None for p in q.parameters())


def test_hook_is_optional_and_linear_has_none():
    assert not hasattr(QuantLinear(3, 4), "node_protect")  # its rows need not be nodes
    _, q = util.quantized("gcn", bits=8)
    assert q.node_protect is None
