"""Runtime of exported LightGCN recommendation models: packed table -> final embeddings -> full-ranking metrics.

:class:`RecIntModel` reads the ``task = "rec"`` layout (:mod:`qgnn.export.rec_format`) and rebuilds the
ego table the fake-quant model uses in eval mode, once, at load time:

* ``node_levels`` (GNAQ): ê_ij = levels[i, q_ij], a gather, as ``NodeLevelQuantizer.dequantize``;
* ``uniform`` (QAT / LSQ): ê = (q − z) · s (binary: q · s) from the unpacked codes, as the fake quantizer's
  ``(clamp(round(x / s) + z) − z) · s`` (the same float32 operations, so the same bits).

Then LightGCN itself (He et al., SIGIR 2020): E_final = Σ_{k=0..L} Â^k Ê / (L + 1) with
Â = D^{-1/2} A D^{-1/2} of the training interactions, through the model's own propagation code
(:class:`qgnn.models.lightgcn.NormAdj`, :func:`~qgnn.models.lightgcn.layer_mean`), and scores
ŷ_ui = ⟨e_u, e_i⟩. Given the same training graph the final embeddings, the scores and every top-K list are
identical to the fake-quant model's (tests; ``benchmarks/export.py`` on ml-100k). The propagation is float32:
Â is a real-valued normalised matrix, so integer arithmetic has nothing exact to offer there; what the
file saves is storage (b-bit codes instead of FP32 entries).

The graph is not in the file: :meth:`RecIntModel.set_graph` takes the training interactions of the evaluation
dataset (``RecDataset.bipartite_edge_index("train")``), which :func:`evaluate_rec` checks against the
descriptor's fingerprint of the training graph.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from qgnn.errors import CheckpointError, ConfigError
from qgnn.models.lightgcn import NormAdj, layer_mean

from .packing import unpack_bits
from .rec_format import graph_fingerprint

__all__ = ["RecIntModel", "decode_table", "evaluate_rec", "REC_SPLITS"]

REC_SPLITS = ("test", "val")


def decode_table(table: dict, tensors: dict[str, Tensor], num_nodes: int, hidden: int) -> Tensor:
    """The dequantized ego table [N, d] (float32) of a validated descriptor's ``model.table``."""
    if table["kind"] == "node_levels":
        try:
            codes = unpack_bits(tensors[table["codes"]], table["bits"], num_nodes * hidden)
        except ConfigError as e:
            raise CheckpointError(f"model.table: {e}") from None
        return torch.gather(tensors[table["levels"]], 1, codes.view(num_nodes, hidden).long())
    from .runtime import WeightQ  # unpacking and table checks of packed weights (scales > 0, z in the grid)

    return WeightQ(table, tensors, "model.table").dequant.to(torch.float32).contiguous()


class RecIntModel:
    """An exported LightGCN. ``set_graph(edge_index)`` then ``model()`` -> (user [U, d], item [I, d]) final
    embeddings, like :class:`~qgnn.models.lightgcn.LightGCN` in eval mode; ``scores(users)`` -> [len, I]."""

    task = "rec"

    def __init__(self, tensors: dict[str, Tensor], desc: dict):
        self.desc = desc
        m = desc["model"]
        self.num_users, self.num_items = m["num_users"], m["num_items"]
        self.hidden, self.num_layers = m["hidden"], m["num_layers"]
        self.table_kind = m["table"]["kind"]
        self.ego = decode_table(m["table"], tensors, self.num_nodes, self.hidden)
        # stored table: the tensors (codes, levels) plus a uniform grid's inline float32 scale / zero-point
        t = m["table"]
        inline = 4 * sum(isinstance(t.get(k), list) for k in ("scale", "zero_point")) if t["kind"] == "uniform" else 0
        self.table_bytes = sum(v.numel() * v.element_size() for v in tensors.values()) + inline
        self.adj: NormAdj | None = None
        self.edge_index: Tensor | None = None
        self.paths = {"table": "gather levels[i, q_ij]" if self.table_kind == "node_levels" else "(q - z) * s",
                      "propagation": "NormAdj float32 CSR (qgnn.models.lightgcn)"}

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    def set_graph(self, edge_index: Tensor) -> RecIntModel:
        """Propagate over this undirected user-item graph (users 0..U-1, items U..U+I-1)."""
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ConfigError("edge_index must be a [2, num_edges] integer tensor")
        if edge_index.numel() and int(edge_index.max()) >= self.num_nodes:
            raise ConfigError(f"edge_index refers to node {int(edge_index.max())}; the model has {self.num_nodes}")
        self.edge_index = edge_index
        self.adj = NormAdj(edge_index.cpu(), self.num_nodes)
        return self

    def eval(self) -> RecIntModel:  # the RecTask.evaluate interface: there is no training mode
        return self

    @torch.no_grad()
    def __call__(self) -> tuple[Tensor, Tensor]:
        if self.adj is None:
            raise ConfigError("RecIntModel.set_graph(edge_index) must be called before scoring")
        out = layer_mean(self.ego, self.adj, self.num_layers)
        return out[: self.num_users], out[self.num_users:]

    @torch.no_grad()
    def scores(self, users: Tensor) -> Tensor:
        ue, ie = self()
        return ue[users] @ ie.T


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
    items excluded; val: training items), with the latency (median of ``repeats`` passes: propagation and
    ranking of every user with a target item), the peak RSS growth of one pass and the file size."""
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
    metrics = task.evaluate(model, split)  # also the warm-up
    latency, times = median_latency(lambda: task.evaluate(model, split), repeats=repeats, warmup=0)
    peak = peak_memory(lambda: task.evaluate(model, split))
    target = task.val_idx if split == "val" else task.test_idx
    return {"file": str(path), "task": "rec", "dataset": ds.name, "split": split,
            "evaluated": int((target.counts > 0).sum()), **metrics,
            "latency_ms": latency * 1e3, "latency_runs_ms": [t * 1e3 for t in times], "peak_memory_bytes": peak,
            "file_bytes": path.stat().st_size, "table_bytes": model.table_bytes,
            "fp32_table_bytes": 4 * model.num_nodes * model.hidden, "bits": model.desc.get("bits", {}),
            "paths": sorted(set(model.paths.values()))}
