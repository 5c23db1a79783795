"""``qgnn eval model.onnx``: an ONNX export (``qgnn export --format onnx``) run by onnxruntime's CPU provider on
the data it was trained on, with the figures ``qgnn eval`` reports for the packed file (accuracy, or MAE / RMSE
for a regression model; latency, peak memory, file size).

The model's ``qgnn`` metadata property (written by :func:`~qgnn.export.onnx_export.build_onnx`) carries what
preparing the inputs needs: the task, the feature and class counts, the training config (dataset,
``normalize_features``, fold seed, batch size) and, for graph tasks, the fold of the selected run, whose test
(or validation) graphs are scored, as :mod:`qgnn.export.evaluate` does for the packed file. The batches are the
packed file's (:func:`~qgnn.export.evaluate.eval_inputs`), converted to numpy once before timing. onnxruntime
runs with as many intra-op threads as torch (``OMP_NUM_THREADS``), so its latency compares with the runtime's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qgnn.errors import ConfigError

from .measure import median_latency, peak_memory

__all__ = ["evaluate_onnx", "is_onnx_path", "onnx_summary"]


def is_onnx_path(path: str | os.PathLike) -> bool:
    """Whether ``qgnn eval`` reads ``path`` as an ONNX model (its name ends in ``.onnx``)."""
    return str(path).lower().endswith(".onnx")


def _require_onnxruntime():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError("evaluating an ONNX model needs the optional packages onnx and onnxruntime: "
                          "pip install 'qgnn[onnx]'") from None
    return onnx, onnxruntime


def onnx_summary(path: str | os.PathLike) -> dict:
    """The ``qgnn`` metadata of the ONNX model at ``path`` (task, num_features, num_classes, bits, config,
    source, paths); ConfigError for a missing file, a file that is not ONNX, or an ONNX model qgnn did not
    write."""
    onnx, _ = _require_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / ValueError / OSError subclasses for a bad file
        raise ConfigError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    try:
        summary = json.loads(props["qgnn"])
    except (KeyError, ValueError):
        raise ConfigError(f"{path}: an ONNX model without qgnn's metadata (not written by `qgnn export --format "
                          "onnx`); qgnn eval cannot tell which data it was trained on") from None
    missing = [k for k in ("task", "num_features", "num_classes") if k not in summary]
    if missing:
        raise ConfigError(f"{path}: qgnn metadata lacks {', '.join(missing)}")
    return summary


def _session(ort, path: Path):
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()  # the runtime's threads: comparable latencies
    so.inter_op_num_threads = 1
    # no arena and no memory-pattern pre-allocation: onnxruntime otherwise keeps a pass's buffers after the
    # warm-up, and the RSS growth during a pass (what peak memory measures) would miss them
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def evaluate_onnx(path: str | os.PathLike, dataset: str | None = None, root=None, split: str = "test",
                  repeats: int = 5) -> dict:
    """Evaluate an ONNX export with onnxruntime; the keys of :func:`~qgnn.export.evaluate.evaluate_file`'s
    result (``paths``: ``["onnxruntime <version> (CPU)"]``) plus ``onnx_paths``, the op path of each layer
    recorded at export."""
    import torch

    from .evaluate import _accuracy, _eval_data, _regression, peak_passes

    path = Path(path)
    desc = onnx_summary(path)
    _, ort = _require_onnxruntime()
    if desc["task"] == "graph" and split != "all" and not (desc.get("source") or {}).get("selected_run"):
        raise ConfigError(f"{path} records no selected run (exported by an older qgnn), so its test fold is "
                          "unknown; pass --split all, or export the checkpoint again")
    cfg, inputs, scale = _eval_data(desc, dataset, root, split)
    sess = _session(ort, path)
    feeds = []
    for x, ei, b, _, _ in inputs:
        feed = {"x": x.numpy(), "edge_index": ei.numpy()}
        if desc["task"] == "graph":
            feed["batch"] = b.numpy()
        feeds.append(feed)

    def forward():
        return [sess.run(["logits"], f)[0] for f in feeds]

    try:
        outs = [torch.from_numpy(o) for o in forward()]  # warm-up (onnxruntime plans its first run)
    except Exception as e:  # onnxruntime's own errors (e.g. per-node tables sized for another graph): one line
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"onnxruntime cannot run {path.name} on {cfg.dataset}: {msg}") from None
    if scale is None:
        acc, n = _accuracy(outs, inputs)
        scores = {"accuracy": acc}
    else:
        mae, rmse, n = _regression(outs, inputs, scale)
        scores = {"mae": mae, "rmse": rmse}
    latency, times = median_latency(forward, repeats=repeats, warmup=0)
    passes = peak_passes(latency)
    peak = peak_memory(forward, passes)
    return {"file": str(path), "dataset": cfg.dataset, "split": split, "evaluated": n, **scores,
            "latency_ms": latency * 1e3, "latency_runs_ms": [t * 1e3 for t in times], "peak_memory_bytes": peak,
            "peak_passes": passes, "file_bytes": path.stat().st_size, "bits": desc.get("bits") or {},
            "paths": [f"onnxruntime {ort.__version__} (CPU)"], "onnx_paths": desc.get("paths") or {}}
