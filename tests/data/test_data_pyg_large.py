"""Reddit, Flickr, Amazon, Coauthor and OGB loaders on tiny raw files written here in each dataset's own format."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from qgnn.data import load_dataset
from qgnn.data.pyg_large import per_class_split, raw_location
from qgnn.errors import ConfigError, DataNotFoundError
from qgnn.testing.fixtures import data_env  # noqa: F401  (autouse fixture: offline, session cache)

N, F, C = 12, 5, 3
# an undirected path 0-1-...-11 plus one chord 0-6, each pair stored once (row < col)
PAIRS = [(i, i + 1) for i in range(N - 1)] + [(0, 6)]


def _labels():
    return np.arange(N) % C


def _coo():
    r, c = zip(*PAIRS, strict=True)
    both_r, both_c = list(r) + list(c), list(c) + list(r)
    return sp.coo_matrix((np.ones(len(both_r), np.float32), (both_r, both_c)), shape=(N, N))


def _undirected_set():
    return {(a, b) for a, b in PAIRS} | {(b, a) for a, b in PAIRS}


def _edges(data):
    return set(map(tuple, data.edge_index.t().tolist()))


def _write_reddit(folder, x, y):
    node_types = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3])
    np.savez(folder / "reddit_data.npz", feature=x, label=y, node_types=node_types)
    sp.save_npz(folder / "reddit_graph.npz", _coo())
    return node_types == 1, node_types == 2, node_types == 3


def _write_flickr(folder, x, y):
    sp.save_npz(folder / "adj_full.npz", _coo().tocsr())  # PyG reads data / indices / indptr / shape
    np.save(folder / "feats.npy", x)
    (folder / "class_map.json").write_text(json.dumps({str(i): int(y[i]) for i in range(N)}))
    tr, va, te = [0, 1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11]
    (folder / "role.json").write_text(json.dumps({"tr": tr, "va": va, "te": te}))
    return tuple(np.isin(np.arange(N), s) for s in (tr, va, te))


def _write_shchur(path, x, y):
    """The gnn-benchmark npz (Shchur et al.): CSR adjacency and CSR attributes; one direction per pair (PyG
    makes it undirected)."""
    r, c = zip(*PAIRS, strict=True)
    adj = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(N, N))
    attr = sp.csr_matrix(x)
    np.savez(path, adj_data=adj.data, adj_indices=adj.indices, adj_indptr=adj.indptr, adj_shape=adj.shape,
             attr_data=attr.data, attr_indices=attr.indices, attr_indptr=attr.indptr, attr_shape=attr.shape,
             labels=y)


@pytest.mark.parametrize("name", ["reddit", "flickr", "amazon-computers", "amazon-photo", "coauthor-cs",
                                  "coauthor-physics"])
def test_pyg_loader_reads_written_files(tmp_path, name):
    rng = np.random.default_rng(1)
    x = (rng.random((N, F)) < 0.5).astype(np.float32)  # binary: gnn-benchmark's bag of words
    y = _labels()
    rel, files = raw_location(name)
    folder = tmp_path / rel
    folder.mkdir(parents=True)
    masks = None
    if name == "reddit":
        masks = _write_reddit(folder, x, y)
    elif name == "flickr":
        masks = _write_flickr(folder, x, y)
    else:
        _write_shchur(folder / files[0], x, y)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    folder.chmod(0o555)  # the data root may be read-only: processed files go to the cache
    try:
        ds = load_dataset(name, root=tmp_path)
    finally:
        folder.chmod(0o755)
    d = ds.data
    assert ds.name == name and ds.task == "node"
    assert d.num_nodes == N and ds.num_features == F and ds.num_classes == C
    assert torch.equal(d.x, torch.from_numpy(x)) and torch.equal(d.y, torch.from_numpy(y))
    assert _edges(d) == _undirected_set() and d.edge_index.size(1) == 2 * len(PAIRS)
    got = [d.train_mask, d.val_mask, d.test_mask]
    if masks is not None:  # official masks, as written
        for g, m in zip(got, masks, strict=True):
            assert torch.equal(g, torch.from_numpy(m))
    else:  # Shchur et al.: 20 / 30 per class; with 4 nodes per class all train
        assert torch.equal(d.train_mask, torch.ones(N, dtype=torch.bool))
        assert not d.val_mask.any() and not d.test_mask.any()
    assert not list(folder.glob("processed*")) and not (tmp_path / rel.parent / "processed").exists()


def test_per_class_split_counts_and_seed():
    y = torch.arange(300) % 3  # 100 per class
    tr, va, te = per_class_split(y, seed=4)
    for c in range(3):
        assert int(tr[y == c].sum()) == 20 and int(va[y == c].sum()) == 30 and int(te[y == c].sum()) == 50
    assert not (tr & va).any() and not (tr & te).any() and not (va & te).any() and bool((tr | va | te).all())
    assert all(torch.equal(a, b) for a, b in zip(per_class_split(y, seed=4), (tr, va, te), strict=True))
    assert not torch.equal(per_class_split(y, seed=5)[0], tr)


def test_amazon_split_seed_option(tmp_path):
    x = np.eye(N, F, dtype=np.float32)
    y = np.repeat(np.arange(2), 60)  # 120 nodes: 60 per class
    rel, files = raw_location("amazon-photo")
    (tmp_path / rel).mkdir(parents=True)
    r = np.arange(119)
    adj = sp.csr_matrix((np.ones(119, np.float32), (r, r + 1)), shape=(120, 120))
    attr = sp.csr_matrix(np.tile(x[:1], (120, 1)))
    np.savez(tmp_path / rel / files[0], adj_data=adj.data, adj_indices=adj.indices, adj_indptr=adj.indptr,
             adj_shape=adj.shape, attr_data=attr.data, attr_indices=attr.indices, attr_indptr=attr.indptr,
             attr_shape=attr.shape, labels=y)
    a = load_dataset("amazon-photo", root=tmp_path).data
    b = load_dataset("amazon-photo", root=tmp_path, split_seed=1).data
    assert int(a.train_mask.sum()) == 40 and int(a.val_mask.sum()) == 60 and int(a.test_mask.sum()) == 20
    assert torch.equal(a.train_mask, per_class_split(a.y)[0]) and not torch.equal(a.train_mask, b.train_mask)


@pytest.mark.parametrize("name", ["reddit", "coauthor-physics", "ogbn-arxiv"])
def test_missing_files_offline_one_clear_error(tmp_path, name):
    if name.startswith("ogbn"):
        pytest.importorskip("ogb")
        from qgnn.data.ogbn import raw_location as rl
    else:
        rl = raw_location
    rel, files = rl(name)
    with pytest.raises(DataNotFoundError) as e:
        load_dataset(name, root=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / rel) in msg and "QGNN_OFFLINE" in msg
    assert all(f in msg for f in files)


# ---------------------------------------------------------------------------------------------------- OGB

def _csv_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(",".join(str(v) for v in (r if isinstance(r, (list, tuple, np.ndarray)) else [r])) + "\n")


def _write_arxiv(folder, x, y, edges, split):
    """OGB's csv layout of ogbn-arxiv (what its zip unpacks to); RELEASE_v1.txt as OGB writes it."""
    raw = folder / "raw"
    _csv_gz(raw / "edge.csv.gz", edges)
    _csv_gz(raw / "node-feat.csv.gz", x.tolist())
    _csv_gz(raw / "node-label.csv.gz", y.tolist())
    _csv_gz(raw / "node_year.csv.gz", [2015 + i % 5 for i in range(len(y))])
    _csv_gz(raw / "num-node-list.csv.gz", [len(y)])
    _csv_gz(raw / "num-edge-list.csv.gz", [len(edges)])
    for part, idx in split.items():
        _csv_gz(folder / "split" / "time" / f"{part}.csv.gz", idx)
    (folder / "RELEASE_v1.txt").write_text("")


