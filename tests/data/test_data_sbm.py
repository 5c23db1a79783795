"""The stochastic-block-model graphs (qgnn.data.sbm) on small instances of the generator the named datasets use."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import is_undirected

from qgnn.data import load_dataset, sbm_dataset, sbm_graph
from qgnn.data import sbm as sbm_mod
from qgnn.errors import ConfigError
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, shared raw data)

N, C = 4000, 8  # blocks of 500 nodes: big enough that duplicate pairs are rare, as at the presets


def _centroid_acc(x, y, train, test, num_classes) -> float:
    mu = torch.stack([x[train & (y == c)].mean(0) for c in range(num_classes)])
    return (torch.cdist(x[test], mu).argmin(1) == y[test]).float().mean().item()


def test_same_seed_same_tensors_other_seed_other_graph():
    a, b, c = sbm_graph(N, num_classes=C, seed=0), sbm_graph(N, num_classes=C, seed=0), sbm_graph(N, num_classes=C,
                                                                                                   seed=1)
    for k in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(a[k], b[k]), k
        assert not torch.equal(a[k], c[k]), k


def test_edges_simple_symmetric_sorted_by_target_and_near_target_count():
    d = sbm_graph(N, num_classes=C, avg_degree=10)
    ei = d.edge_index
    assert ei.dtype == torch.long and ei.min() >= 0 and ei.max() < N
    assert not (ei[0] == ei[1]).any()
    key = ei[1] * N + ei[0]
    assert (key[1:] > key[:-1]).all()  # sorted by (target, source), hence no duplicates
    assert is_undirected(ei, num_nodes=N)
    # pairs drawn twice are kept once: a few percent at 500-node blocks, under 1 % at the presets
    assert 0.93 * N * 10 <= ei.size(1) <= N * 10


@pytest.mark.parametrize("homophily", [0.2, 0.5, 0.9])
def test_edge_homophily_close_to_target(homophily):
    d = sbm_graph(N, num_classes=C, homophily=homophily)
    same = (d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean().item()
    assert abs(same - homophily) < 0.02


def test_balanced_classes_and_heavy_tailed_degrees():
    d = sbm_graph(N, num_classes=C)
    assert torch.equal(torch.bincount(d.y, minlength=C), torch.full((C,), N // C))
    deg = torch.bincount(d.edge_index[1], minlength=N).float()
    assert deg.max() > 10 * deg.mean()  # Pareto weights: hubs, not a constant degree
    assert (deg == 0).float().mean() < 0.01


def test_split_disjoint_covering_seeded():
    d = sbm_graph(N, num_classes=C, train_frac=0.1, val_frac=0.1)
    masks = torch.stack([d.train_mask, d.val_mask, d.test_mask]).long()
    assert torch.equal(masks.sum(0), torch.ones(N, dtype=torch.long))
    assert masks.sum(1).tolist() == [N // 10, N // 10, N - 2 * (N // 10)]
    other = sbm_graph(N, num_classes=C, seed=1)
    assert not torch.equal(d.train_mask, other.train_mask)


def test_features_carry_label_signal_and_the_graph_adds_more():
    d = sbm_graph(N, num_classes=C, train_frac=0.5, val_frac=0.1)
    assert d.x.shape == (N, 128) and d.x.dtype == torch.float32
    acc_x = _centroid_acc(d.x, d.y, d.train_mask, d.test_mask, C)
    assert 2.5 / C < acc_x < 0.9  # well above chance, far from solved
    deg = torch.bincount(d.edge_index[1], minlength=N).clamp(min=1)
    mean_nb = torch.zeros_like(d.x).index_add_(0, d.edge_index[1], d.x[d.edge_index[0]]) / deg[:, None]
    acc_graph = _centroid_acc(torch.cat([d.x, mean_nb], 1), d.y, d.train_mask, d.test_mask, C)
    assert acc_graph > acc_x + 0.05  # neighbours of the same block carry signal a feature-only model misses


def test_cache_round_trip(monkeypatch, tmp_path):
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "cache"))
    first = sbm_dataset(2000, num_classes=4)
    files = list((tmp_path / "cache" / "processed" / "sbm").rglob("graph.pt"))
    assert len(files) == 1 and not list(files[0].parent.glob("*.tmp"))

    def no_generation(**_):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(sbm_mod, "sbm_graph", no_generation)
    again = sbm_dataset(2000, num_classes=4)
    for k in ("x", "edge_index", "y", "train_mask", "test_mask"):
        assert torch.equal(first.data[k], again.data[k])
    again.data.x.add_(1.0)  # the cache is mapped privately: writing to the tensors leaves the file alone
    assert torch.equal(sbm_dataset(2000, num_classes=4).data.x, first.data.x)
    assert (again.num_features, again.num_classes, again.task) == (128, 4, "node")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other graph"])
def test_corrupt_cache_is_generated_again(monkeypatch, tmp_path, damage):
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "cache"))
    want = sbm_dataset(2000, num_classes=4).data
    (path,) = (tmp_path / "cache").rglob("graph.pt")
    if damage == "garbage":
        path.write_bytes(b"not a torch file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        torch.save({"x": torch.zeros(3, 2)}, path)
    got = sbm_dataset(2000, num_classes=4).data
    assert torch.equal(got.x, want.x) and torch.equal(got.edge_index, want.edge_index)
    assert torch.equal(torch.load(path, weights_only=True)["edge_index"], want.edge_index)  # replaced


def test_settings_key_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "cache"))
    a = sbm_dataset(2000, num_classes=4, homophily=0.5).data
    b = sbm_dataset(2000, num_classes=4, homophily=0.8).data
    assert not torch.equal(a.edge_index, b.edge_index)
    assert len(list((tmp_path / "cache").rglob("graph.pt"))) == 2


def test_named_datasets_dispatch_to_the_generator(monkeypatch, tmp_path):
    assert sbm_mod.PRESETS == {"sbm-100k": {"num_nodes": 100_000}, "sbm-1m": {"num_nodes": 1_000_000}}
    assert (sbm_mod.DEFAULTS["num_features"], sbm_mod.DEFAULTS["num_classes"]) == (128, 40)
    monkeypatch.setenv("QGNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sbm_mod.PRESETS, "sbm-100k", {"num_nodes": 2000})  # the preset's path, at test size
    ds = load_dataset("SBM-100K")
    assert ds.name == "sbm-100k" and ds.data.num_nodes == 2000 and ds.num_classes == 40
    assert torch.equal(ds.data.edge_index, sbm_graph(2000).edge_index)
    assert list((tmp_path / "cache" / "processed" / "sbm").glob("sbm-100k-*/graph.pt"))
    with pytest.raises(ConfigError, match="normalize_features"):
        load_dataset("sbm-1m", seed=1)


def test_features_not_row_normalised_by_default():
    from qgnn.train.config import TrainConfig

    assert TrainConfig(dataset="sbm-100k").resolve("node").normalize_features is False
    assert TrainConfig(dataset="cora").resolve("node").normalize_features is True
    assert TrainConfig(dataset="sbm-1m", normalize_features=True).resolve("node").normalize_features is True
    x = sbm_dataset(500, num_classes=4, normalize_features=True, cache=False).data.x
    assert (x >= 0).all() and torch.allclose(x.sum(1), torch.ones(500))


@pytest.mark.parametrize("kwargs", [dict(homophily=1.5), dict(num_classes=1), dict(degree_exponent=1.0),
                                    dict(train_frac=0.6, val_frac=0.5), dict(noise=-1.0), dict(avg_degree=0)])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        sbm_dataset(500, cache=False, **kwargs)


def test_unwritable_cache_is_one_clear_error(monkeypatch, tmp_path):
    from qgnn.errors import QgnnError

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("QGNN_CACHE", str(blocker))
    with pytest.raises(QgnnError, match="QGNN_CACHE"):
        sbm_dataset(500, num_classes=4)


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="colour"):
        sbm_dataset(500, cache=False, colour="red")
