"""Quantized layers stay equivariant to node permutations (DESIGN.md invariant), per-tensor and per-node."""

from __future__ import annotations

import copy

import pytest
import torch

from qgnn.nn import NODE_SLOTS
from qgnn.testing import layers as util

# GCN with cached=True keeps the first graph by design, so it is left out
NAMES = sorted(n for n in util.FLOAT_LAYERS if "cached" not in n)


def _check(q, perm_tables: bool, n: int, seed: int):
    x, ei = util.graph(n=n, e=4 * n, seed=seed)
    q.train()
    util.run(q, x, ei)  # calibrate
    q.eval()
    y = util.run(q, x, ei)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 100))
    xp, eip = util.permute_graph(x, ei, perm)
    qp = copy.deepcopy(q)
    if perm_tables:  # new node i is old node perm[i]: its per-node range moves with it
        for slot, quantizer in qp.quant.items():
            if slot in NODE_SLOTS:
                obs = quantizer.observer
                obs.min_val.copy_(obs.min_val[perm])
                obs.max_val.copy_(obs.max_val[perm])
    yp = util.run(qp, xp, eip)
    torch.testing.assert_close(yp, y[perm])
    return y, yp


@pytest.mark.parametrize("name", NAMES)
def test_per_tensor_quantized_layer_is_permutation_equivariant(name):
    _, q = util.quantized(name, bits=4)
    _check(q, perm_tables=False, n=40, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_per_node_quantized_layer_is_equivariant_with_permuted_tables(name):
    n = 40
    _, q = util.quantized(name, bits=4, node_slots_per_node=n)
    assert any(qq.granularity == "node" for qq in q.quant.values())
    _check(q, perm_tables=True, n=n, seed=1)


def test_per_node_tables_that_do_not_move_break_equivariance():
    """The check above can fail: without permuting the per-node ranges the outputs differ."""
    n = 40
    _, q = util.quantized("gcn", bits=3, node_slots_per_node=n)
    with pytest.raises(AssertionError):
        _check(q, perm_tables=False, n=n, seed=1)