def test_ogbn_arxiv_reads_written_files(tmp_path):
    pytest.importorskip("ogb")
    from qgnn.data.ogbn import evaluate
    from qgnn.data.ogbn import raw_location as rl

    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, F)).astype(np.float32)  # signed embeddings, like arxiv's word2vec
    y = np.array([3, 0, 39, 5, 5, 1, 2, 7, 8, 9, 0, 1])
    edges = [(a, b) for a, b in PAIRS]  # directed, as published (citing -> cited)
    split = {"train": [0, 1, 2, 3, 4, 5], "valid": [6, 7], "test": [8, 9, 10, 11]}
    rel, _ = rl("ogbn-arxiv")
    _write_arxiv(tmp_path / rel, x, y, edges, split)
    ds = load_dataset("ogbn-arxiv", root=tmp_path)
    d = ds.data
    assert ds.num_classes == 40 and ds.num_features == F and d.num_nodes == N
    assert torch.allclose(d.x, torch.from_numpy(x)) and torch.equal(d.y, torch.from_numpy(y))
    assert d.x.dtype == torch.float32 and d.y.dim() == 1
    assert _edges(d) == set(edges)  # arxiv is not made undirected (OGB's add_inverse_edge is False)
    for m, part in zip((d.train_mask, d.val_mask, d.test_mask), ("train", "valid", "test"), strict=True):
        assert m.nonzero().view(-1).tolist() == split[part]
    again = load_dataset("ogbn-arxiv", root=tmp_path).data  # from the weights-only cache
    assert torch.equal(again.edge_index, d.edge_index) and torch.equal(again.test_mask, d.test_mask)
    pred = d.y.clone()
    pred[:3] = (pred[:3] + 1) % 40
    assert evaluate("ogbn-arxiv", d.y, pred) == pytest.approx(1 - 3 / N)
    # the runner's node scores go through OGB's Evaluator for an OGB dataset
    from qgnn.data import ogbn
    from qgnn.train.tasks import accuracy, node_scores

    calls = []
    real = ogbn.evaluate
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(ogbn, "evaluate", lambda *a: calls.append(a[0]) or real(*a))
    logits = torch.nn.functional.one_hot(pred, 40).float()
    scores = node_scores(logits, d)
    monkeypatch.undo()
    assert calls == ["ogbn-arxiv"] * 3
    assert scores["test_acc"] == pytest.approx(accuracy(logits[d.test_mask], d.y[d.test_mask]))


def test_ogbn_without_ogb_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_ogb(name, *args, **kwargs):
        if name == "ogb" or name.startswith("ogb."):
            raise ImportError("No module named 'ogb'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ogb)
    with pytest.raises(ConfigError) as e:
        load_dataset("ogbn-products", root=tmp_path)
    assert 'pip install "qgnn[ogb]"' in str(e.value) and "\n" not in str(e.value)


def test_dense_feature_defaults():
    from qgnn.data.registry import row_normalize_by_default

    assert not row_normalize_by_default("ogbn-arxiv") and not row_normalize_by_default("reddit")
    assert row_normalize_by_default("amazon-photo") and row_normalize_by_default("coauthor-cs")


def test_corrupt_raw_file_is_one_clear_error(tmp_path):
    from qgnn.errors import QgnnError

    rel, files = raw_location("coauthor-cs")
    (tmp_path / rel).mkdir(parents=True)
    (tmp_path / rel / files[0]).write_bytes(b"not an npz")
    with pytest.raises(QgnnError) as e:
        load_dataset("coauthor-cs", root=tmp_path)
    assert files[0] in str(e.value) and str(tmp_path / rel) in str(e.value) and "\n" not in str(e.value)
