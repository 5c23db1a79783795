"""Range observers: min-max, EMA, sampled percentile; per tensor, channel and node."""

from __future__ import annotations

import math

import pytest
import torch

from qgnn.errors import ConfigError, UnknownNameError
from qgnn.quant import EMAObserver, MinMaxObserver, PercentileObserver, make_observer
from qgnn.quant import observers as observers_mod


def test_minmax_per_tensor_running():
    obs = MinMaxObserver()
    obs(torch.tensor([[-1.0, 2.0], [0.5, 0.0]]))
    obs(torch.tensor([[-0.5, 3.0]]))
    assert obs.min_val.tolist() == [-1.0] and obs.max_val.tolist() == [3.0]
    obs.eval()
    obs(torch.tensor([[-10.0, 10.0]]))  # frozen in eval
    assert obs.min_val.tolist() == [-1.0] and obs.max_val.tolist() == [3.0]


@pytest.mark.parametrize("ch_axis", [0, 1, -1])
def test_minmax_per_channel(ch_axis):
    x = torch.randn(7, 5)
    obs = MinMaxObserver(granularity="channel", ch_axis=ch_axis)
    obs(x)
    dim = 1 if ch_axis == 0 else 0
    assert torch.equal(obs.min_val, x.amin(dim)) and torch.equal(obs.max_val, x.amax(dim))
    x3 = torch.randn(2, 3, 4)
    obs3 = MinMaxObserver(granularity="channel", ch_axis=1)
    obs3(x3)
    assert torch.equal(obs3.max_val, x3.amax(dim=(0, 2)))


def test_per_channel_size_mismatch_is_config_error():
    obs = MinMaxObserver(granularity="channel", num_channels=4)
    with pytest.raises(ConfigError, match="4 channels"):
        obs(torch.randn(3, 5))


def test_per_node_with_index_and_duplicates():
    obs = MinMaxObserver(granularity="node", num_nodes=6)
    x = torch.tensor([[1.0, 2.0], [-3.0, 0.0], [5.0, 4.0], [0.5, 0.75]])
    index = torch.tensor([2, 0, 2, 4])
    obs(x, index)
    inf = math.inf
    assert obs.min_val.tolist() == [-3.0, inf, 1.0, inf, 0.5, inf]
    assert obs.max_val.tolist() == [0.0, -inf, 5.0, -inf, 0.75, -inf]
    # nodes never seen get the pooled range instead of a degenerate one
    mn, mx = obs.range()
    assert mn.tolist() == [-3.0, -3.0, 1.0, -3.0, 0.5, -3.0]
    assert mx.tolist() == [0.0, 5.0, 5.0, 5.0, 0.75, 5.0]
    # index=None: row i is node i
    obs2 = MinMaxObserver(granularity="node", num_nodes=6)
    obs2(x)
    assert obs2.max_val[:4].tolist() == [2.0, 0.0, 5.0, 0.75] and math.isinf(obs2.max_val[5])


def test_per_node_bad_inputs():
    obs = MinMaxObserver(granularity="node", num_nodes=3)
    with pytest.raises(ConfigError, match="index"):
        obs(torch.randn(5, 2))  # more rows than nodes and no index
    with pytest.raises(ConfigError, match="one node id per row"):
        obs(torch.randn(2, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigError, match="num_nodes"):
        MinMaxObserver(granularity="node")


def test_ema_formula():
    obs = EMAObserver(momentum=0.75)
    obs(torch.tensor([-2.0, 4.0]))
    assert obs.min_val.tolist() == [-2.0] and obs.max_val.tolist() == [4.0]  # first batch sets
    obs(torch.tensor([-6.0, 0.0]))
    assert obs.min_val.item() == pytest.approx(0.75 * -2 + 0.25 * -6)
    assert obs.max_val.item() == pytest.approx(0.75 * 4 + 0.25 * 0)


def test_ema_per_node_only_updates_seen_nodes():
    obs = EMAObserver(momentum=0.5, granularity="node", num_nodes=3)
    obs(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 1]))
    obs(torch.tensor([[3.0], [5.0]]), torch.tensor([1, 2]))
    assert obs.max_val.tolist() == [1.0, 2.5, 5.0]


@pytest.mark.parametrize("bad", [1.0, -0.1, 2, "0.9"])
def test_ema_bad_momentum(bad):
    with pytest.raises(ConfigError, match="momentum"):
        EMAObserver(momentum=bad)


def test_percentile_exact_on_small_tensors():
    x = torch.randn(500, 3)
    obs = PercentileObserver(p=0.99, momentum=0.0)
    obs(x)
    q = torch.quantile(x.flatten(), torch.tensor([0.01, 0.99]))
    assert torch.allclose(obs.min_val, q[:1]) and torch.allclose(obs.max_val, q[1:])
    obs_c = PercentileObserver(p=0.9, momentum=0.0, granularity="channel")
    obs_c(x)
    assert torch.allclose(obs_c.max_val, torch.quantile(x, 0.9, dim=0))
    obs_w = PercentileObserver(p=0.9, momentum=0.0, granularity="channel", ch_axis=0)
    obs_w(x.t().contiguous())
    assert torch.allclose(obs_w.min_val, torch.quantile(x, 0.1, dim=0))


