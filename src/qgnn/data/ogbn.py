"""OGB node-property-prediction graphs (``ogbn-arxiv``, ``ogbn-products``) with their official splits.

Needs the ``ogb`` package (``pip install "qgnn[ogb]"``); without it loading raises one :class:`ConfigError`
saying so. Raw files are OGB's own layout under ``<root>/ogb/<ogbn_name>/`` (the folder OGB's download unzips
into, e.g. ``ogb/ogbn_arxiv/``): ``raw/edge.csv.gz``, ``raw/node-feat.csv.gz``, ``raw/node-label.csv.gz``,
``raw/num-node-list.csv.gz``, ``raw/num-edge-list.csv.gz`` (plus ``raw/node_year.csv.gz`` for arxiv) and
``split/<split>/{train,valid,test}.csv.gz`` (``time`` for arxiv: papers up to 2017 train, 2018 validate,
2019 on test; ``sales_ranking`` for products). They are read with OGB's ``read_graph_pyg``, with the edge
settings of OGB's ``master.csv`` (arxiv stays directed as published: citing -> cited; products stores both
directions). Found as for the other datasets (:func:`qgnn.data.paths.find_raw`); without them and online,
OGB's zip (its ``master.csv`` url) is downloaded and unpacked into ``cache_dir()/data/ogb/``.

OGB's ``PygNodePropPredDataset`` is not used to read: it writes processed files beside the raw ones (the data
root may be read-only) and pickles them. The graph and split masks are cached instead as a dict of tensors in
``cache_dir()/processed/ogb/<name>/<hash>/graph.pt`` (``torch.save``, read with ``weights_only=True``), keyed by
the raw folder's files. Scores use OGB's ``Evaluator`` (:func:`evaluate`: accuracy for both).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import torch
from torch_geometric.data import Data

from qgnn.data.paths import find_raw, processed_dir
from qgnn.data.planetoid import NodeDataset
from qgnn.errors import ConfigError, QgnnError, lookup

# name -> (split folder, additional node files)
_SOURCES = {"ogbn-arxiv": ("time", ("node_year",)), "ogbn-products": ("sales_ranking", ())}
NAMES = tuple(_SOURCES)
_KEYS = ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask")
INSTALL = 'pip install "qgnn[ogb]"'


def _require_ogb(name: str):
    try:
        import ogb  # noqa: F401
        from ogb.io.read_graph_pyg import read_graph_pyg
    except ImportError as e:
        raise ConfigError(f"dataset {name} needs the ogb package, which is not installed: {INSTALL}") from e
    return read_graph_pyg


def _meta(name: str) -> dict:
    import ogb.nodeproppred
    import pandas as pd

    master = pd.read_csv(Path(ogb.nodeproppred.__file__).parent / "master.csv", index_col=0, keep_default_na=False)
    return dict(master[name])


def raw_location(name: str) -> tuple[Path, list[str]]:
    """(folder relative to the data root, files relative to it) that :func:`load_ogbn` reads."""
    split, extra = _SOURCES[name]
    raw = ["edge", "node-feat", "node-label", "num-node-list", "num-edge-list", *extra]
    files = [f"raw/{f}.csv.gz" for f in raw] + [f"split/{split}/{s}.csv.gz" for s in ("train", "valid", "test")]
    return Path("ogb") / name.replace("-", "_"), files


def _download(name: str, folder: Path) -> None:
    """OGB's standard route: the zip at ``master.csv``'s url, unpacked, its folder moved to ``folder``."""
    from ogb.utils.url import download_url, extract_zip

    meta = _meta(name)
    parent = folder.parent
    zip_path = download_url(meta["url"], str(parent))
    try:
        extract_zip(zip_path, str(parent))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(zip_path)
    shutil.rmtree(folder, ignore_errors=True)  # find_raw made it empty
    shutil.move(str(parent / meta["download_name"]), str(folder))


def _read_raw(name: str, folder: Path) -> Data:
    import pandas as pd

    read_graph_pyg = _require_ogb(name)
    meta = _meta(name)
    split, extra = _SOURCES[name]
    with contextlib.redirect_stdout(io.StringIO()):  # OGB prints progress lines to stdout
        g = read_graph_pyg(str(folder / "raw"), add_inverse_edge=meta["add_inverse_edge"] == "True",
                           additional_node_files=list(extra), additional_edge_files=[], binary=False)[0]
    n = int(g.num_nodes)
    y = pd.read_csv(folder / "raw" / "node-label.csv.gz", compression="gzip", header=None).values
    masks = []
    for part in ("train", "valid", "test"):
        idx = pd.read_csv(folder / "split" / split / f"{part}.csv.gz", compression="gzip", header=None).values
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.from_numpy(idx.reshape(-1).astype("int64"))] = True
        masks.append(m)
    return Data(x=g.x.float(), edge_index=g.edge_index.long(), y=torch.from_numpy(y.reshape(-1).astype("int64")),
                train_mask=masks[0], val_mask=masks[1], test_mask=masks[2], num_nodes=n)


def _cached(name: str, folder: Path) -> Data:
    path = processed_dir("ogb", name, folder / "raw") / "graph.pt"
    if path.is_file():
        try:
            d = torch.load(path, weights_only=True, mmap=True)
            return Data(**{k: d[k] for k in _KEYS}, num_nodes=int(d["x"].size(0)))
        except Exception:  # truncated or not ours: read the raw files again
            pass
    try:
        data = _read_raw(name, folder)
    except QgnnError:
        raise
    except Exception as e:
        raise QgnnError(f"cannot build {name} from {folder}/ ({type(e).__name__}: {e}); the raw files there are "
                        f"corrupt or not OGB's format: replace them with the originals") from e
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: data[k] for k in _KEYS}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise QgnnError(f"cannot write {path} ({e}); set QGNN_CACHE to a writable folder") from e
    return data


def load_ogbn(name: str = "ogbn-arxiv", root: str | os.PathLike | None = None,
              normalize_features: bool = False) -> NodeDataset:
    """``ogbn-arxiv`` or ``ogbn-products`` as a :class:`NodeDataset` with OGB's official split as masks.

    ``normalize_features`` applies PyG's ``NormalizeFeatures`` after loading (off by default: the features are
    dense signed embeddings, see ``qgnn.data.registry.DENSE_FEATURES``).
    """
    key = lookup("dataset", name, {k: k for k in NAMES})
    _require_ogb(key)
    rel, files = raw_location(key)
    folder = find_raw(rel, files, root, download=lambda f: _download(key, f))
    data = _cached(key, folder)
    if normalize_features:
        import torch_geometric.transforms as T

        data = T.NormalizeFeatures()(data)
    num_classes = int(_meta(key)["num classes"])
    data.ogb_name = key  # the runner's node scores go through OGB's Evaluator (qgnn.train.tasks.node_scores)
    return NodeDataset(name=key, data=data, num_features=int(data.x.size(1)), num_classes=num_classes)


def evaluate(name: str, y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """OGB's ``Evaluator(name)`` score (accuracy for arxiv and products) of predicted class ids ``y_pred``."""
    key = lookup("dataset", name, {k: k for k in NAMES})
    _require_ogb(key)
    from ogb.nodeproppred import Evaluator

    ev = Evaluator(key)
    out = ev.eval({"y_true": y_true.reshape(-1, 1).cpu(), "y_pred": y_pred.reshape(-1, 1).cpu()})
    return float(out[ev.eval_metric])
