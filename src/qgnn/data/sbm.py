"""Large synthetic node-classification graphs: a degree-corrected stochastic block model (SBM).

``sbm-100k`` (100,000 nodes, ~1,000,000 directed edges) and ``sbm-1m`` (1,000,000 nodes, ~10,000,000
directed edges) are :func:`sbm_dataset` with the settings in :data:`PRESETS`: 128 features, 40 balanced classes,
seed 0. The same seed gives the same tensors on every machine with the same numpy (all randomness comes from
``numpy.random.SeedSequence(seed)``, one child stream per part, never from torch's global generator).

**Graph.** Each class is a block of ``num_nodes / num_classes`` nodes (labels are a seeded permutation of
``arange(N) % C``, so node ids carry no label). Node i gets a weight θ_i ~ Pareto(x_m = 1, a =
``degree_exponent``), P(θ > t) = t^-a, so degrees are heavy-tailed (the degree distribution's tail falls as
k^-(a+1); a = 2 gives k^-3, as in preferential-attachment graphs): a mixed Poisson with mean ∝ θ_i, i.e.
the degree-corrected SBM of Karrer & Newman (2011). ``num_nodes * avg_degree / 2`` undirected pairs are drawn
in chunks: the first end i with probability ∝ θ_i; with probability ``homophily`` the second end j is drawn
∝ θ_j from i's block, else ∝ θ_j from all nodes of the other blocks. So every edge is inside its block with
probability ``homophily`` (edge homophily) for hubs and leaves alike. Self-loops (i = j) are dropped, and a
pair drawn twice is kept once (both are rare: the measured loss is under 1 % of the pairs at the presets),
so the graph has slightly fewer than ``num_nodes * avg_degree`` directed edges. Both directions of every pair
are stored: ``edge_index`` is symmetric, coalesced (no duplicates, no self-loops) and sorted by target, then
source, so ``ptr = cumsum(bincount(edge_index[1]))`` and ``edge_index[0]`` are the CSC (= CSR of ``adj_t``)
arrays without another sort. Nodes of low weight may end up isolated (about 0.2 % at the presets: the
expected degree is ``avg_degree * θ_i / mean(θ)``, 5 at θ = 1, and E[e^(-5θ)] ≈ 0.2 %); they can only be
classified from features.

**Features.** x_i = μ_{y_i} + σ ε_i with class centroids μ_c ~ N(0, I) and ε_i ~ N(0, I) in
``num_features`` dimensions, float32; σ = ``noise``. Signed, like OGB's embedding features (ogbn-arxiv,
ogbn-products). The presets' σ = 6 and homophily 0.5 are chosen so that a feature-only model is far from a
GNN and neither is near 100 %: on ``sbm-100k`` logistic regression on x reaches 33 % test accuracy, a 2-layer
MLP 31 %, a 2-layer GCN (hidden 128, 50 full-batch epochs) 84 %; chance is 2.5 % (``benchmarks/sbm.py``).

**Split.** A seeded random permutation: the first ``train_frac`` of it trains, the next ``val_frac``
validates, the rest tests (10 % / 10 % / 80 % at the presets). OGB-like proportions (ogbn-products trains
on 8 %, validates on 2 %) rather than Planetoid's 20 per class: the test set is large enough that accuracy
differences of a few tenths of a point between methods are resolved (80,000 test nodes at 100k: standard
error ~0.15 points), while a mini-batch epoch over the training nodes stays short (100,000 seeds at 1M,
~100 batches of 1,024).

**Cache.** Generated graphs are written to ``cache_dir()/processed/sbm/<name>-<hash>/graph.pt`` (hash of
every setting and :data:`GENERATOR_VERSION`) with ``torch.save`` and read with ``torch.load(weights_only=True,
mmap=True)``: no pickle, and a 1M-node graph opens without copying. A cache file that cannot be read or does
not hold what the settings say is generated again and replaced (written to a temporary file, then renamed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from qgnn.data.paths import cache_dir
from qgnn.data.planetoid import NodeDataset
from qgnn.errors import ConfigError, QgnnError, lookup

# Bump when the generator's output for given settings changes: it is part of the cache key.
GENERATOR_VERSION = 1
_CHUNK = 1 << 20  # pairs (and feature rows) per chunk: bounds the float64 temporaries; part of the output

DEFAULTS = dict(avg_degree=10.0, num_features=128, num_classes=40, homophily=0.5, degree_exponent=2.0,
                noise=6.0, train_frac=0.1, val_frac=0.1, seed=0)
PRESETS: dict[str, dict] = {"sbm-100k": dict(num_nodes=100_000), "sbm-1m": dict(num_nodes=1_000_000)}
NAMES = tuple(PRESETS)
_KEYS = ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask")


def _check(num_nodes, avg_degree, num_features, num_classes, homophily, degree_exponent, noise, train_frac,
           val_frac) -> None:
    checks = [
        (num_classes >= 2, f"num_classes must be >= 2, got {num_classes}"),
        (num_nodes >= 2 * num_classes, f"num_nodes must be >= 2 * num_classes, got {num_nodes}"),
        (num_nodes <= 3_000_000_000, f"num_nodes must be <= 3e9 (int64 pair keys), got {num_nodes}"),
        (avg_degree > 0, f"avg_degree must be > 0, got {avg_degree}"),
        (num_features >= 1, f"num_features must be >= 1, got {num_features}"),
        (0 <= homophily <= 1, f"homophily must be in [0, 1], got {homophily}"),
        (degree_exponent > 1, f"degree_exponent must be > 1 (finite mean degree), got {degree_exponent}"),
        (noise >= 0, f"noise must be >= 0, got {noise}"),
        (train_frac > 0 and val_frac >= 0 and train_frac + val_frac < 1,
         f"need train_frac > 0, val_frac >= 0 and train_frac + val_frac < 1, got {train_frac}, {val_frac}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _pairs(y: np.ndarray, theta: np.ndarray, num_classes: int, num_pairs: int, homophily: float,
           rng: np.random.Generator) -> np.ndarray:
    """Sorted unique keys ``a * N + b`` (a < b) of the drawn undirected pairs, self-loops dropped.

    Drawing ∝ θ is a binary search of a uniform number in the cumulative weights of the nodes laid out
    block by block; the other-block draw is uniform on [0, W - W_b) with block b's interval skipped.
    Memory: O(N + chunk) besides the O(E) keys.
    """
    n = len(y)
    order = np.argsort(y, kind="stable")  # node ids grouped by block
    cum = np.cumsum(theta[order])
    total = cum[-1]
    last = np.cumsum(np.bincount(y, minlength=num_classes)) - 1  # last position of each block
    end = cum[last]
    w_b = np.diff(end, prepend=0.0)
    start = end - w_b
    first = np.concatenate([[0], last[:-1] + 1])
    keys = []
    for s in range(0, num_pairs, _CHUNK):
        m = min(_CHUNK, num_pairs - s)
        i = order[np.minimum(np.searchsorted(cum, rng.random(m) * total, side="right"), n - 1)]
        b = y[i]
        intra = rng.random(m) < homophily
        t = rng.random(m)
        t = np.where(intra, start[b] + t * w_b[b], t * (total - w_b[b]))
        t += np.where(~intra & (t >= start[b]), w_b[b], 0.0)
        p = np.searchsorted(cum, t, side="right")
        # float rounding at a block's end must not move an in-block draw to the next block
        p = np.where(intra, np.clip(p, first[b], last[b]), np.minimum(p, n - 1))
        j = order[p]
        keep = i != j
        i, j = i[keep], j[keep]
        keys.append(np.minimum(i, j) * n + np.maximum(i, j))
    keys = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    first_seen = np.empty(len(keys), bool)
    first_seen[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first_seen[1:])
    return keys[first_seen]  # np.unique does the same, 15x slower here (numpy 2.x, 5M keys)


def _edge_index(keys: np.ndarray, n: int) -> np.ndarray:
    """Both directions of each pair, sorted by (target, source): the key ``dst * N + src``.

    ``keys`` (a < b, sorted) are already the sorted keys of the edges b -> a; those of a -> b are sorted once
    and the two sorted runs merged (a stable sort of two runs is one linear merge).
    """
    a, b = np.divmod(keys, n)
    fwd = np.sort(b * n + a)
    del a, b
    both = np.sort(np.concatenate([keys, fwd]), kind="stable")
    del fwd
    out = np.empty((2, len(both)), np.int64)
    np.divmod(both, n, out=(out[1], out[0]))
    return out


def sbm_graph(num_nodes: int = 2000, avg_degree: float = DEFAULTS["avg_degree"],
              num_features: int = DEFAULTS["num_features"], num_classes: int = DEFAULTS["num_classes"],
              homophily: float = DEFAULTS["homophily"], degree_exponent: float = DEFAULTS["degree_exponent"],
              noise: float = DEFAULTS["noise"], train_frac: float = DEFAULTS["train_frac"],
              val_frac: float = DEFAULTS["val_frac"], seed: int = DEFAULTS["seed"]) -> Data:
    """Generate the SBM graph described in the module docstring (no cache)."""
    _check(num_nodes, avg_degree, num_features, num_classes, homophily, degree_exponent, noise, train_frac,
           val_frac)
    r_lab, r_deg, r_edge, r_feat, r_split = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    n = int(num_nodes)
    y = r_lab.permutation(np.arange(n, dtype=np.int64) % num_classes)
    theta = r_deg.pareto(degree_exponent, n) + 1.0
    keys = _pairs(y, theta, num_classes, int(round(n * avg_degree / 2)), homophily, r_edge)
    edge_index = _edge_index(keys, n)
    del keys

    mu = r_feat.standard_normal((num_classes, num_features), dtype=np.float32)
    x = np.empty((n, num_features), np.float32)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        r_feat.standard_normal((e - s, num_features), dtype=np.float32, out=x[s:e])
        x[s:e] *= np.float32(noise)
        x[s:e] += mu[y[s:e]]

    perm = torch.from_numpy(r_split.permutation(n))
    n_train, n_val = int(round(train_frac * n)), int(round(val_frac * n))
    masks = []
    for part in (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]):
        m = torch.zeros(n, dtype=torch.bool)
        m[part] = True
        masks.append(m)
    return Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(edge_index), y=torch.from_numpy(y),
                train_mask=masks[0], val_mask=masks[1], test_mask=masks[2], num_nodes=n)


def _settings(num_nodes: int, **kwargs) -> dict:
    s = {**DEFAULTS, **kwargs, "num_nodes": int(num_nodes)}
    return {k: (float(v) if k not in ("num_features", "num_classes", "seed", "num_nodes") else int(v))
            for k, v in sorted(s.items())}


def cache_file(name: str, settings: dict) -> Path:
    """Where the graph of ``settings`` is cached: ``cache_dir()/processed/sbm/<name>-<hash>/graph.pt``."""
    blob = json.dumps({**settings, "version": GENERATOR_VERSION, "chunk": _CHUNK}, sort_keys=True)
    return cache_dir() / "processed" / "sbm" / f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}" / "graph.pt"


def _read(path: Path, settings: dict) -> Data | None:
    """The cached graph, or None when the file is missing, unreadable or not the graph of ``settings``."""
    if not path.is_file():
        return None
    try:
        d = torch.load(path, weights_only=True, mmap=True)
        n, f = settings["num_nodes"], settings["num_features"]
        ok = (isinstance(d, dict) and set(_KEYS) <= set(d) and all(isinstance(d[k], torch.Tensor) for k in _KEYS)
              and d["x"].shape == (n, f) and d["x"].dtype == torch.float32 and d["y"].shape == (n,)
              and d["edge_index"].dim() == 2 and d["edge_index"].size(0) == 2
              and d["edge_index"].dtype == torch.long
              and all(d[k].shape == (n,) and d[k].dtype == torch.bool for k in _KEYS[3:]))
    except Exception:  # truncated, not a zip, pickled objects: all mean "generate again"
        return None
    return Data(**{k: d[k] for k in _KEYS}, num_nodes=n) if ok else None


def _write(path: Path, data: Data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: data[k] for k in _KEYS}, tmp)
        os.replace(tmp, path)  # atomic: a reader (or an open mmap) never sees a half-written file
    except OSError as e:
        with contextlib.suppress(OSError):  # the folder may not exist or not be a folder
            tmp.unlink()
        raise QgnnError(f"cannot write the SBM graph cache {path} ({e}); set QGNN_CACHE to a writable folder") from e


def sbm_dataset(num_nodes: int = 2000, *, name: str = "sbm", normalize_features: bool = False, cache: bool = True,
        **kwargs) -> NodeDataset:
    """The SBM graph as a :class:`NodeDataset`, from the cache when it is there (see the module docstring).

    ``kwargs`` are :func:`sbm_graph`'s settings (``avg_degree``, ``num_features``, ``num_classes``,
    ``homophily``, ``degree_exponent``, ``noise``, ``train_frac``, ``val_frac``, ``seed``); unset ones take
    :data:`DEFAULTS`. ``normalize_features`` applies PyG's ``NormalizeFeatures`` (subtract the global minimum,
    then divide each row by its sum) after loading, as for Planetoid; the cache holds the raw features.
    ``cache=False`` generates without reading or writing the cache.
    """
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"sbm does not take option(s) {', '.join(unknown)}; it takes: {', '.join(DEFAULTS)}")
    settings = _settings(num_nodes, **kwargs)
    path = cache_file(name, settings)
    data = _read(path, settings) if cache else None
    if data is None:
        data = sbm_graph(**settings)
        if cache:
            _write(path, data)
    if normalize_features:
        import torch_geometric.transforms as T

        data = T.NormalizeFeatures()(data)
    return NodeDataset(name=name, data=data, num_features=settings["num_features"],
                       num_classes=settings["num_classes"])


def load_sbm(name: str = "sbm-100k", root: str | os.PathLike | None = None,
             normalize_features: bool = False) -> NodeDataset:
    """``sbm-100k`` or ``sbm-1m``: :func:`sbm_dataset` with :data:`PRESETS` (``root`` is unused: generated)."""
    del root
    key = lookup("sbm dataset", name, {k: k for k in PRESETS})
    return sbm_dataset(**PRESETS[key], name=key, normalize_features=normalize_features)