def test_percentile_estimate_is_accurate_on_large_tensor():
    torch.manual_seed(0)
    x = torch.randn(1_000_000)
    obs = PercentileObserver(p=0.999, sample_size=16384, momentum=0.0)
    obs(x)
    # true 0.999 quantile of N(0,1) = 3.090; the sampled estimate has rank std 2.5e-4, i.e. ~0.07 in value
    assert obs.max_val.item() == pytest.approx(3.090, abs=0.3)
    assert obs.min_val.item() == pytest.approx(-3.090, abs=0.3)
    # the percentile clips outliers that a min-max range would keep
    x[0] = 100.0
    obs.reset()
    obs(x)
    assert obs.max_val.item() < 5


def test_percentile_cost_is_bounded_by_the_sample(monkeypatch):
    sizes = []
    real = observers_mod._extremes

    def spy(m, *a, **k):
        sizes.append(m.numel())
        return real(m, *a, **k)

    monkeypatch.setattr(observers_mod, "_extremes", spy)
    obs = PercentileObserver(sample_size=4096)
    obs(torch.randn(400_000, 8))
    obs_c = PercentileObserver(sample_size=4096, granularity="channel")
    obs_c(torch.randn(400_000, 8))
    assert len(sizes) == 4 and max(sizes) <= 4096


@pytest.mark.parametrize("p", [0.999, 0.99, 0.9, 0.75, 1.0])
def test_percentile_per_row_matches_torch_quantile_with_ties(p):
    x = torch.randint(-5, 6, (200, 64)).float()  # many ties
    x[:100] = torch.randn(100, 64)
    obs = PercentileObserver(p=p, momentum=0.0, granularity="node", num_nodes=200)
    obs(x)
    expect = torch.quantile(x, torch.tensor([1 - p, p]), dim=1)
    assert torch.allclose(obs.min_val, expect[0], atol=1e-5)
    assert torch.allclose(obs.max_val, expect[1], atol=1e-5)


def test_percentile_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    PercentileObserver(sample_size=64)(torch.arange(10_000.0))
    assert torch.equal(torch.rand(3), expected)


def test_percentile_per_node():
    x = torch.randn(50, 4)
    obs = PercentileObserver(p=1.0, momentum=0.0, granularity="node", num_nodes=60)
    obs(x)
    assert torch.allclose(obs.max_val[:50], x.amax(1)) and torch.isinf(obs.max_val[50:]).all()


@pytest.mark.parametrize("bad", dict(p=[0.3, 99.9, 0], sample_size=[0, 1.5]).items())
def test_percentile_bad_args(bad):
    name, values = bad
    for v in values:
        with pytest.raises(ConfigError, match=name):
            PercentileObserver(**{name: v})


@pytest.mark.parametrize("kind", ["minmax", "ema", "percentile"])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "node"])
def test_empty_and_constant_inputs(kind, granularity):
    obs = make_observer(kind, granularity=granularity, num_nodes=4 if granularity == "node" else None)
    obs(torch.zeros(0, 3))
    assert not obs.observed
    mn, mx = obs.range()
    assert torch.isfinite(mn).all() and torch.isfinite(mx).all()
    obs(torch.full((4, 3), 2.5))
    assert obs.observed
    mn, mx = obs.range()
    assert torch.all(mn == 2.5) and torch.all(mx == 2.5)


def test_make_observer_unknown_name_lists_choices():
    with pytest.raises(UnknownNameError) as e:
        make_observer("kmeans")
    assert e.value.valid == ["ema", "minmax", "percentile"]
    assert "ema, minmax, percentile" in str(e.value)
    assert isinstance(make_observer("MinMax"), MinMaxObserver)


def test_unknown_granularity():
    with pytest.raises(UnknownNameError, match="granularity"):
        MinMaxObserver(granularity="row")


def test_state_dict_round_trip_lazy_channels():
    obs = EMAObserver(granularity="channel")
    obs(torch.randn(10, 6))
    fresh = EMAObserver(granularity="channel")
    assert fresh.min_val.numel() == 0 and not fresh.observed
    fresh.load_state_dict(obs.state_dict())
    assert torch.equal(fresh.min_val, obs.min_val) and fresh.observed
    assert fresh.layout.num_channels == 6


def test_repr():
    assert "ema(0.9)" in repr(EMAObserver())
    assert "percentile(0.999" in repr(PercentileObserver())
    assert "per_node(5)" in repr(MinMaxObserver(granularity="node", num_nodes=5))
    assert observers_mod.OBSERVERS["minmax"] is MinMaxObserver
