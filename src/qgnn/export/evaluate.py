"""``qgnn eval``: accuracy, latency, peak memory and file size of an export file on a dataset.

Node tasks: the whole graph in one forward, accuracy on the split's mask (``test`` by default). Graph tasks:
the test (or validation) fold of the run the checkpoint was selected from (``source.selected_run.fold``,
folds drawn with the config's ``fold_seed``), or every graph with ``split="all"``, in batches of the
config's batch size. Latency is the median over ``repeats`` passes over the evaluated data; peak memory the
RSS growth during one pass (:mod:`qgnn.export.measure`; the median over up to 5 passes where a pass is short,
:func:`peak_passes`). A model the packed executor runs (:mod:`qgnn.export.packed`) is loaded first, as a
deployment would: ``IntModel.prepare`` builds the graph plans and encodes the features as the first layer's
codes once per graph (or batch of graphs), and the passes time ``IntModel.run``.

``fp32_reference=True`` (``qgnn eval --fp32-reference``) also runs the same architecture as plain PyG FP32
layers with the file's dequantized weights (:mod:`qgnn.export.fp32_reference`; its CSR ``adj_t`` forms are
built for every batch before timing, as the runtime's graph plans are built at its load step) on the same
inputs in the same process, and reports its accuracy, latency and peak memory, measured the same way, with
``speedup`` = FP32 latency / runtime latency and ``memory_ratio`` = runtime peak / FP32 peak. Order: both
latencies first, then both peaks (``peak_memory`` fixes glibc's malloc thresholds, which slows later
allocations).
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
    cfg, inputs, _ = _eval_data(desc, dataset, root, split)
    return cfg, inputs


def _eval_data(desc: dict, dataset: str | None, root, split: str):
    """(config, :func:`eval_inputs`' batches, target scale): a regression dataset's (mean, std) of the run's
    training targets, which map the model's standardised outputs back to the target's units
    (:mod:`qgnn.train.regression`); None for classification."""
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
        return cfg, [(d.x, d.edge_index, None, d.y, mask)], None
    fold = ((desc.get("source") or {}).get("selected_run") or {}).get("fold") or 0
    s = ds.folds(k=10, seed=cfg.fold_seed)[fold]
    graphs = ds.dataset if split == "all" else ds.dataset[getattr(s, split)]
    scale = None
    if getattr(ds, "regression", False):
        from qgnn.data.molecules import target_stats

        scale = target_stats(ds.targets[s.train])
    loader = DataLoader(graphs, batch_size=cfg.batch_size or 32)
    return cfg, [(b.x, b.edge_index, b.batch, b.y, None) for b in loader], scale


def _regression(outs, inputs, scale) -> tuple[float, float, int]:
    """(MAE, RMSE, graphs) of standardised outputs against the targets, in the target's units."""
    import torch

    from qgnn.train.regression import regression_scores

    pred = torch.cat([o.view(-1) for o in outs]) * scale[1] + scale[0]
    y = torch.cat([t[3].view(-1) for t in inputs])
    return (*regression_scores(pred, y), int(y.numel()))


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


def _agreement(outs_a, outs_b, inputs) -> float:
    """Share of the evaluated examples (the split's mask) on which two models predict the same class."""
    same = total = 0
    for a, b, (_, _, _, _, mask) in zip(outs_a, outs_b, inputs, strict=True):
        pa, pb = a.argmax(-1), b.argmax(-1)
        if mask is not None:
            pa, pb = pa[mask], pb[mask]
        same += int((pa == pb).sum())
        total += int(pa.numel())
    return same / total if total else 0.0


def peak_passes(latency: float) -> int:
    """How many passes the peak memory is the median of: 5 for a pass under 0.2 s, down to one for a
    second or more (a large graph's pass is long and its peak steady)."""
    return max(1, min(5, int(1.0 / max(latency, 1e-6))))


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None  # a zero peak (no RSS growth): no meaningful ratio


def evaluate_file(path: str | os.PathLike, dataset: str | None = None, root=None, split: str = "test",
                  repeats: int = 5, gemm: str = "auto", agg: str = "auto", model: IntModel | None = None,
                  fp32_reference: bool = False) -> dict:
    """Evaluate an export file; returns accuracy, latency, peak memory, file size and the ops' paths, and
    with ``fp32_reference`` the FP32 PyG twin's figures (``fp32``), ``speedup`` and ``memory_ratio``. A path
    ending in ``.onnx`` is an ONNX export, run by onnxruntime (:func:`~qgnn.export.onnx_eval.evaluate_onnx`)."""
    from .onnx_eval import evaluate_onnx, is_onnx_path
    from .runtime import load_int_model  # torch / PyG: imported here so `qgnn --help` can read SPLITS

    path = Path(path)
    if is_onnx_path(path) and model is None:  # `qgnn export --format onnx`: onnxruntime runs it
        if fp32_reference:
            raise ConfigError("--fp32-reference builds its FP32 twin from the packed file; evaluate the qgnn "
                              "export (qgnn export without --format onnx) for it")
        if gemm != "auto" or agg != "auto":
            raise ConfigError("--gemm / --agg choose kernels of qgnn's runtime; an ONNX model runs on onnxruntime")
        return evaluate_onnx(path, dataset=dataset, root=root, split=split, repeats=repeats)
    model = model or load_int_model(path, gemm=gemm, agg=agg)
    if model.desc.get("task") == "rec":  # LightGCN: Recall / NDCG @10, @20 (qgnn.export.rec)
        if fp32_reference:
            raise ConfigError("--fp32-reference is not available for LightGCN (rec) models; evaluate them "
                              "without it")
        from .rec import evaluate_rec

        return evaluate_rec(path, model, dataset, root, split, repeats)
    cfg, inputs, scale = _eval_data(model.desc, dataset, root, split)
    if scale is not None and fp32_reference:
        raise ConfigError("--fp32-reference compares accuracies; it is not available for a regression model "
                          "(evaluate it without the flag: MAE / RMSE)")
    if getattr(model, "packed", None) is not None:
        # the load step (graph plans, features encoded as codes) once per graph or batch of graphs, as a
        # deployment does; forwards run on it (the FP32 twin likewise builds each batch's adj_t once)
        prepared = [model.prepare(x, ei, b if model.task != "node" else None) for x, ei, b, _, _ in inputs]

        def forward():
            return [model.run(p) for p in prepared]
    else:
        def forward():
            return run_all(model, inputs)
    outs = forward()  # warm-up: builds and caches the graph plans (IntModel runs without grad)
    if scale is None:
        acc, n = _accuracy(outs, inputs)
        scores = {"accuracy": acc}
    else:  # a regression model: MAE / RMSE in the target's units, no accuracy
        mae, rmse, n = _regression(outs, inputs, scale)
        scores = {"mae": mae, "rmse": rmse}
    ref = _Fp32Run(path, inputs, outs) if fp32_reference else None
    latency, times = median_latency(forward, repeats=repeats, warmup=0)
    if ref is not None:
        ref.time(repeats)  # before either peak (module docstring)
    peak_repeats = peak_passes(latency)
    peak = peak_memory(forward, peak_repeats)
    paths = sorted(set(model.paths.values()))
    r = {"file": str(path), "dataset": cfg.dataset, "split": split, "evaluated": n, **scores,
         "latency_ms": latency * 1e3, "latency_runs_ms": [t * 1e3 for t in times], "peak_memory_bytes": peak,
         "peak_passes": peak_repeats,
         "file_bytes": path.stat().st_size, "bits": model.desc.get("bits", {}), "paths": paths}
    if getattr(model, "packed", None) is not None:
        r["kernels"] = model.packed.kernels()
    if ref is not None:
        ref.measure_peak(peak_repeats)
        r["fp32"] = {"latency_ms": ref.latency * 1e3, "peak_memory_bytes": ref.peak, "accuracy": ref.accuracy,
                     "agreement": ref.agreement}
        r["speedup"] = _ratio(ref.latency, latency)
        r["memory_ratio"] = _ratio(peak, ref.peak)
    return r


class _Fp32Run:
    """The FP32 PyG reference of ``path`` on ``inputs``: built, its graphs loaded (CSR ``adj_t`` per batch),
    warmed up once and scored against the labels and the runtime's outputs ``int_outs``."""

    def __init__(self, path: Path, inputs, int_outs):
        from .fp32_reference import from_file

        self.model = from_file(path)
        self.inputs = [(x, self.model.graph(ei, x.size(0)), b, y, mask) for x, ei, b, y, mask in inputs]
        outs = run_all(self.model, self.inputs)  # warm-up
        self.accuracy = _accuracy(outs, self.inputs)[0]
        self.agreement = _agreement(outs, int_outs, self.inputs)
        self.latency = self.peak = None

    def run(self):
        return run_all(self.model, self.inputs)

    def time(self, repeats: int) -> None:
        self.latency, _ = median_latency(self.run, repeats=repeats, warmup=0)

    def measure_peak(self, repeats: int = 1) -> None:
        self.peak = peak_memory(self.run, repeats)
