"""``qgnn eval``: accuracy, latency, peak memory and file size of an export file on a dataset.

Node tasks: the whole graph in one forward, accuracy on the split's mask (``test`` by default). Graph tasks:
the test (or validation) fold of the run the checkpoint was selected from (``source.selected_run.fold``,
folds drawn with the config's ``fold_seed``), or every graph with ``split="all"``, in batches of the
config's batch size. Latency is the median over ``repeats`` passes over the evaluated data; peak memory the
RSS growth during one pass (:mod:`qgnn.export.measure`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from qgnn.errors import ConfigError

from .measure import median_latency, peak_memory

if TYPE_CHECKING:
    from .runtime import IntModel

__all__ = ["evaluate_file", "eval_inputs", "SPLITS"]

SPLITS = ("test", "val", "train", "all")


def _config(desc: dict, dataset: str | None):
    from qgnn.train import TrainConfig
    from qgnn.train.runner import _dataset_task

    raw = dict(desc.get("config") or {})
    if dataset is None and "dataset" not in raw:
        raise ConfigError("the export file records no dataset; pass --dataset")
    if dataset is not None:
        raw["dataset"] = dataset
    task = _dataset_task(raw["dataset"])
    if task != desc["task"]:
        raise ConfigError(f"{raw['dataset']} is a {task} dataset but the model is for {desc['task']} tasks")
    raw.pop("task", None)
    return TrainConfig.from_dict(raw).resolve(task)


def eval_inputs(desc: dict, dataset: str | None = None, root=None, split: str = "test"):
    """The evaluation batches ``[(x, edge_index, batch or None, y, mask or None), ...]`` for ``desc``."""
    from torch_geometric.loader import DataLoader

    from qgnn.train.runner import load_for

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    cfg = _config(desc, dataset)
    ds = load_for(cfg, root)
    if ds.num_features != desc["num_features"] or ds.num_classes != desc["num_classes"]:
        raise ConfigError(f"{cfg.dataset} has {ds.num_features} features / {ds.num_classes} classes; the model "
                          f"expects {desc['num_features']} / {desc['num_classes']}")
    if desc["task"] == "node":
        d = ds.data
        mask = None if split == "all" else getattr(d, f"{split}_mask")
        return cfg, [(d.x, d.edge_index, None, d.y, mask)]
    if split == "all":
        graphs = ds.dataset
    else:
        fold = ((desc.get("source") or {}).get("selected_run") or {}).get("fold") or 0
        s = ds.folds(k=10, seed=cfg.fold_seed)[fold]
        graphs = ds.dataset[getattr(s, split)]
    loader = DataLoader(graphs, batch_size=cfg.batch_size or 32)
    return cfg, [(b.x, b.edge_index, b.batch, b.y, None) for b in loader]


def _accuracy(outs, inputs) -> tuple[float, int]:
    correct = total = 0
    for out, (_, _, _, y, mask) in zip(outs, inputs, strict=True):
        pred = out.argmax(-1)
        if mask is not None:
            pred, y = pred[mask], y[mask]
        correct += int((pred == y).sum())
        total += int(y.numel())
    return (correct / total if total else 0.0), total


def run_all(model, inputs):
    return [model(x, ei, b) if b is not None else model(x, ei) for x, ei, b, _, _ in inputs]


def evaluate_file(path: str | os.PathLike, dataset: str | None = None, root=None, split: str = "test",
                  repeats: int = 5, gemm: str = "auto", agg: str = "auto", model: IntModel | None = None) -> dict:
    """Evaluate an export file; returns accuracy, latency, peak memory, file size and the ops' paths."""
    from .runtime import load_int_model  # torch / PyG: imported here so `qgnn --help` can read SPLITS

    path = Path(path)
    model = model or load_int_model(path, gemm=gemm, agg=agg)
    if model.desc.get("task") == "rec":  # LightGCN: Recall / NDCG @10, @20 (qgnn.export.rec)
        from .rec import evaluate_rec

        return evaluate_rec(path, model, dataset, root, split, repeats)
    cfg, inputs = eval_inputs(model.desc, dataset, root, split)
    outs = run_all(model, inputs)  # warm-up: builds and caches the graph plans (IntModel runs without grad)
    acc, n = _accuracy(outs, inputs)
    latency, times = median_latency(lambda: run_all(model, inputs), repeats=repeats, warmup=0)
    peak = peak_memory(lambda: run_all(model, inputs))
    paths = sorted(set(model.paths.values()))
    return {"file": str(path), "dataset": cfg.dataset, "split": split, "evaluated": n, "accuracy": acc,
            "latency_ms": latency * 1e3, "latency_runs_ms": [t * 1e3 for t in times], "peak_memory_bytes": peak,
            "file_bytes": path.stat().st_size, "bits": model.desc.get("bits", {}), "paths": paths}
