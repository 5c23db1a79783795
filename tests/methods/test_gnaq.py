"""GNAQ, BiGeaR and the table-quantization baselines: storage, initial bound, RAU, gradients, training."""

import math

import pytest
import torch

from qgnn.data.synthetic import random_rec_dataset
from qgnn.errors import ConfigError
from qgnn.methods.bigear import BiGeaRLightGCN, sign_gauss
from qgnn.methods.gnaq import GNAQLightGCN
from qgnn.methods.rec_baselines import QuantTableLightGCN
from qgnn.quant.nodewise import NodeLevelQuantizer


def _gnaq(bits=2, estimator="rau", nu=20, ni=30, d=16, seed=0, **kw):
    ds = random_rec_dataset(num_users=nu, num_items=ni, seed=seed)
    m = GNAQLightGCN(ds.num_users, ds.num_items, hidden=d, bits=bits, estimator=estimator, **kw)
    m.set_graph(ds.bipartite_edge_index())
    w = torch.randn(ds.num_users + ds.num_items, d, generator=torch.Generator().manual_seed(seed)) * 0.1
    m.init_from_pretrained(w)
    return m, w, ds


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codes_and_levels_round_trip_through_packing(bits):
    m, _, _ = _gnaq(bits=bits)
    stored = m.export()
    assert stored["codes"].dtype == torch.uint8
    assert stored["codes"].numel() == math.ceil(m.num_nodes * m.hidden * bits / 8) == m.storage()["code_bytes"]
    codes, levels = NodeLevelQuantizer.unpack(stored, bits)
    assert torch.equal(codes, m.codes) and torch.equal(levels, m.quant.levels.detach())
    assert torch.equal(torch.gather(levels, 1, codes.long()), m.eval().ego())
    assert int(codes.max()) < 2 ** bits


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_initial_table_is_within_half_a_step_of_the_fp32_source(bits):
    m, w, _ = _gnaq(bits=bits)
    err = (m.eval().ego() - w).abs()
    bound = m.quant.step()[:, None] / 2
    assert (err <= bound + 1e-6).all()
    lv = m.quant.levels.detach()
    assert torch.allclose(lv[:, 0], w.min(1).values) and torch.allclose(lv[:, -1], w.max(1).values)


def test_rau_changes_codes_only_through_the_propagated_update():
    # one user, one item: P = [[1/2, 1/2], [1/2, 1/2]], so an update (v, -v) propagates to zero
    ds = random_rec_dataset(num_users=1, num_items=1, interactions_per_user=1, seed=0)
    ei = torch.tensor([[0, 1], [1, 0]])
    w = torch.tensor([[-1.0, 0.0, 1.0, 0.2], [0.5, -0.5, 0.1, 1.0]])
    for est, same in (("rau", True), ("ste", False)):
        m = GNAQLightGCN(1, 1, hidden=4, bits=2, estimator=est, lambda_rank=0.0).set_graph(ei)
        m.init_from_pretrained(w)
        before = m.refresh_codes().clone()
        with torch.no_grad():
            m.delta.copy_(torch.tensor([[0.6, 0.6, -0.6, -0.6], [-0.6, -0.6, 0.6, 0.6]]))
        after = m.refresh_codes().clone()
        assert torch.equal(before, after) == same, est
    del ds
    # and in general: the codes are the nearest levels of E0 + P delta
    m, w, _ = _gnaq()
    with torch.no_grad():
        m.delta.normal_(0, 0.05)
    z = w + m.rau_adj.dense() @ m.delta.detach()
    assert torch.equal(m.refresh_codes(), m.quant.codes(z))


def test_rau_gradient_is_the_propagated_quantization_gradient_and_levels_learn():
    m, _, _ = _gnaq(lambda_rank=0.0)
    m.train()
    ego = m.ego()
    g = torch.randn_like(ego)
    (ego * g).sum().backward()
    assert torch.allclose(m.delta.grad, m.rau_adj.dense() @ g, atol=1e-6)
    assert m.quant.levels.grad is not None and m.quant.levels.grad.abs().sum() > 0
    m2, _, _ = _gnaq(lambda_rank=0.0, estimator="ste", dynamic=False)
    m2.train()
    (m2.ego() * g).sum().backward()
    assert torch.allclose(m2.delta.grad, g) and not m2.quant.levels.requires_grad


def test_compression_targets_at_2_bits():
    for d, target in ((64, 8.0), (256, 12.0)):
        q = NodeLevelQuantizer(1000, 2)
        st = q.nbytes(d)
        assert 4 * 1000 * d / (st["code_bytes"] + st["level_bytes"]) >= target


def test_bigear_sign_gradient_is_gaussian_and_scores_are_layerwise():
    x = torch.tensor([-0.5, 0.0, 0.5, 3.0], requires_grad=True)
    y = sign_gauss(x)
    assert torch.equal(y, torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    y.sum().backward()
    s = float(x.detach().std())
    expect = 2 / (s * math.sqrt(2 * math.pi)) * torch.exp(-x.detach() ** 2 / (2 * s * s))
    assert torch.allclose(x.grad, expect)
    ds = random_rec_dataset(num_users=10, num_items=12, seed=1)
    m = BiGeaRLightGCN(ds.num_users, ds.num_items, hidden=8, num_layers=2).set_graph(ds.bipartite_edge_index())
    ue, ie = m()
    assert ue.shape == (10, 24)
    assert set(torch.unique(ue[:, :8].sign() * ue[:, :8].abs().mean(1, keepdim=True) * 3 - ue[:, :8] * 3)
               .round(decimals=5).tolist()) == {0.0}


def test_table_baselines_quantize_to_few_levels():
    ds = random_rec_dataset(num_users=10, num_items=12, seed=2)
    for kind in ("qat", "lsq"):
        m = QuantTableLightGCN(ds.num_users, ds.num_items, hidden=8, bits=2, kind=kind)
        assert torch.unique(m.ego().detach()).numel() <= 4
    with pytest.raises(ConfigError):
        QuantTableLightGCN(5, 5, kind="nope")
