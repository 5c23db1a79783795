"""Runtime of exported LightGCN recommendation models: the packed table -> final embeddings -> full ranking.

What is held after load (:class:`RecIntModel`): the file's packed codes and levels / scale
(:class:`~qgnn.export.rec_table.PackedTable`: ``N d b / 8`` bytes of codes, plus GNAQ's levels, ``N 2^b`` bytes
in FP8 or ``4 N 2^b`` in float32, or a scalar scale and zero-point), and after :meth:`RecIntModel.set_graph`
the graph plan (the CSR of Â). No float32 [N, d] table is kept between passes.

What LightGCN's inference needs, and why part of it is float. The file stores the *ego* table Ê (layer 0),
not final embeddings: the score is ŷ_ui = ⟨F_u, F_i⟩ with F = Σ_{k=0..L} Â^k Ê / (L + 1) and
Â = D^{-1/2} A D^{-1/2} of the training interactions (He et al., SIGIR 2020). Â is a real-valued normalised
matrix, so Â^k Ê for k >= 1 lies on no b-bit grid, and F is a float table by nature. A pass therefore

1. decodes Ê (bit-identical to the fake-quant model's eval ``ego()``: the gather L[i, q_ij], or (q − z) · s)
   and propagates it with LightGCN's own product (:class:`qgnn.models.lightgcn.NormAdj`) and the float32
   operations of :func:`~qgnn.models.lightgcn.layer_mean` in its order, accumulated in place: float32,
   transient, O(L · nnz(Â) · d) work, a few percent of a full-ranking pass on gowalla;
2. ranks every user against every item from int8 codes of F (:func:`qgnn.export.rec_rank.topk_int8`:
   fbgemm's int8 GEMM, group-maximum candidate selection, exact float re-ranking of the candidates with a
   per-user proof that no other item belongs in the top k), so the top-k lists are those of the exact
   float scores, as :func:`~qgnn.export.rec_rank.topk_reference` (plain float GEMM + ``torch.topk``) gives
   them, up to the order of scores equal within float32 rounding (``torch.topk`` orders exact ties
   arbitrarily in either path).

Scoring straight from the stored codes without step 1 would need F on a grid: true only when L = 0, or if
the file stored quantized final embeddings (a different model from the one trained). The alternative that
keeps the ego codes in the score, ŷ_u· = P_I (Ê F_u) with P = Σ Â^k / (L + 1), costs N d + L nnz(Â)
multiply-adds per user instead of I d, over twice a float GEMM's on gowalla.

``model()`` (final embeddings, float32) and ``scores(users)`` are the reference path, identical to the
fake-quant model's (tests). The graph is not in the file: :meth:`RecIntModel.set_graph` takes the training
interactions of the evaluation dataset (``RecDataset.bipartite_edge_index("train")``), which
:func:`evaluate_rec` checks against the descriptor's fingerprint of the training graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from qgnn.errors import ConfigError
from qgnn.models.lightgcn import NormAdj

from .rec_format import graph_fingerprint
from .rec_rank import Int8Items, metrics_from_topk, topk_int8, topk_reference
from .rec_table import PackedTable

__all__ = ["RecIntModel", "evaluate_rec", "REC_SPLITS", "RANK_PATHS"]

REC_SPLITS = ("test", "val")
RANK_PATHS = ("int8", "reference")


class RecIntModel:
    """An exported LightGCN (module docstring). ``set_graph(edge_index)``, then ``rank(users, exclude, k)`` ->
    top-k (ids, scores); ``model()`` -> (user [U, d], item [I, d]) final embeddings as LightGCN in eval mode."""

    task = "rec"

    def __init__(self, tensors: dict[str, Tensor], desc: dict):
        self.desc = desc
        m = desc["model"]
        self.num_users, self.num_items = m["num_users"], m["num_items"]
        self.hidden, self.num_layers = m["hidden"], m["num_layers"]
        self.table = PackedTable(m["table"], tensors, self.num_nodes, self.hidden)
        self.table_kind = self.table.kind
        self.adj: NormAdj | None = None
        self.edge_index: Tensor | None = None
        self.paths = {"table": "packed codes + levels (gather L[i, q_ij])" if self.table_kind == "node_levels"
                      else "packed codes + scale (q - z) * s",
                      "propagation": "NormAdj float32 CSR (qgnn.models.lightgcn)",
                      "ranking": "int8 GEMM (torch._int_mm) + exact float re-ranking of candidates"}

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    @property
    def table_bytes(self) -> int:
        """Bytes of the table held in memory: packed codes + levels / scale and zero-point."""
        return self.table.nbytes

    @property
    def ego(self) -> Tensor:
        """The dequantized ego table Ê [N, d], decoded on each access (not held)."""
        return self.table.decode()

    def held_tensors(self) -> dict[str, Tensor]:
        """Every tensor the model keeps between passes (table and graph plan)."""
        out = {f"table.{k}": v for k, v in self.table.tensors().items()}
        if self.adj is not None:
            out.update({f"graph.{k}": getattr(self.adj, k) for k in ("row", "col", "weight", "crow")})
        return out

    def set_graph(self, edge_index: Tensor) -> RecIntModel:
        """Propagate over this undirected user-item graph (users 0..U-1, items U..U+I-1)."""
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ConfigError("edge_index must be a [2, num_edges] integer tensor")
        if edge_index.numel() and int(edge_index.max()) >= self.num_nodes:
            raise ConfigError(f"edge_index refers to node {int(edge_index.max())}; the model has {self.num_nodes} "
                              f"({self.num_users} users + {self.num_items} items)")
        self.edge_index = edge_index
        self.adj = NormAdj(edge_index.cpu(), self.num_nodes)
        return self

    def eval(self) -> RecIntModel:  # the RecTask.evaluate interface: there is no training mode
        return self

    @torch.no_grad()
    def __call__(self) -> tuple[Tensor, Tensor]:
        """Final embeddings (user [U, d], item [I, d]), float32, computed from the packed table on each call."""
        if self.adj is None:
            raise ConfigError("RecIntModel.set_graph(edge_index) must be called before scoring")
        # layer_mean's sum ((Ê + ÂÊ) + Â²Ê) + ... / (L + 1), the same float32 operations in the same order, but
        # accumulated in place: three [N, d] tables alive at most (sum, layer k, layer k + 1), not five
        out = self.table.decode()
        h = out
        for _ in range(self.num_layers):
            h = self.adj(h)
            out += h
        out /= self.num_layers + 1
        return out[: self.num_users], out[self.num_users:]

    @torch.no_grad()
    def scores(self, users: Tensor) -> Tensor:
        ue, ie = self()
        return ue[self._users(users)] @ ie.T

    def _users(self, users: Tensor) -> Tensor:
        if not isinstance(users, Tensor) or users.dim() != 1 or users.is_floating_point() or users.dtype == torch.bool:
            raise ConfigError("users must be a 1-d integer tensor of user ids")
        if users.numel() and (int(users.min()) < 0 or int(users.max()) >= self.num_users):
            raise ConfigError(f"user ids must lie in [0, {self.num_users}), got [{int(users.min())}, "
                              f"{int(users.max())}]")
        return users.long()

    @torch.no_grad()
    def rank(self, users: Tensor, exclude=(), k: int = 20, chunk: int = 256, path: str = "int8",
             stats: dict | None = None) -> tuple[Tensor, Tensor]:
        """Top-k item ids and exact float32 scores [len(users), k] of ``users`` over all items, the pairs of the
        ``exclude`` indexes (``UserItemIndex``, e.g. training interactions) left out (score −inf). One pass:
        decode, propagate, rank in chunks of ``chunk`` users by ``path`` (``int8``: module docstring;
        ``reference``: float32 GEMM + ``torch.topk``). ``stats``: see :func:`~qgnn.export.rec_rank.topk_int8`."""
        if path not in RANK_PATHS:
            raise ConfigError(f"unknown ranking path {path!r}; valid: {', '.join(RANK_PATHS)}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or chunk < 1:
            raise ConfigError(f"k and chunk must be integers >= 1, got {k!r}, {chunk!r}")
        users = self._users(users)
        exclude = list(exclude)
        for ex in exclude:
            if ex.num_items != self.num_items or ex.counts.numel() != self.num_users:
                raise ConfigError(f"an exclusion index is for {ex.counts.numel()} users / {ex.num_items} items; "
                                  f"the model has {self.num_users} / {self.num_items}")
        ue, ie = self()
        if path == "reference":
            return topk_reference(ue, ie, users, exclude, k, chunk)
        return topk_int8(ue, Int8Items(ie), users, exclude, k, chunk=chunk, stats=stats)

    def evaluate(self, task, split: str, path: str = "int8", chunk: int = 256, stats: dict | None = None) -> dict:
        """Recall / NDCG @10, @20 on ``split`` of a ``RecTask`` (val: train items excluded; test: train and
        val excluded), every user with a target item ranked by :meth:`rank`: the figures
        ``RecTask.evaluate`` gives for the fake-quant model."""
        target = task.val_idx if split == "val" else task.test_idx
        exclude = [task.train_idx] if split == "val" else [task.train_idx, task.val_idx]
        users = torch.nonzero(target.counts > 0).flatten()
        idx, vals = self.rank(users, exclude, 20, chunk=chunk, path=path, stats=stats)
        return metrics_from_topk(users, idx, vals, target, batch_users=task.eval_batch_users)


def _dataset(desc: dict, dataset: str | None, root):
    from qgnn.data import load_dataset
    from qgnn.data.registry import dataset_task

    raw = desc.get("config") or {}
    name = dataset or raw.get("dataset")
    if not name:
        raise ConfigError("the export file records no dataset; pass --dataset")
    if dataset_task(name) != "rec":
        raise ConfigError(f"{name} is a {dataset_task(name)} dataset but the model is for rec tasks")
    quant = raw.get("quant") or {}
    ds = load_dataset(name, root=root, **{k: quant[k] for k in ("val_frac",) if k in quant})
    m = desc["model"]
    if (ds.num_users, ds.num_items) != (m["num_users"], m["num_items"]):
        raise ConfigError(f"{name} has {ds.num_users} users / {ds.num_items} items; the model has "
                          f"{m['num_users']} / {m['num_items']}")
    return ds


def evaluate_rec(path: str | os.PathLike, model: RecIntModel, dataset: str | None = None, root=None,
                 split: str = "test", repeats: int = 5) -> dict:
    """Full-ranking Recall / NDCG @10, @20 of an exported LightGCN on ``split`` (test: training and validation
    items excluded; val: training items) by the runtime's pass (:meth:`RecIntModel.evaluate`), with the latency
    (median of ``repeats`` passes: decoding, propagation and int8 ranking of every user with a target item),
    the peak RSS growth of one pass, the file size, the table bytes held and the ranking's proof counts
    (``ranking``: users proved with the first candidates, after a retry, by the float fallback). The figures
    are the fake-quant model's, except where scores tie exactly at the cut-off (``torch.topk`` orders ties
    arbitrarily, so two valid lists may then differ)."""
    from qgnn.train.rec import RecTask

    from .measure import median_latency, peak_memory

    if split not in REC_SPLITS:
        raise ConfigError(f"split {split!r} is not evaluated for recommendation models; valid: "
                          f"{', '.join(REC_SPLITS)}")
    path = Path(path)
    ds = _dataset(model.desc, dataset, root)
    task = RecTask(ds)
    want = model.desc.get("graph")
    if want is not None and graph_fingerprint(task.edge_index, ds.num_users, ds.num_items) != want:
        raise ConfigError(f"the training interactions of {ds.name} differ from those the model was trained on "
                          f"({want['num_interactions']} interactions, sha256 {want['sha256'][:12]}...): another "
                          "split (val_frac, seed) or dataset version")
    model.set_graph(task.edge_index)
    stats: dict = {}
    metrics = model.evaluate(task, split, stats=stats)  # also the warm-up
    latency, times = median_latency(lambda: model.evaluate(task, split), repeats=repeats, warmup=0)
    peak = peak_memory(lambda: model.evaluate(task, split))
    target = task.val_idx if split == "val" else task.test_idx
    return {"file": str(path), "task": "rec", "dataset": ds.name, "split": split,
            "evaluated": int((target.counts > 0).sum()), **metrics,
            "latency_ms": latency * 1e3, "latency_runs_ms": [t * 1e3 for t in times], "peak_memory_bytes": peak,
            "file_bytes": path.stat().st_size, "table_bytes": model.table_bytes,
            "fp32_table_bytes": 4 * model.num_nodes * model.hidden, "bits": model.desc.get("bits", {}),
            "paths": sorted(set(model.paths.values())),
            "ranking": stats}
