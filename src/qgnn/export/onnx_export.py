"""ONNX export of a packed qgnn model: ``qgnn export CHECKPOINT OUT --format onnx`` and :func:`to_onnx`
(``docs/onnx.md``).

The ONNX graph (opset 18) is built from the export file's descriptor and tensors (``qgnn.export.format``),
layer by layer as the integer runtime (``qgnn.export.runtime``) computes it: integer matmuls as
``MatMulInteger`` on the codes (int32 accumulators), activation slots as ``QuantizeLinear`` (+ ``Clip`` for
grids narrower than 8 bits) and ``DequantizeLinear``, neighbourhood sums as ``Gather`` + ``ScatterND``
(``reduction="add"``) on integer codes, GCN's normalisation, GAT's softmax, BatchNorm and pooling in float
(:mod:`.onnx_quant`, :mod:`.onnx_graph`, :mod:`.onnx_layers`). onnxruntime's CPU provider runs it; its
predictions equal the runtime's (tests/export/test_export_onnx.py measures the agreement).

Inputs: ``x`` [N, F] float32, ``edge_index`` [2, E] int64 (N and E dynamic) and, for graph tasks,
``batch`` [N] int64 (the number of graphs is ``max(batch) + 1``). Output: ``logits`` [N or graphs, classes].
Per-node tables (A2Q ``granularity: "node"``) fix N to the training graph's node count. LightGCN (``task:
"rec"``) files are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qgnn.errors import ConfigError

__all__ = ["to_onnx", "build_onnx", "export_checkpoint_onnx", "OPSET", "require_onnx"]

from .onnx_graph import OPSET


def require_onnx():
    """The ``onnx`` package, or one clear ConfigError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the optional package onnx (and onnxruntime to run the model): "
                          "pip install 'qgnn[onnx]'") from None
    return onnx


def _check_supported(desc: dict) -> None:
    if desc.get("task") == "rec":
        raise ConfigError("ONNX export of LightGCN (task 'rec') models is not supported yet; export them with "
                          "--format qgnn and run them with qgnn's runtime")
    if desc.get("prompts") is not None:
        raise ConfigError("ONNX export of prompted models (GPF / GPF-plus / LoRAP) is not supported yet; export "
                          "them with --format qgnn and run them with qgnn's runtime")
    arch = desc.get("model", {}).get("arch")
    if arch not in ("node_stack", "graph_readout"):
        raise ConfigError(f"ONNX export: model architecture {arch!r} is not supported (node_stack, graph_readout)")


def build_onnx(tensors: dict, desc: dict):
    """``(onnx.ModelProto, paths)`` of a validated ``(tensors, descriptor)`` pair; ``paths`` says which op
    path each layer took (``MatMulInteger`` / ``integer`` aggregation, or the float fallback)."""
    onnx = require_onnx()
    from onnx import TensorProto, helper

    from .onnx_graph import IR_VERSION, Builder
    from .onnx_layers import Ctx, emit

    _check_supported(desc)
    m = desc["model"]
    b = Builder()
    graph_task = m["arch"] == "graph_readout"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["num_nodes", desc["num_features"]]),
              helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"])]
    if graph_task:
        inputs.append(helper.make_tensor_value_info("batch", TensorProto.INT64, ["num_nodes"]))
    ctx = Ctx(b, tensors, "edge_index", b.dim("x", 0))
    if not graph_task:
        h = "x"
        act = "Elu" if m["activation"] == "elu" else "Relu"
        for i, layer in enumerate(m["convs"]):
            h = emit(ctx, layer, h, f"convs.{i}")
            if i < len(m["convs"]) - 1:
                h = b.op(act, h)
        rows = "num_nodes"
    else:
        h = _graph_readout(b, ctx, m)
        rows = "num_graphs"
    b.nodes.append(helper.make_node("Identity", [h], ["logits"], name="logits"))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [rows, desc["num_classes"]])]
    graph = helper.make_graph(b.nodes, "qgnn", inputs, outputs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qgnn",
                              ir_version=IR_VERSION)
    # what a user needs to prepare the inputs as in training (dataset, normalize_features, ...) travels along,
    # and the selected run (a graph task's fold: the test graphs `qgnn eval` scores, qgnn.export.onnx_eval)
    summary = {k: desc.get(k) for k in ("task", "num_features", "num_classes", "bits", "config", "source")}
    helper.set_model_props(model, {"qgnn": json.dumps({**summary, "paths": ctx.paths}, separators=(",", ":"))})
    onnx.checker.check_model(model)
    return model, ctx.paths


def _graph_readout(b, ctx, m: dict) -> str:
    """Σ_k head_k(pool(h_k)) with h_0 = x and h_k = ReLU(BN_k(conv_k(h_{k−1}))), as the runtime's IntModel."""
    import numpy as np

    from .onnx_layers import emit

    size = b.op("Add", b.op("ReduceMax", "batch", keepdims=1), b.const(np.array([1], np.int64)), hint="num_graphs")
    rnorms = m.get("readout_norms")

    def readout(k: int, h: str) -> str:
        pooled = b.pool(h, "batch", size, m["pooling"])
        if rnorms is not None:
            pooled = emit(ctx, rnorms[k], pooled, f"readout_norms.{k}")
        return emit(ctx, m["heads"][k], pooled, f"heads.{k}")

    out, h = readout(0, "x"), "x"
    for k, (conv, norm) in enumerate(zip(m["convs"], m["norms"], strict=True), start=1):
        h = b.op("Relu", emit(ctx, norm, emit(ctx, conv, h, f"convs.{k - 1}"), f"norms.{k - 1}"))
        out = b.op("Add", out, readout(k, h), hint="readout_sum")
    return out


def _load(source) -> tuple[dict, dict]:
    from .format import FORMAT, FORMAT_VERSION, _validate, read_file

    if isinstance(source, (str, os.PathLike)):
        return read_file(source)
    if not (isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], dict)
            and isinstance(source[1], dict)):
        raise ConfigError("to_onnx takes an export file path or a (tensors, descriptor) pair from export_model")
    tensors, desc = source
    _validate({"format": FORMAT, "version": FORMAT_VERSION, **desc}, tensors, "the in-memory model")
    return tensors, desc


def to_onnx(source, out_path: str | os.PathLike | None = None):
    """ONNX model of an export file (path) or of ``export_model``'s ``(tensors, descriptor)``; written
    atomically to ``out_path`` when given. Returns the ``onnx.ModelProto``."""
    tensors, desc = _load(source)
    model, _ = build_onnx(tensors, desc)
    if out_path is not None:
        write_onnx(model, out_path)
    return model


def write_onnx(model, path: str | os.PathLike) -> Path:
    """Write atomically (temporary file + os.replace)."""
    from qgnn.train.checkpoint import atomic_write

    data = model.SerializeToString()

    def _write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _write)


def export_checkpoint_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, dict]:
    """Read a training checkpoint, build the packed model in memory (``export_model``) and write ``out`` as
    ONNX; returns (path, descriptor)."""
    require_onnx()  # before the checkpoint is read
    from .exporter import export_checkpoint_model

    tensors, desc = export_checkpoint_model(checkpoint)
    _check_supported(desc)
    return write_onnx(to_onnx((tensors, desc)), out), desc
